//! Training across processes (`--features mpi`): `mpirun -np 2` with one thread per rank, the
//! bytes between the ranks over TCP (`--mca btl tcp,self`), against one process with two
//! threads. The batch is cut into the same two shards either way and the shards' gradients are
//! added in the same order, so the runs must agree bit for bit: every logged loss, the
//! parameters and the optimizer's moments. Checkpoints move between the two freely, a sweep over
//! two ranks gives the single-process results, and a rank killed mid-run ends the job within a
//! bounded time with its checkpoint intact.
//!
//! Needs OpenMPI's `mpirun` (Debian: `apt-get install libopenmpi-dev openmpi-bin`; `.ci/run`
//! installs it). Under `CI=true` a missing `mpirun` fails the tests; elsewhere they are skipped
//! with a notice.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use chargpt::checkpoint::read_tensor_file;
use common::BIN;

/// Held by each test while it runs: two ranks per job already fill a 2-core machine, and jobs
/// side by side would spend their time waiting on each other's descheduled ranks.
static ONE_JOB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_JOB_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `mpirun -np 2` as the tests run it, or `None` (with a notice) where there is no MPI outside CI.
fn mpirun(dir: &Path) -> Option<Command> {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mpirun is missing: install libopenmpi-dev and openmpi-bin (.ci/run does)"
        );
        eprintln!("notice: skipping the MPI test, mpirun is not installed (apt-get install libopenmpi-dev openmpi-bin)");
        return None;
    }
    let mut cmd = Command::new("mpirun");
    cmd.current_dir(dir)
        .args(["-np", "2", "--allow-run-as-root", "--oversubscribe"])
        // Over TCP, not shared memory, as between machines; no binding, so that the ranks of
        // a busy 2-core machine are not pinned to one core.
        .args(["--mca", "btl", "tcp,self", "--bind-to", "none"])
        .arg(BIN)
        // A watchdog deadline short enough for the tests, long enough for a loaded machine.
        .env("CHARGPT_MPI_TIMEOUT", "30");
    Some(cmd)
}

fn chargpt(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    cmd
}

fn succeeded(what: &str, output: Output) -> Output {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `train` with `args` in `dir`: under `mpirun -np 2` with one thread per rank, or in one process
/// with two threads.
fn train(dir: &Path, across_ranks: bool, args: &[&str]) -> Output {
    let mut cmd = if across_ranks {
        mpirun(dir).expect("checked by the caller")
    } else {
        chargpt(dir)
    };
    cmd.args(["--threads", if across_ranks { "1" } else { "2" }, "train"]);
    cmd.args(args);
    succeeded(&format!("train {args:?}"), cmd.output().unwrap())
}

/// The layernorm preset at 64 wide (158K parameters: a gradient of three pieces of the chain, and
/// a step big enough that one process splits each batch over its two threads), dropout on so
/// that the masks are exercised, `steps` steps.
fn layernorm(out: &str, steps: usize) -> Vec<String> {
    [
        "--preset",
        "layernorm",
        "--out",
        out,
        "--data",
        "text.txt",
        "--set",
        "n_embd=64",
        "--set",
        "dropout=0.1",
        "--set",
        "eval_interval=50",
        "--set",
        "eval_iters=5",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--set".into(), format!("steps={steps}")])
    .collect()
}

/// A scratch directory with `text.txt`: the first 60,000 characters of Tiny Shakespeare (a val
/// split of 6,000 that the final exact evaluation covers in a moment).
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text: String = chargpt::data::TINY_SHAKESPEARE
        .chars()
        .take(60_000)
        .collect();
    std::fs::write(dir.path().join("text.txt"), text).unwrap();
    dir
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// steps.csv without its wall-clock column: step, loss, lr, grad_norm.
fn step_rows(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("steps.csv")).unwrap();
    text.lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

/// metrics.csv's step, train and val loss columns.
fn eval_rows(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    text.lines()
        .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
        .collect()
}

/// Asserts that two runs took the same steps: logged losses, parameters and optimizer state.
fn same_run(a: &Path, b: &Path) {
    let (steps_a, steps_b) = (step_rows(a), step_rows(b));
    assert!(steps_a.len() > 1);
    for (x, y) in steps_a.iter().zip(&steps_b) {
        assert_eq!(x, y, "steps.csv of {} and {}", a.display(), b.display());
    }
    assert_eq!(steps_a.len(), steps_b.len());
    assert_eq!(eval_rows(a), eval_rows(b));
    for file in ["model.safetensors", "optimizer.safetensors"] {
        same_tensors(&a.join(file), &b.join(file));
    }
}

/// Asserts that two tensor files hold the same tensors, bit for bit, and the same metadata but
/// for the wall-clock time.
fn same_tensors(a: &Path, b: &Path) {
    let (x, y) = (read_tensor_file(a).unwrap(), read_tensor_file(b).unwrap());
    let bits = |f: &chargpt::checkpoint::TensorFile| -> Vec<(String, Vec<usize>, Vec<u32>)> {
        let mut all: Vec<_> = f
            .tensors
            .iter()
            .map(|(name, (shape, v))| {
                (
                    name.clone(),
                    shape.clone(),
                    v.iter().map(|x| x.to_bits()).collect(),
                )
            })
            .collect();
        all.sort();
        all
    };
    assert!(
        bits(&x) == bits(&y),
        "{} and {} differ",
        a.display(),
        b.display()
    );
    let (mut mx, mut my) = (x.metadata, y.metadata);
    mx.remove("elapsed_s");
    my.remove("elapsed_s");
    assert_eq!(mx, my, "{} and {}", a.display(), b.display());
}

#[test]
fn two_ranks_take_the_steps_of_two_threads_and_checkpoints_move_between_them() {
    let _alone = one_at_a_time();
    let dir = workspace();
    let d = dir.path();
    if mpirun(d).is_none() {
        return;
    }
    // 200 straight steps either way.
    let ranks = train(d, true, &strs(&layernorm("ranks", 200)));
    let said = String::from_utf8_lossy(&ranks.stdout);
    assert!(
        said.contains("across 2 ranks: each batch of 32 in 2 shards"),
        "{said}"
    );
    // Only rank 0 prints: one final summary.
    assert_eq!(said.matches("saved to ranks").count(), 1, "{said}");
    train(d, false, &strs(&layernorm("threads", 200)));
    same_run(&d.join("ranks"), &d.join("threads"));

    // 100 steps on two ranks, then the rest in one process; and the other way round.
    train(d, true, &strs(&layernorm("ranks-then-one", 100)));
    train(d, false, &strs(&layernorm("one-then-ranks", 100)));
    let resume = |out: &'static str| ["--resume", "--out", out, "--set", "steps=200"];
    train(d, false, &resume("ranks-then-one"));
    train(d, true, &resume("one-then-ranks"));
    same_run(&d.join("ranks-then-one"), &d.join("threads"));
    same_run(&d.join("one-then-ranks"), &d.join("threads"));
}

#[test]
fn a_sweep_over_two_ranks_gives_the_single_process_results() {
    let _alone = one_at_a_time();
    let dir = workspace();
    let d = dir.path();
    let Some(mut cmd) = mpirun(d) else {
        return;
    };
    let sweep = [
        "sweep",
        "--preset",
        "bigram",
        "--set",
        "learning_rate=3e-2,1e-2,3e-3",
        "--steps",
        "60",
        "--data",
        "text.txt",
        "--json",
    ];
    // Each rank trains whole runs on its one thread: the same runs as one process of one thread.
    let ranks = succeeded(
        "the sweep on 2 ranks",
        cmd.args(["--threads", "1"])
            .args(sweep)
            .args(["--out", "ranks"])
            .output()
            .unwrap(),
    );
    let one = succeeded(
        "the sweep in one process",
        chargpt(d)
            .args(["--threads", "1"])
            .args(sweep)
            .args(["--out", "one"])
            .output()
            .unwrap(),
    );
    let results = |out: &Output| -> Vec<(serde_json::Value, f64, f64)> {
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["settings"].clone(),
                    r["val_exact"].as_f64().unwrap(),
                    r["val_estimate"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (from_ranks, from_one) = (results(&ranks), results(&one));
    assert_eq!(from_ranks.len(), 3);
    assert_eq!(from_ranks, from_one);
    let report = std::fs::read_to_string(d.join("ranks/sweep.md")).unwrap();
    assert!(report.contains("on 2 ranks of 1 thread"), "{report}");
    // The runs themselves, wherever they trained.
    for run in [
        "learning_rate=3e-2",
        "learning_rate=1e-2",
        "learning_rate=3e-3",
    ] {
        let model = |side: &str| d.join(side).join(run).join("model.safetensors");
        same_tensors(&model("ranks"), &model("one"));
    }
}

/// The pids of `mpirun`'s children that run rank `rank`.
fn rank_pids(mpirun_pid: u32, rank: usize) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent pid is the 4th field, after the parenthesised name.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
        if parent == Some(mpirun_pid)
            && environ
                .split(|&b| b == 0)
                .any(|var| var == wanted.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a long two-rank training run in `dir/out` and waits for its first checkpoint.
fn long_run(dir: &Path, out: &str) -> (std::process::Child, PathBuf) {
    let mut cmd = mpirun(dir).expect("checked by the caller");
    let child = cmd
        .args([
            "--threads",
            "1",
            "train",
            "--preset",
            "layernorm",
            "--out",
            out,
        ])
        // Few evaluations a second: rank 0 prints a sample at each, and while mpirun handles a
        // Ctrl-C (about a second here before it sends SIGTERM) it stops forwarding the ranks'
        // output. At 50 evaluations a second the ranks never reached the step that stops them
        // and mpirun killed them, most likely with rank 0 blocked in a write to that channel.
        .args(["--set", "steps=1000000", "--set", "eval_interval=500"])
        .args(["--set", "eval_iters=2"])
        // Into files: a pipe nobody reads while the run goes on could fill and stall it.
        .stdout(std::fs::File::create(dir.join(format!("{out}.stdout"))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{out}.stderr"))).unwrap())
        .spawn()
        .unwrap();
    let run = dir.join(out);
    // The first checkpoint is written at the first evaluation after step 0.
    wait_for("the first checkpoint", Duration::from_secs(60), || {
        run.join("model.safetensors").exists()
    });
    (child, run)
}

/// Waits for the job of [`long_run`] into `run` for at most `limit`, killing it (and failing)
/// past that; its exit status, stdout and stderr.
fn finish_within(
    mut child: std::process::Child,
    run: &Path,
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    let start = Instant::now();
    let read = |ext: &str| std::fs::read_to_string(run.with_extension(ext)).unwrap_or_default();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, read("stdout"), read("stderr"));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the job did not end within {limit:?}: {}", read("stderr"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A checkpoint that `chargpt eval` (one process) loads.
fn loads(dir: &Path, run: &Path) {
    succeeded(
        "eval of the checkpoint",
        chargpt(dir)
            .args(["eval", "--model"])
            .arg(run)
            .output()
            .unwrap(),
    );
}

#[test]
fn a_rank_killed_mid_run_ends_the_job_with_the_checkpoint_intact() {
    let _alone = one_at_a_time();
    let dir = workspace();
    let d = dir.path();
    if mpirun(d).is_none() {
        return;
    }
    let (child, run) = long_run(d, "run");
    let pids = rank_pids(child.id(), 1);
    assert_eq!(pids.len(), 1, "rank 1's process");
    // SAFETY: kill(2) on a pid this test found as mpirun's child.
    assert_eq!(unsafe { libc_kill(pids[0], 9) }, 0);
    let killed = Instant::now();
    let (status, _, stderr) = finish_within(child, &run, Duration::from_secs(30));
    assert!(!status.success());
    assert!(stderr.contains("rank 1"), "{stderr}");
    assert!(
        stderr.contains("error: rank 0 of 2") && stderr.contains("is intact"),
        "rank 0 says the job ends and where the checkpoint is: {stderr}"
    );
    eprintln!("the job ended {:?} after the kill", killed.elapsed());
    loads(d, &run);
}

#[test]
fn ctrl_c_saves_once_and_stops_every_rank() {
    let _alone = one_at_a_time();
    let dir = workspace();
    let d = dir.path();
    if mpirun(d).is_none() {
        return;
    }
    let (child, run) = long_run(d, "run");
    // SIGINT to mpirun, as a terminal's Ctrl-C would.
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc_kill(child.id() as i32, 2) }, 0);
    let (status, stdout, stderr) = finish_within(child, &run, Duration::from_secs(30));
    // The ranks end with 130; mpirun, once signalled, with its own status.
    assert!(!status.success(), "stderr: {stderr}");
    assert!(stderr.contains("stopping every rank"), "{stderr}");
    assert!(
        stdout.contains("stopped at step ") && stdout.contains("--resume --out run"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let saved: usize = std::fs::read_to_string(run.join("steps.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    // The checkpoint is of the step the ranks stopped at, and it resumes.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["step"].as_u64(), Some(saved as u64), "{config}");
    loads(d, &run);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

/// A time budget across 2 ranks: every rank takes rank 0's plan (the steps set from the pace
/// after the warm-up, and again at each evaluation before the decay) and they stop together, so
/// the job ends, and its steps are those one process takes with the recorded steps given.
#[test]
fn a_budgeted_run_over_two_ranks_follows_rank_0s_plan() {
    let _alone = one_at_a_time();
    let dir = workspace();
    let d = dir.path();
    if mpirun(d).is_none() {
        return;
    }
    let wsd = ["--set", "lr_schedule=wsd", "--set", "warmup_steps=10"].map(String::from);
    let mut args = layernorm("budget", 100);
    args.extend(wsd.clone());
    args.extend(["--time", "6s"].map(String::from));
    train(d, true, &strs(&args));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("budget/config.json")).unwrap())
            .unwrap();
    assert!(config["train"]["budget_fixed_at"].is_u64(), "{config}");
    let steps = config["train"]["steps"].as_u64().unwrap() as usize;
    let mut replay = layernorm("replay", steps);
    replay.extend(wsd);
    train(d, false, &strs(&replay));
    // (A machine that slowed down after the plan ends the budgeted run a few steps early.)
    let (ranks, one) = (step_rows(&d.join("budget")), step_rows(&d.join("replay")));
    assert!(
        ranks.len() > 12 && ranks.len() <= one.len(),
        "{}",
        ranks.len()
    );
    assert_eq!(ranks[..], one[..ranks.len()]);
}
