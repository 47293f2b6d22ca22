//! The page in a real headless Chromium: open it with the token, start a small run by clicking,
//! watch the curve get points and samples appear, stop the run, sample from it. Screenshots go
//! to `target/tmp/` (serve-*.png).
//!
//! Needs Debian's `chromium` and `chromium-driver`. Under `CI=true` a missing browser fails the
//! test; elsewhere the test prints a notice and passes without running.

mod common;

use common::server::{Server, TOKEN};
use common::webdriver::{find_browser, Browser};
use common::workspace;
use std::path::PathBuf;

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[test]
fn start_watch_stop_and_sample_a_run_by_clicking() {
    let Some((chromium, driver)) = find_browser() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        );
        eprintln!("notice: chromium or chromedriver not found; browser test skipped (apt-get install chromium chromium-driver)");
        return;
    };
    let dir = workspace();
    let server = Server::start(dir.path(), &[]);
    let browser = Browser::start(&chromium, &driver);
    let url = format!("http://127.0.0.1:{}/?token={TOKEN}", server.port);
    browser.open(&url);
    // The token went into a cookie and out of the address bar.
    browser.wait_until("the page", "location.search === ''", 20);
    browser.find("#runs-table");

    // Start a small run by filling the form and clicking.
    browser.click("#new-preset option[value='layernorm']");
    browser.wait_until(
        "the preset's settings",
        "document.querySelector('#settings input[name=n_embd]').value === '32'",
        10,
    );
    browser.type_into("#new-name", "web");
    for (key, value) in [
        ("n_layer", "1"),
        ("block_size", "32"),
        ("batch_size", "32"),
        ("steps", "100000"),
        ("eval_interval", "50"),
        ("eval_iters", "2"),
    ] {
        browser.type_into(&format!("#settings input[name={key}]"), value);
    }
    browser.click("#start");

    // The training view: the loss curve gets points, and samples appear.
    browser.wait_until(
        "the training view",
        "!document.querySelector('#view-training').hidden",
        20,
    );
    browser.wait_until(
        "points on the loss curve",
        "Number(document.querySelector('#loss-chart').dataset.points) > 100",
        30,
    );
    browser.wait_until(
        "two samples in the feed",
        "document.querySelectorAll('#samples .sample').length >= 2",
        30,
    );
    let progress = browser.run("return document.querySelector('#progress-text').textContent");
    assert!(
        progress.as_str().unwrap().starts_with("step "),
        "{progress}"
    );
    browser.screenshot(&screenshot_path("serve-live.png"));

    // Stop it: the page shows it stopped, and so does the list of runs.
    browser.click("#stop");
    browser.wait_until(
        "the stopped state",
        "document.querySelector('#view-training').dataset.state === 'stopped'",
        30,
    );
    let config = chargpt::checkpoint::load_config(&dir.path().join("runs/web")).unwrap();
    assert!(config.step > 0 && config.step < 100_000, "{}", config.step);
    browser.click("#tab-runs");
    browser.find("tr[data-run='web'][data-state='stopped']");

    // Sample from it: the text streams in after the prompt.
    browser.click("#tab-sample");
    browser.find("#sample-run option[value='web']");
    browser.type_into("#sample-prompt", "ROMEO:");
    browser.type_into("#sample-tokens", "300");
    browser.click("#sample-go");
    browser.wait_until(
        "the sample",
        "document.querySelector('#sample-out').dataset.done === 'true'",
        30,
    );
    let text = browser.run("return document.querySelector('#sample-out').textContent");
    let text = text.as_str().unwrap();
    assert!(text.starts_with("ROMEO:"), "{text}");
    assert_eq!(text.chars().count(), "ROMEO:".len() + 300, "{text}");
    let error = browser.run("return document.querySelector('#sample-error').textContent");
    assert_eq!(error, "");
    browser.screenshot(&screenshot_path("serve-sample.png"));

    // A refusal shows beside its field, in the command line's words.
    browser.click("#tab-runs");
    browser.type_into("#new-name", "bad");
    browser.type_into("#settings input[name=n_head]", "5");
    browser.click("#start");
    browser.wait_until(
        "the error",
        "document.querySelector('#form-error').textContent.includes('must be divisible by n_head (5)')",
        20,
    );
    eprintln!(
        "screenshots: {} and serve-sample.png",
        screenshot_path("serve-live.png").display()
    );
}
