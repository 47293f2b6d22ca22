//! The page in a real headless Chromium: open it with the token, start a small run by clicking,
//! watch the curve get points and samples appear, stop the run, sample from it; then look inside
//! a trained model in every view, and watch the views follow a training. Screenshots go to
//! `target/tmp/` (serve-*.png, look-*.png).
//!
//! `docs_screenshots` (ignored; run it by name) takes the README's screenshots from a real model:
//! `CHARGPT_DOCS_MODEL=DIR CHARGPT_DOCS_REPLAY=DIR cargo test --release --test browser
//! docs_screenshots -- --ignored` writes docs/look-*.png.
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

/// Chromium and its driver; `None` (after a notice) where they are missing, except under
/// `CI=true`, where that fails the test.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    let found = find_browser();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        );
        eprintln!("notice: chromium or chromedriver not found; browser test skipped (apt-get install chromium chromium-driver)");
    }
    found
}

#[test]
fn start_watch_stop_and_sample_a_run_by_clicking() {
    let Some((chromium, driver)) = browser_or_skip() else {
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

    // Every setting's name shows whole (none runs under its input, as "attention_projectio"
    // and "muon_weight_deca" did).
    browser.find("#settings input[name=muon_weight_decay]");
    let cut = text_of(
        &browser,
        "[...document.querySelectorAll('#settings .setting > span:first-child')].filter(s => s.scrollWidth > s.clientWidth).map(s => s.textContent).join()",
    );
    assert_eq!(cut, "", "setting names cut");

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

    // A page opened while the run trains draws its whole curve: the history from the files,
    // then the live steps (the stream's replayed start event used to cut the history to its
    // step 0, leaving the curve to begin where the page was opened).
    browser.open(&format!("http://127.0.0.1:{}/", server.port));
    browser.click("tr[data-run='web'] a");
    browser.wait_until(
        "the training view of web",
        "!document.querySelector('#view-training').hidden && Number(document.querySelector('#loss-chart').dataset.points) > 0",
        20,
    );
    let first = browser.run(
        "const d = document.querySelector('#loss-chart').plot.data; return d[0].find((x, i) => d[1][i] != null);",
    );
    assert_eq!(
        first.as_f64(),
        Some(1.0),
        "the curve of a run opened while it trains starts at step 1"
    );

    // Stop it: the page shows it stopped, and so does the list of runs.
    browser.click("#stop");
    browser.wait_until(
        "the stopped state",
        "document.querySelector('#view-training').dataset.state === 'stopped'",
        30,
    );
    let config = chargpt::checkpoint::load_config(&dir.path().join("runs/web")).unwrap();
    assert!(config.step > 0 && config.step < 100_000, "{}", config.step);
    // The smoothed curve starts where the loss does: over the first ten steps drawn, its mean
    // is the raw loss's (the average of a window cut on one side started it far below, the
    // mean of up to 1,000 later steps of a run of 100,000).
    let edge = browser.run(
        "const d = document.querySelector('#loss-chart').plot.data;
         const at = d[1].map((v, i) => (v == null ? -1 : i)).filter((i) => i >= 0).slice(0, 10);
         const mean = (k) => at.reduce((s, i) => s + d[k][i], 0) / at.length;
         return [d[1][at[0]], d[2][at[0]], mean(1), mean(2), at.length];",
    );
    let edge: Vec<f64> = edge
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(edge[4], 10.0, "{edge:?}");
    assert!(
        (edge[0] - edge[1]).abs() < 0.1 && (edge[2] - edge[3]).abs() < 0.1,
        "the smoothed curve's first point and first ten (raw, smoothed, raw mean, smoothed mean): {edge:?}"
    );
    // The learning-rate axis has enough ticks to read (it had two or three).
    let ticks: u32 = text_of(
        &browser,
        "document.querySelector('#lr-chart').dataset.yTicks",
    )
    .parse()
    .unwrap_or(0);
    assert!(ticks >= 4, "{ticks} ticks on the learning-rate axis");
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
    // A later submit clears it: a name the browser itself refuses (it never reaches the
    // server) shows only its own message...
    browser.type_into("#new-name", "bad name!");
    browser.click("#start");
    browser.wait_until(
        "the name's own refusal",
        "document.querySelector('.field-error[data-for=name]').textContent !== ''",
        10,
    );
    assert_eq!(
        text_of(
            &browser,
            "document.querySelector('#form-error').textContent"
        ),
        "",
        "the n_head refusal stayed"
    );
    // ... and a refusal of another field only that one.
    browser.type_into("#new-name", "bad");
    browser.type_into("#settings input[name=n_head]", "4");
    browser.type_into("#settings input[name=steps]", "many");
    browser.click("#start");
    browser.wait_until(
        "the steps refusal",
        "document.querySelector('.field-error[data-for=steps]').textContent.includes('many')",
        20,
    );
    let errors = text_of(
        &browser,
        "[...document.querySelectorAll('#new-run .field-error, #form-error')].filter(e => e.textContent).length",
    );
    assert_eq!(errors, "1", "only the new refusal shows");
    browser.screenshot(&screenshot_path("serve-form-error.png"));

    // Deleting the selected run clears the Training view (it kept the progress bar and
    // "stopped at step N") and the sample drawn from it.
    browser.run("window.confirm = () => true");
    browser.click("tr[data-run='web'] button[data-action='delete']");
    browser.wait_until(
        "the run gone",
        "!document.querySelector(\"tr[data-run='web']\") && window.chargpt.run === null",
        20,
    );
    assert!(!dir.path().join("runs/web").exists());
    browser.click("#tab-training");
    // (The charts are redrawn at most once a second.)
    let expected = r#"["no run selected",0,"","",0,"0"]"#;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let training = text_of(
            &browser,
            "JSON.stringify([document.querySelector('#run-name').textContent,
               document.querySelector('#progress').value, document.querySelector('#progress-text').textContent,
               document.querySelector('#view-training').dataset.state, document.querySelectorAll('#samples .sample').length,
               document.querySelector('#loss-chart').dataset.points])",
        );
        if training == expected || std::time::Instant::now() > until {
            assert_eq!(training, expected, "the Training view after the delete");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    browser.screenshot(&screenshot_path("serve-deleted.png"));
    browser.click("#tab-sample");
    browser.wait_until(
        "the deleted run's sample cleared",
        "document.querySelector('#sample-out').textContent === ''",
        10,
    );
    eprintln!(
        "screenshots: {} and serve-sample.png",
        screenshot_path("serve-live.png").display()
    );
}

/// Trains a 2-layer, 4-head model with block 16 on `small.txt` into `runs/tiny`, with a probe
/// record at steps 0, 10, 20 and 30.
fn train_tiny(dir: &std::path::Path) {
    common::succeeds(
        dir,
        &[
            "train",
            "--preset",
            "layernorm",
            "--data",
            "small.txt",
            "--out",
            "runs/tiny",
            "--set",
            "n_layer=2",
            "--set",
            "n_head=4",
            "--set",
            "n_embd=16",
            "--set",
            "block_size=16",
            "--set",
            "steps=30",
            "--set",
            "eval_interval=10",
            "--set",
            "eval_iters=2",
            "--threads",
            "1",
        ],
    );
}

fn text_of(browser: &Browser, script: &str) -> String {
    browser
        .run(&format!("return String({script})"))
        .as_str()
        .unwrap_or_default()
        .to_string()
}

const LEFT: &str = "\u{E012}";
const HOME: &str = "\u{E011}";

#[test]
fn look_inside_a_model_in_every_view() {
    let Some((chromium, driver)) = browser_or_skip() else {
        return;
    };
    let dir = workspace();
    let d = dir.path();
    train_tiny(d);
    let server = Server::start(d, &[]);
    let browser = Browser::start(&chromium, &driver);
    browser.open(&format!("http://127.0.0.1:{}/?token={TOKEN}", server.port));
    browser.wait_until("the page", "location.search === '' && window.chargpt", 20);

    // 1. Next character: the bars are the endpoint's probabilities; typing changes them, the
    // sliders reshape them, a click appends the character.
    browser.click("#tab-next");
    browser.click("#next-run option[value='tiny']");
    // A model of small.txt lacks the capitals of "ROMEO:": the view starts from the run's
    // own prompt (a line of small.txt), not from a refusal.
    let own = server.get("/api/runs/tiny/inspect/model").json()["prompt"].clone();
    assert!(own.as_str().is_some_and(|p| !p.is_empty()), "{own}");
    browser.wait_until(
        "bars after the run's own prompt",
        &format!("document.querySelector('#next-bars').dataset.prompt === {own}"),
        20,
    );
    assert_eq!(
        text_of(
            &browser,
            "document.querySelector('#next-error').textContent"
        ),
        ""
    );
    browser.type_into("#next-prompt", "the quick ");
    browser.wait_until(
        "bars",
        "document.querySelector('#next-bars').dataset.prompt === 'the quick '",
        20,
    );
    let bars = "[...document.querySelectorAll('#next-bars .bar')].map(b => b.dataset.char + b.dataset.p).join()";
    let before = text_of(&browser, bars);
    let top_p = |browser: &Browser| -> f64 {
        text_of(
            browser,
            "document.querySelector('#next-bars .bar').dataset.p",
        )
        .parse()
        .unwrap()
    };
    let wire = |prompt: &str, temperature: f64| -> f64 {
        let r = server.post(
            "/api/runs/tiny/inspect/next",
            serde_json::json!({ "prompt": prompt, "temperature": temperature }),
        );
        r.json()["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    assert!((top_p(&browser) - wire("the quick ", 1.0)).abs() < 1e-6);
    browser.type_into("#next-prompt", "the lazy d");
    browser.wait_until(
        "new bars",
        "document.querySelector('#next-bars').dataset.prompt === 'the lazy d'",
        20,
    );
    assert_ne!(text_of(&browser, bars), before, "typing changed the bars");
    browser.keys("#next-temperature", &LEFT.repeat(10));
    browser.wait_until(
        "temperature 0.5",
        "document.querySelector('#next-bars').dataset.temperature === '0.5'",
        10,
    );
    assert!(
        (top_p(&browser) - wire("the lazy d", 0.5)).abs() < 1e-5,
        "sharper bars, as sampling at 0.5"
    );
    // Temperature 0: the most likely character takes everything, on the page and on the wire.
    browser.keys("#next-temperature", HOME);
    browser.wait_until(
        "temperature 0",
        "document.querySelector('#next-bars').dataset.temperature === '0'",
        10,
    );
    assert_eq!(top_p(&browser), 1.0, "temperature 0 is the argmax");
    assert_eq!(wire("the lazy d", 0.0), 1.0);
    browser.keys("#next-temperature", &"\u{E014}".repeat(10));
    browser.wait_until(
        "temperature 0.5 again",
        "document.querySelector('#next-bars').dataset.temperature === '0.5'",
        10,
    );
    browser.keys("#next-top-k", HOME);
    browser.wait_until(
        "top-k 1",
        "document.querySelectorAll('#next-bars .bar').length === 1 && document.querySelector('#next-bars .bar').dataset.p === '1'",
        10,
    );
    browser.keys("#next-top-k", "\u{E010}");
    let first = text_of(
        &browser,
        "document.querySelector('#next-bars .bar').dataset.char",
    );
    browser.click("#next-bars .bar");
    let appended = format!("the lazy d{first}");
    browser.wait_until(
        "the clicked character appended",
        &format!(
            "document.querySelector('#next-bars').dataset.prompt === {}",
            serde_json::json!(appended)
        ),
        20,
    );
    browser.screenshot(&screenshot_path("look-next.png"));

    // 2. Attention: hovering a character marks its row in every map; a click enlarges a head.
    browser.click("#tab-attention");
    browser.type_into("#att-prompt", "the quick brown");
    browser.wait_until(
        "8 maps over 15 characters",
        "document.querySelectorAll('#att-grid .head-cell').length === 8 && document.querySelectorAll('#att-text .tok').length === 15",
        20,
    );
    browser.hover("#att-text .tok[data-i='3']");
    browser.wait_until(
        "row 3 marked",
        "document.querySelector('#att-grid .map-grid').dataset.query === '3'",
        10,
    );
    let band = "document.querySelector('#att-grid .map-band').style.top";
    let at_three = text_of(&browser, band);
    browser.hover("#att-text .tok[data-i='11']");
    browser.wait_until(
        "row 11 marked",
        "document.querySelector('#att-grid .map-grid').dataset.query === '11'",
        10,
    );
    assert_ne!(text_of(&browser, band), at_three, "the highlight moved");
    assert_eq!(
        text_of(
            &browser,
            "document.querySelector('#att-lines').dataset.query"
        ),
        "11"
    );
    browser.click("#att-grid .head-cell[data-layer='1'][data-head='2']");
    browser.wait_until(
        "head 2 of layer 1 enlarged",
        "document.querySelector('#att-big').dataset.layer === '1' && document.querySelector('#att-big').dataset.head === '2' && document.querySelector('#att-big h3').textContent.startsWith('layer 1, head 2')",
        10,
    );
    browser.screenshot(&screenshot_path("look-attention.png"));

    // 3. Surprise: the mean shown is the endpoint's, and hovering shows p and the alternatives.
    browser.click("#tab-surprise");
    browser.wait_until(
        "the mean",
        "document.querySelector('#sur-mean').dataset.mean",
        20,
    );
    let shown: f64 = text_of(&browser, "document.querySelector('#sur-mean').dataset.mean")
        .parse()
        .unwrap();
    let mean = server
        .post(
            "/api/runs/tiny/inspect/surprise",
            serde_json::json!({ "offset": 0, "windows": 2 }),
        )
        .json()["mean"]
        .as_f64()
        .unwrap();
    assert_eq!(shown, mean);
    browser.hover("#sur-out .ch[data-i='5']");
    browser.wait_until(
        "the tip",
        "!document.querySelector('#sur-tip').hidden && document.querySelector('#sur-tip').textContent.includes('p = ')",
        10,
    );
    browser.screenshot(&screenshot_path("look-surprise.png"));

    // 4. Embeddings: every character on the scatter, and the position matrix.
    browser.click("#tab-embeddings");
    let vocab = chargpt::checkpoint::load_config(&d.join("runs/tiny"))
        .unwrap()
        .vocab
        .len();
    browser.wait_until(
        "a point per character",
        &format!("document.querySelectorAll('#emb-scatter text.point').length === {vocab} && document.querySelector('#emb-cosine canvas').width === 16"),
        20,
    );
    browser.screenshot(&screenshot_path("look-embeddings.png"));

    // 5. One head: every step, and a new position gives new numbers.
    browser.click("#tab-head");
    browser.type_into("#head-prompt", "the quick brown");
    browser.wait_until(
        "ten steps at the last position",
        "document.querySelectorAll('#head-steps .step').length === 10 && document.querySelector('#head-steps').dataset.position === '14'",
        20,
    );
    browser.click("#head-layer option[value='1']");
    browser.keys("#head-position", HOME);
    browser.wait_until(
        "position 0",
        "document.querySelector('#head-steps').dataset.position === '0' && document.querySelector('.step[data-id=k] .muted').textContent === 'shape (1, 4)'",
        20,
    );
    assert!(text_of(
        &browser,
        "document.querySelector('#head-check').textContent"
    )
    .contains("the same softmax weights"));
    let links = text_of(
        &browser,
        "document.querySelectorAll('#head-steps a.source-link').length",
    );
    assert_eq!(links, "30", "three links per step");
    browser.screenshot(&screenshot_path("look-head.png"));

    // 6. The model: a run's, a bigram's, a ladder rung's and the 10.8M model's diagrams.
    browser.click("#tab-model");
    let params =
        server.get("/api/runs/tiny/inspect/model").json()["parts"]["total_params"].to_string();
    browser.wait_until(
        "the run's diagram",
        &format!("document.querySelector('#model-summary').dataset.total === '{params}'"),
        20,
    );
    for (preset, total, attention, blocks) in [
        ("bigram", 4_225, false, None),
        ("single-head", 7_553, true, Some(1)),
        ("lecture", 10_788_929, true, Some(6)),
    ] {
        browser.click(&format!("#model-source option[value='preset:{preset}']"));
        browser.wait_until(
            preset,
            &format!("document.querySelector('#model-summary').dataset.total === '{total}' && document.querySelector('#model-summary').dataset.sum === '{total}'"),
            20,
        );
        let has_attention = text_of(
            &browser,
            "Boolean(document.querySelector('#model-svg g.part[data-kind=attention]'))",
        );
        assert_eq!(has_attention, attention.to_string(), "{preset}");
        let label = text_of(
            &browser,
            "document.querySelector('#model-svg .block-label')?.textContent ?? ''",
        );
        match blocks {
            Some(n) => assert!(
                label.starts_with(&format!("block × {n} ")),
                "{preset}: {label}"
            ),
            None => assert_eq!(label, "", "{preset}"),
        }
    }
    // Every box holds its text (fast's attention detail ran out of its box and the picture).
    let outside = "[...document.querySelectorAll('#model-svg g.part')].flatMap((g) => {
        const r = g.querySelector('rect').getBBox();
        return [...g.querySelectorAll('text')].filter((t) => { const b = t.getBBox();
          return b.x < r.x || b.x + b.width > r.x + r.width || b.y < r.y || b.y + b.height > r.y + r.height; })
          .map((t) => g.dataset.name + ': ' + t.textContent); }).join(' | ')";
    for preset in ["fast", "best-1h", "lecture", "bigram", "default"] {
        browser.click(&format!("#model-source option[value='preset:{preset}']"));
        browser.wait_until(
            preset,
            &format!("document.querySelector('#model-diagram').dataset.source === 'preset:{preset}' && document.querySelector('#model-svg')"),
            20,
        );
        assert_eq!(
            text_of(&browser, outside),
            "",
            "{preset}: text outside its box"
        );
        if preset == "fast" {
            browser.screenshot(&screenshot_path("look-model-fast.png"));
        }
    }
    browser.screenshot(&screenshot_path("look-model.png"));

    // 7. While it learns: the slider replays the evaluations, and the maps change with it.
    browser.click("#tab-replay");
    browser.click("#replay-run option[value='tiny']");
    browser.wait_until(
        "the last evaluation",
        "!document.querySelector('#replay-panels').hidden && document.querySelector('#replay-panels').dataset.step === '30'",
        20,
    );
    let checksum = "document.querySelector('#replay-grid canvas').dataset.checksum";
    let last = text_of(&browser, checksum);
    browser.keys("#replay-slider", HOME);
    browser.wait_until(
        "step 0",
        "document.querySelector('#replay-panels').dataset.step === '0'",
        10,
    );
    assert_ne!(
        text_of(&browser, checksum),
        last,
        "the map changed between step 0 and 30"
    );
    browser.screenshot(&screenshot_path("look-replay.png"));

    // While a run trains, the views follow its live parameters at every evaluation, and the
    // replay gets each new evaluation.
    let started = server.post(
        "/api/runs",
        serde_json::json!({ "name": "live", "preset": "layernorm", "settings": {
            "n_layer": 1, "n_embd": 16, "block_size": 16, "batch_size": 8, "steps": 100000,
            "eval_interval": 40, "eval_iters": 2 } }),
    );
    assert_eq!(started.status, 201, "{}", started.text());
    browser.click("#tab-attention");
    browser.click("#att-run option[value='live']");
    browser.type_into("#att-prompt", "ROMEO:\nIt is");
    browser.wait_until(
        "a live map",
        "document.querySelector('#att-about').textContent.includes('live') && document.querySelector('#att-grid').dataset.step",
        30,
    );
    let step: u64 = text_of(&browser, "document.querySelector('#att-grid').dataset.step")
        .parse()
        .unwrap();
    browser.wait_until(
        "a later evaluation's map",
        &format!("Number(document.querySelector('#att-grid').dataset.step) > {step}"),
        30,
    );
    browser.click("#tab-replay");
    browser.wait_until(
        "the live run's records",
        "Number(document.querySelector('#replay-slider').max) >= 1",
        30,
    );
    let count = text_of(&browser, "document.querySelector('#replay-slider').max");
    browser.wait_until(
        "a new evaluation in the replay",
        &format!("Number(document.querySelector('#replay-slider').max) > {count}"),
        30,
    );
    assert_eq!(
        server
            .post("/api/runs/live/stop", serde_json::json!({}))
            .status,
        202
    );
    eprintln!("screenshots: {}", screenshot_path("look-*.png").display());
}

/// A text in three scripts with a few symbols that occur once: 34 characters, not Tiny
/// Shakespeare's 65, and none of the capitals of its "ROMEO:".
fn other_text() -> String {
    let line = "le café de la straße: Жизнь и мир, élan über alles.\n";
    format!("{}rare: ♠ € ¿ Ω ¶ ♣ ♥ ♦\n", line.repeat(60))
}

/// The page on a model of another text than Tiny Shakespeare's (`runs/other`, beside
/// small.txt's `runs/tiny`): the Surprise legend's uniform guess is ln V of its vocabulary,
/// the next-character and attention views start from a prompt in its own text (and keep one
/// the user typed for it), the embeddings colour é and Ж as letters and draw the characters
/// that occur once as dots, and Compare says that the two runs' losses do not compare.
#[test]
fn views_of_a_model_of_another_text() {
    let Some((chromium, driver)) = browser_or_skip() else {
        return;
    };
    let dir = workspace();
    let d = dir.path();
    let text = other_text();
    std::fs::write(d.join("other.txt"), &text).unwrap();
    train_tiny(d);
    common::succeeds(
        d,
        &[
            "train",
            "--preset",
            "layernorm",
            "--data",
            "other.txt",
            "--out",
            "runs/other",
            "--set",
            "n_layer=1",
            "--set",
            "n_embd=16",
            "--set",
            "block_size=16",
            "--set",
            "steps=20",
            "--set",
            "eval_interval=10",
            "--set",
            "eval_iters=2",
            "--threads",
            "1",
        ],
    );
    let mut counts = std::collections::BTreeMap::<char, usize>::new();
    for c in text.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let vocab = counts.len();
    assert_ne!(vocab, 65);
    let total = text.chars().count();
    let rare = counts
        .values()
        .filter(|&&n| (n as f64) < (total as f64 * 1e-4).max(20.0))
        .count();
    assert_eq!(rare, 8, "the eight symbols of the last line");

    let server = Server::start(d, &[]);
    let browser = Browser::start(&chromium, &driver);
    browser.open(&format!("http://127.0.0.1:{}/?token={TOKEN}", server.port));
    browser.wait_until("the page", "location.search === '' && window.chargpt", 20);
    browser.run("window.chargpt.select('other')");

    // Surprise: a uniform guess over its characters is ln V, not ln 65 = 4.17.
    browser.click("#tab-surprise");
    let ln = format!("ln {vocab} = {:.2}", (vocab as f64).ln());
    browser.wait_until(
        "the legend's ln V",
        &format!(
            "document.querySelector('#sur-uniform').textContent.startsWith({})",
            serde_json::json!(ln)
        ),
        20,
    );
    let answered = server.post(
        "/api/runs/other/inspect/surprise",
        serde_json::json!({ "offset": 0, "windows": 1 }),
    );
    assert_eq!(answered.json()["vocab_size"], vocab);
    browser.screenshot(&screenshot_path("other-surprise.png"));

    // Next character: the run's own prompt, with no refusal; a prompt typed for a run stays
    // with it when another run is looked at and back.
    let own =
        |run: &str| server.get(&format!("/api/runs/{run}/inspect/model")).json()["prompt"].clone();
    let other = own("other");
    assert!(
        other
            .as_str()
            .is_some_and(|p| !p.is_empty() && p.chars().all(|c| counts.contains_key(&c))),
        "{other}"
    );
    browser.click("#tab-next");
    browser.wait_until(
        "bars after the run's own prompt",
        &format!("document.querySelector('#next-bars').dataset.prompt === {other}"),
        20,
    );
    assert_eq!(
        text_of(
            &browser,
            "document.querySelector('#next-error').textContent"
        ),
        ""
    );
    browser.screenshot(&screenshot_path("other-next.png"));
    browser.type_into("#next-prompt", "le caf");
    browser.wait_until(
        "bars after the typed prompt",
        "document.querySelector('#next-bars').dataset.prompt === 'le caf'",
        20,
    );
    browser.click("#next-run option[value='tiny']");
    browser.wait_until(
        "tiny's own prompt",
        &format!(
            "document.querySelector('#next-bars').dataset.prompt === {}",
            own("tiny")
        ),
        20,
    );
    browser.click("#next-run option[value='other']");
    browser.wait_until(
        "the prompt typed for other, back",
        "document.querySelector('#next-bars').dataset.prompt === 'le caf' && document.querySelector('#next-error').textContent === ''",
        20,
    );

    // Attention: the same, with the prompt's characters as the map's.
    browser.click("#tab-attention");
    let length = other.as_str().unwrap().chars().count();
    browser.wait_until(
        "maps over the run's own prompt",
        &format!("document.querySelector('#att-prompt').value === {other} && document.querySelectorAll('#att-text .tok').length === {length}"),
        20,
    );
    assert_eq!(
        text_of(&browser, "document.querySelector('#att-error').textContent"),
        ""
    );

    // Embeddings: é and ß are letters (they were coloured as punctuation), Ж a capital; the
    // symbols that occur once are dots, and a line says how many and why.
    browser.click("#tab-embeddings");
    browser.wait_until(
        "the scatter",
        &format!("document.querySelectorAll('#emb-scatter [data-char]').length === {vocab}"),
        20,
    );
    let kinds = text_of(
        &browser,
        "['é', 'ß', 'Ж', ':', '€'].map((c) => document.querySelector(`#emb-scatter [data-char='${c}'] title`).textContent.match(/\\((.*?)[,)]/)[1]).join()",
    );
    assert_eq!(
        kinds,
        "vowel,consonant,capital consonant,punctuation,symbol"
    );
    let dots = text_of(
        &browser,
        "document.querySelectorAll('#emb-scatter circle.rare').length",
    );
    assert_eq!(dots, rare.to_string());
    let labelled = text_of(
        &browser,
        "document.querySelectorAll('#emb-scatter text.point').length",
    );
    assert_eq!(labelled, (vocab - rare).to_string());
    let note = text_of(
        &browser,
        "document.querySelector('#emb-rare-note').textContent",
    );
    assert!(
        note.starts_with(&format!("{rare} rare characters")),
        "{note}"
    );
    browser.hover("#emb-scatter circle.rare[data-char='♠']");
    browser.wait_until(
        "the dot's label on hover",
        "document.querySelector('#emb-scatter .hover-label').textContent === '♠' && document.querySelector('#emb-scatter .hover-label').getAttribute('visibility') === 'visible'",
        10,
    );
    browser.screenshot(&screenshot_path("other-embeddings.png"));

    // Compare: two runs of different texts and alphabets say so above the chart; one alone
    // does not.
    browser.click("#tab-compare");
    browser.click("#compare-runs input[value='tiny']");
    browser.click("#compare-runs input[value='other']");
    browser.wait_until(
        "the warning",
        "!document.querySelector('#compare-warning').hidden && document.querySelector('#compare-warning').textContent.includes('do not compare directly') && document.querySelector('#compare-chart').dataset.points",
        20,
    );
    let warning = text_of(
        &browser,
        "document.querySelector('#compare-warning').textContent",
    );
    assert!(
        warning.contains(&ln) && warning.contains("other.txt") && warning.contains("small.txt"),
        "{warning}"
    );
    browser.screenshot(&screenshot_path("other-compare.png"));
    browser.click("#compare-runs input[value='tiny']");
    browser.wait_until(
        "no warning for one run",
        "document.querySelector('#compare-warning').hidden",
        20,
    );
    eprintln!("screenshots: {}", screenshot_path("other-*.png").display());
}

/// A copy of run directory `from` (never written) at `to`, without its lock file.
fn copy_run(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "train.lock" && entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// How the page behaves while a run trains in the same server: a timer in the page records the
/// longest gap between its 50 ms ticks (a frozen main thread shows as a long gap) and every
/// inspection request's time, while a prompt of 128 characters is typed into the Attention, Next
/// character and One head views over and over for `CHARGPT_MEASURE_SECONDS` (default 30) with a
/// `default` training (one thread) running beside it (`CHARGPT_MEASURE_TRAIN=0`: without it;
/// `CHARGPT_MEASURE_TYPE=0`: only switching views; `CHARGPT_MEASURE_PROFILE=1`: also the page's
/// CPU profile, function by function). Prints the figures; a measurement, not a check: `CHARGPT_DOCS_MODEL=DIR cargo test --release --test browser
/// page_stays_responsive -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement of a real model (CHARGPT_DOCS_MODEL) for the README"]
fn page_stays_responsive_while_a_run_trains() {
    let (Some((chromium, driver)), Ok(model)) =
        (browser_or_skip(), std::env::var("CHARGPT_DOCS_MODEL"))
    else {
        panic!("set CHARGPT_DOCS_MODEL to a trained default run, and install chromium");
    };
    let seconds: u64 = std::env::var("CHARGPT_MEASURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = workspace();
    let d = dir.path();
    copy_run(std::path::Path::new(&model), &d.join("runs/default"));
    let server = Server::start(d, &[]);
    let browser = Browser::start(&chromium, &driver);
    browser.open(&format!("http://127.0.0.1:{}/?token={TOKEN}", server.port));
    browser.wait_until("the page", "location.search === '' && window.chargpt", 20);
    browser.run("window.chargpt.select('default')");
    // CHARGPT_MEASURE_TRAIN=0: the same without the training, to tell what it costs.
    let train = std::env::var("CHARGPT_MEASURE_TRAIN").as_deref() != Ok("0");
    if train {
        let started = server.post(
            "/api/runs",
            serde_json::json!({ "name": "busy", "preset": "default", "settings": { "steps": 100000 } }),
        );
        assert_eq!(started.status, 201, "{}", started.text());
    }
    // The probes: ticks every 50 ms (the longest gap beyond 50 ms is how long the page could
    // not run), Chromium's long tasks, and each inspection request's time from the page.
    browser.run(
        "window.probe = { gap: 0, last: performance.now(), long: 0, times: [] };
         setInterval(() => { const now = performance.now();
           probe.gap = Math.max(probe.gap, now - probe.last - 50); probe.last = now; }, 50);
         probe.byView = {};
         new PerformanceObserver((list) => { for (const e of list.getEntries()) {
           probe.long = Math.max(probe.long, e.duration);
           const view = document.querySelector('[aria-selected=true]')?.id ?? '?';
           probe.byView[view] = Math.max(probe.byView[view] ?? 0, Math.round(e.duration)); } })
           .observe({ entryTypes: ['longtask'] });
         const plain = window.fetch;
         window.fetch = async (...args) => { const t = performance.now();
           const r = await plain(...args);
           if (String(args[0]).includes('/inspect/')) { await r.clone().arrayBuffer();
             probe.times.push(performance.now() - t); }
           return r; };",
    );
    let text = "ROMEO:\nIt is the east, and Juliet is the sun.\nArise, fair sun, and kill the envious moon,\nWho is already sick and pale with grief, T";
    let prompt: String = text.chars().take(128).collect();
    assert_eq!(prompt.chars().count(), 128);
    // CHARGPT_MEASURE_TYPE=0: only switch views, to tell what the typing costs.
    let typing = std::env::var("CHARGPT_MEASURE_TYPE").as_deref() != Ok("0");
    // CHARGPT_MEASURE_PROFILE=1: the page's JavaScript CPU profile, where its time goes.
    let profile = std::env::var("CHARGPT_MEASURE_PROFILE").as_deref() == Ok("1");
    if profile {
        browser.cdp("Profiler.enable", serde_json::json!({}));
        browser.cdp("Profiler.start", serde_json::json!({}));
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut rounds = 0;
    while std::time::Instant::now() < until {
        for (tab, input) in [
            ("#tab-attention", "#att-prompt"),
            ("#tab-next", "#next-prompt"),
            ("#tab-head", "#head-prompt"),
        ] {
            browser.click(tab);
            if typing {
                browser.type_into(input, &prompt);
            }
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        rounds += 1;
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    if profile {
        // Self time per function (the profile's samples, each `timeDeltas` apart).
        let p = browser.cdp("Profiler.stop", serde_json::json!({}))["profile"].clone();
        let mut names = std::collections::HashMap::new();
        for node in p["nodes"].as_array().unwrap() {
            let f = &node["callFrame"];
            let url = f["url"].as_str().unwrap_or("");
            let name = format!(
                "{} {}:{}",
                f["functionName"].as_str().unwrap_or(""),
                url.rsplit('/').next().unwrap_or(""),
                f["lineNumber"]
            );
            names.insert(node["id"].as_u64().unwrap(), name);
        }
        let mut time: std::collections::HashMap<String, f64> = Default::default();
        let samples = p["samples"].as_array().unwrap();
        let deltas = p["timeDeltas"].as_array().unwrap();
        for (s, d) in samples
            .iter()
            .zip(deltas.iter().skip(1).chain([&serde_json::json!(0)]))
        {
            *time.entry(names[&s.as_u64().unwrap()].clone()).or_default() +=
                d.as_f64().unwrap_or(0.0) / 1000.0;
        }
        let mut top: Vec<_> = time.into_iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, ms) in top.iter().take(15) {
            eprintln!("{ms:9.0} ms  {name}");
        }
    }
    let got = browser.run(
        "const t = probe.times.slice().sort((a, b) => a - b);
         return { gap: probe.gap, long: probe.long, by_view: probe.byView, n: t.length,
                  median: t[Math.floor(t.length / 2)], p90: t[Math.floor(0.9 * (t.length - 1))],
                  max: t[t.length - 1] };",
    );
    let runs = server.get("/api/runs").json();
    let busy = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "busy")
        .cloned()
        .unwrap_or_default();
    if train {
        assert_eq!(
            server
                .post("/api/runs/busy/stop", serde_json::json!({}))
                .status,
            202
        );
    }
    eprintln!(
        "{rounds} rounds of typing 128 characters into three views in {seconds} s, beside a default training (at step {}): \
         longest gap between the page's 50 ms ticks {:.0} ms beyond 50, longest task {:.0} ms (the longest in each view: {}); \
         {} inspection requests from the page: median {:.0} ms, 90% {:.0} ms, max {:.0} ms",
        busy["step"], got["gap"].as_f64().unwrap_or(f64::NAN), got["long"].as_f64().unwrap_or(0.0),
        got["by_view"], got["n"], got["median"].as_f64().unwrap_or(f64::NAN), got["p90"].as_f64().unwrap_or(f64::NAN),
        got["max"].as_f64().unwrap_or(f64::NAN),
    );
}

/// The README's screenshots, from a real model: `CHARGPT_DOCS_MODEL` (a trained `default` run)
/// and `CHARGPT_DOCS_REPLAY` (a short run with probe records); into `docs/`.
#[test]
#[ignore = "writes docs/look-*.png from the models named by CHARGPT_DOCS_MODEL and CHARGPT_DOCS_REPLAY"]
fn docs_screenshots() {
    let (Some((chromium, driver)), Ok(model), Ok(replay)) = (
        browser_or_skip(),
        std::env::var("CHARGPT_DOCS_MODEL"),
        std::env::var("CHARGPT_DOCS_REPLAY"),
    ) else {
        panic!("set CHARGPT_DOCS_MODEL and CHARGPT_DOCS_REPLAY to run directories, and install chromium");
    };
    let dir = workspace();
    let d = dir.path();
    copy_run(std::path::Path::new(&model), &d.join("runs/default"));
    copy_run(std::path::Path::new(&replay), &d.join("runs/replay"));
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let server = Server::start(d, &[]);
    let browser = Browser::start(&chromium, &driver);
    browser.resize(1280, 1000);
    browser.open(&format!("http://127.0.0.1:{}/?token={TOKEN}", server.port));
    browser.wait_until("the page", "location.search === '' && window.chargpt", 20);
    browser.run("window.chargpt.select('default')");
    let settle = || std::thread::sleep(std::time::Duration::from_millis(800));

    browser.click("#tab-next");
    browser.wait_until("bars", "document.querySelector('#next-bars .bar')", 20);
    browser.keys("#next-temperature", &LEFT.repeat(4));
    settle();
    browser.screenshot(&docs.join("look-next.png"));

    browser.resize(1280, 1330);
    browser.click("#tab-attention");
    browser.wait_until(
        "maps",
        "document.querySelectorAll('#att-grid .head-cell').length === 24",
        20,
    );
    // The query: the "s" of "sun" (position 41), in layer 0, head 3.
    browser.click("#att-grid .head-cell[data-layer='0'][data-head='3']");
    browser.hover("#att-text .tok[data-i='41']");
    settle();
    browser.screenshot(&docs.join("look-attention.png"));
    // Layer 2, head 1, which keeps returning to the newline after the speaker's name.
    browser.click("#att-grid .head-cell[data-layer='2'][data-head='1']");
    browser.hover("#att-text .tok[data-i='41']");
    settle();
    browser.screenshot(&docs.join("look-attention-line.png"));

    browser.resize(1280, 1000);
    browser.click("#tab-surprise");
    browser.wait_until(
        "the mean",
        "document.querySelector('#sur-mean').dataset.mean",
        20,
    );
    // The "B" of "neighbour Baptista".
    browser.hover("#sur-out .ch[data-i='33']");
    settle();
    browser.screenshot(&docs.join("look-surprise.png"));

    browser.resize(1280, 900);
    browser.click("#tab-embeddings");
    browser.wait_until(
        "points",
        "document.querySelectorAll('#emb-scatter [data-char]').length === 65",
        20,
    );
    settle();
    browser.screenshot(&docs.join("look-embeddings.png"));

    browser.resize(1280, 2420);
    browser.click("#tab-head");
    browser.wait_until(
        "steps",
        "document.querySelectorAll('#head-steps .step').length === 10",
        20,
    );
    browser.click("#head-layer option[value='0']");
    browser.click("#head-head option[value='3']");
    // Position 20, the "t" of "east", so that the mask has something to hide.
    browser.keys(
        "#head-position",
        &format!("{HOME}{}", "\u{E014}".repeat(20)),
    );
    browser.wait_until(
        "position 20",
        "document.querySelector('#head-steps').dataset.position === '20'",
        20,
    );
    settle();
    browser.screenshot(&docs.join("look-head.png"));

    browser.resize(1280, 1400);
    browser.click("#tab-model");
    browser.wait_until("the diagram", "document.querySelector('#model-svg')", 20);
    settle();
    browser.screenshot(&docs.join("look-model.png"));

    browser.resize(1280, 1600);
    browser.click("#tab-replay");
    browser.click("#replay-run option[value='replay']");
    browser.wait_until(
        "records",
        "!document.querySelector('#replay-panels').hidden",
        20,
    );
    settle();
    browser.screenshot(&docs.join("look-replay-last.png"));
    browser.keys("#replay-slider", HOME);
    settle();
    browser.screenshot(&docs.join("look-replay-first.png"));
    eprintln!("screenshots in {}", docs.display());
}
