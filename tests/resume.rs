//! Exact resume: a run stopped and resumed gives the same losses and the same parameters, bit for
//! bit, as a run that never stopped (same machine, same thread count). Dropout is on, so the
//! per-step dropout seeds are exercised, and the schedule is a warm-up + cosine one, so the
//! learning rate changes every step.

use chargpt::checkpoint::{self, read_tensor_file};
use chargpt::config::{preset, LrSchedule, Precision};
use chargpt::data::TINY_SHAKESPEARE;
use chargpt::runs::{data_info, run_training, Run, RunEvent, RunOptions};
use std::path::Path;

fn tiny_run(text: &str) -> Run {
    tiny_run_in(text, Precision::Fp32)
}

fn tiny_run_in(text: &str, precision: Precision) -> Run {
    // bf16 runs with the portable kernels where the CPU lacks AVX512_BF16.
    chargpt::runtime::allow_bf16_emulation();
    let p = preset("layernorm").unwrap();
    let mut model = p.model;
    model.dropout = 0.1;
    let mut train = p.train;
    train.steps = 60;
    train.eval_interval = 20;
    train.eval_iters = 4;
    train.lr_schedule = LrSchedule::Cosine;
    train.warmup_steps = 10;
    train.min_lr = 1e-4;
    train.grad_clip = 1.0;
    train.precision = precision;
    Run::new(model, train, text, data_info("test", text)).unwrap()
}

/// Trains `run` to `stop_at` (or the end), returning every step's loss and every evaluation's
/// (step, train, val) estimates.
fn train(run: &mut Run, out: &Path, stop_at: Option<usize>) -> (Vec<f32>, Vec<(usize, f32, f32)>) {
    let options = RunOptions {
        out: Some(out.to_path_buf()),
        stop_at,
        exact_eval: false,
        probe: Some(chargpt::runs::default_probe(
            &run.tokenizer,
            &run.dataset.val,
            run.trainer.model.config.block_size,
            Some(&run.data),
        )),
        ..RunOptions::default()
    };
    let (mut losses, mut evals) = (Vec::new(), Vec::new());
    run_training(run, &options, &mut |event| match event {
        RunEvent::Step { stats, .. } => losses.push(stats.loss),
        RunEvent::Eval { row, .. } => evals.push((row.step, row.train_loss, row.val_loss)),
        RunEvent::ExactEval { .. } | RunEvent::Saved(_) | RunEvent::BudgetSet { .. } => {}
    })
    .unwrap();
    (losses, evals)
}

#[test]
fn stopping_and_resuming_changes_nothing() {
    stop_and_resume(Precision::Fp32);
}

#[test]
fn stopping_and_resuming_a_bf16_run_changes_nothing() {
    stop_and_resume(Precision::Bf16);
}

fn stop_and_resume(precision: Precision) {
    let text = &TINY_SHAKESPEARE[..100_000];
    let dir = tempfile::tempdir().unwrap();
    let (straight_dir, split_dir) = (dir.path().join("straight"), dir.path().join("split"));

    let mut straight = tiny_run_in(text, precision);
    let (straight_losses, straight_evals) = train(&mut straight, &straight_dir, None);
    assert_eq!(straight_losses.len(), 60);

    // 30 steps, stop (as Ctrl-C would), then a new process's worth of state from disk.
    let mut first = tiny_run_in(text, precision);
    let (mut losses, mut evals) = train(&mut first, &split_dir, Some(30));
    assert_eq!(losses.len(), 30);
    drop(first);
    // A process killed after recording steps past its last checkpoint leaves rows that the
    // resumed run must replace, not keep.
    let mut steps_file = std::fs::OpenOptions::new()
        .append(true)
        .open(split_dir.join("steps.csv"))
        .unwrap();
    std::io::Write::write_all(&mut steps_file, b"31,9.5,0.001,1,99.0\n").unwrap();
    drop(steps_file);
    // Likewise a probe record of an evaluation after the checkpoint.
    let probes = split_dir.join(chargpt::runs::PROBES_FILE);
    let mut stray = chargpt::runs::read_probes(&probes)[0].clone();
    stray.step = 40;
    chargpt::runs::append_probe(&probes, &stray).unwrap();
    let saved = checkpoint::load_config(&split_dir).unwrap();
    assert_eq!(saved.step, 30);
    assert_eq!(saved.train.precision, precision);
    let mut resumed = Run::resume(&split_dir, saved.train, text, data_info("test", text)).unwrap();
    assert_eq!(resumed.trainer.step, 30);
    let (more_losses, more_evals) = train(&mut resumed, &split_dir, None);
    losses.extend(more_losses);
    evals.extend(more_evals);

    assert_eq!(losses, straight_losses, "per-step training losses differ");
    assert_eq!(evals, straight_evals, "loss estimates differ");
    assert_eq!(resumed.trainer.model.params, straight.trainer.model.params);
    assert_eq!(resumed.trainer.optimizer, straight.trainer.optimizer);
    assert_eq!(resumed.trainer.data_rng, straight.trainer.data_rng);

    // The files agree too: same tensors, and the same metrics rows.
    let a = read_tensor_file(&straight_dir.join("model.safetensors")).unwrap();
    let b = read_tensor_file(&split_dir.join("model.safetensors")).unwrap();
    assert_eq!(a.tensors, b.tensors);
    let rows = |d: &Path| -> Vec<(usize, f32, f32)> {
        chargpt::runs::read_metrics(&d.join("metrics.csv"))
            .iter()
            .map(|r| (r.step, r.train_loss, r.val_loss))
            .collect()
    };
    assert_eq!(rows(&straight_dir), rows(&split_dir));
    assert_eq!(rows(&split_dir).len(), 4); // steps 0, 20, 40, 60
                                           // steps.csv too: every step once, the same losses, whatever happened after step 30 of the
                                           // first session.
    let steps = |d: &Path| -> Vec<(usize, f32, f32)> {
        chargpt::runs::read_steps(&d.join("steps.csv"))
            .iter()
            .map(|r| (r.step, r.loss, r.lr))
            .collect()
    };
    assert_eq!(steps(&straight_dir), steps(&split_dir));
    // And the replay's probe records: one per evaluation, the same numbers.
    let probes = |d: &Path| chargpt::runs::read_probes(&d.join(chargpt::runs::PROBES_FILE));
    assert_eq!(probes(&split_dir).len(), 4);
    assert_eq!(probes(&straight_dir), probes(&split_dir));
    assert_eq!(
        steps(&split_dir).iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
}

/// The checkpoint is fp32 either way: a bf16 run continues in fp32 and the other way round, and
/// the switch changes the numbers (the products really change precision).
#[test]
fn a_run_continues_in_the_other_precision() {
    let text = &TINY_SHAKESPEARE[..50_000];
    let dir = tempfile::tempdir().unwrap();
    for (first, then) in [
        (Precision::Bf16, Precision::Fp32),
        (Precision::Fp32, Precision::Bf16),
    ] {
        let out = dir.path().join(format!("{first:?}"));
        let mut run = tiny_run_in(text, first);
        train(&mut run, &out, Some(20));
        let saved = checkpoint::load_config(&out).unwrap();
        let mut same = saved.train.clone();
        same.steps = 25;
        let mut other = same.clone();
        other.precision = then;
        let mut a = Run::resume(&out, same, text, data_info("t", text)).unwrap();
        let mut b = Run::resume(&out, other, text, data_info("t", text)).unwrap();
        assert_eq!(a.trainer.model.params, b.trainer.model.params);
        assert_eq!(b.trainer.model.precision(), then);
        let (la, _) = train(&mut a, &dir.path().join("a"), None);
        let (lb, _) = train(&mut b, &dir.path().join("b"), None);
        assert_eq!(lb.len(), 5);
        assert!(lb.iter().all(|l| l.is_finite()));
        assert_ne!(
            la, lb,
            "{first:?} -> {then:?}: the precision made no difference"
        );
        for (x, y) in la.iter().zip(&lb) {
            assert!((x - y).abs() < 0.02, "{first:?} -> {then:?}: {x} vs {y}");
        }
    }
}

#[test]
fn a_torn_save_is_detected_rather_than_resumed_wrongly() {
    let text = &TINY_SHAKESPEARE[..50_000];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut run = tiny_run(text);
    train(&mut run, &out, Some(20));
    // A crash between the optimizer's rename and the model's: the optimizer is from a later save.
    let keep = std::fs::read(out.join("model.safetensors")).unwrap();
    let keep_config = std::fs::read(out.join("config.json")).unwrap();
    let saved = checkpoint::load_config(&out).unwrap();
    let mut run = Run::resume(&out, saved.train.clone(), text, data_info("t", text)).unwrap();
    train(&mut run, &out, Some(25));
    std::fs::write(out.join("model.safetensors"), keep).unwrap();
    std::fs::write(out.join("config.json"), keep_config).unwrap();
    let err = Run::resume(&out, saved.train, text, data_info("t", text)).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("model 20, optimizer 25") && shown.contains("--init-from"),
        "{shown}"
    );
    // The model itself still loads.
    checkpoint::load(&out).unwrap();
}

/// The binary, through `CHARGPT_TEST_RUNNER` where one is set: the ARM64 build runs under
/// `qemu-aarch64` in CI (`.ci/run`), where cargo's runner starts the test but not the binary the
/// test starts.
fn binary() -> std::process::Command {
    let bin = env!("CARGO_BIN_EXE_chargpt");
    let runner = std::env::var("CHARGPT_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = std::process::Command::new(program);
            command.args(words).arg(bin);
            command
        }
        None => std::process::Command::new(bin),
    }
}

/// The same through the binary: 200 steps, then `--resume --set steps=400`, against 400 straight,
/// with a constant learning rate so that the first run's schedule is the same as the straight
/// run's.
#[test]
fn the_command_line_resume_matches_a_straight_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let common = [
        "--preset",
        "layernorm",
        "--set",
        "dropout=0.1",
        "--set",
        "eval_interval=100",
        "--set",
        "eval_iters=5",
        "--threads",
        "2",
    ];
    let run = |extra: &[&str]| {
        let out = binary()
            .current_dir(d)
            .arg("train")
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mut args = vec!["--out", "straight", "--set", "steps=400"];
    args.extend(common);
    run(&args);
    let mut args = vec!["--out", "split", "--set", "steps=200"];
    args.extend(common);
    run(&args);
    let resumed = run(&[
        "--resume",
        "--out",
        "split",
        "--set",
        "steps=400",
        "--threads",
        "2",
    ]);
    assert!(
        resumed.starts_with("resuming layernorm at step 200 of 400"),
        "{resumed}"
    );

    let a = read_tensor_file(&d.join("straight/model.safetensors")).unwrap();
    let b = read_tensor_file(&d.join("split/model.safetensors")).unwrap();
    assert_eq!(a.tensors, b.tensors);
    let rows = |name: &str| -> Vec<(usize, f32, f32)> {
        chargpt::runs::read_metrics(&d.join(name).join("metrics.csv"))
            .iter()
            .map(|r| (r.step, r.train_loss, r.val_loss))
            .collect()
    };
    assert_eq!(rows("straight"), rows("split"));
    assert_eq!(rows("split").len(), 5);
    let steps = |name: &str| -> Vec<(usize, f32)> {
        chargpt::runs::read_steps(&d.join(name).join("steps.csv"))
            .iter()
            .map(|r| (r.step, r.loss))
            .collect()
    };
    assert_eq!(steps("straight"), steps("split"));
    assert_eq!(steps("split").len(), 400);
    let exact = |name: &str| {
        let c = checkpoint::load_config(&d.join(name)).unwrap();
        (c.step, c.final_val_loss.unwrap().to_bits())
    };
    assert_eq!(exact("straight"), exact("split"));
}

/// The "what to do" clauses of a refusal, which these tests never show.
const QUIET: chargpt::runs::Wording = chargpt::runs::Wording {
    change_setting: "",
    keep_shape: "",
    another_out: "",
    existing: "",
    nothing_to_resume: "",
    give_text: "",
};

/// Trains `run` in memory to `stop_at` (or its end): every step's loss, the last checkpoint's
/// bytes, the outcome and the seconds it took.
fn train_in_memory(
    run: &mut Run,
    stop_at: Option<usize>,
    exact_eval: bool,
) -> (
    Vec<f32>,
    chargpt::runs::SavedFiles,
    chargpt::runs::RunOutcome,
    f64,
) {
    let options = RunOptions {
        stop_at,
        save_in_memory: true,
        exact_eval,
        ..RunOptions::default()
    };
    let (mut losses, mut saved) = (Vec::new(), None);
    let t0 = std::time::Instant::now();
    let outcome = run_training(run, &options, &mut |event| match event {
        RunEvent::Step { stats, .. } => losses.push(stats.loss),
        RunEvent::Saved(files) => saved = Some(files.clone()),
        _ => {}
    })
    .unwrap();
    let seconds = t0.elapsed().as_secs_f64();
    (losses, saved.expect("saved"), outcome, seconds)
}

/// A run kept in memory (the page in a browser tab: no directory, its checkpoints handed over
/// as the files' bytes) stops and resumes from those bytes exactly as a run directory does, and
/// the bytes written out are a run directory that the command line resumes the same way.
#[test]
fn a_run_saved_in_memory_resumes_exactly_from_its_bytes() {
    use chargpt::runs::resume_in_memory;
    let text = &TINY_SHAKESPEARE[..100_000];
    let info = || data_info("test", text);
    let in_memory = |run: &mut Run, stop_at| {
        let (losses, saved, _, _) = train_in_memory(run, stop_at, false);
        (losses, saved)
    };
    let mut straight = tiny_run(text);
    let (straight_losses, _) = in_memory(&mut straight, None);

    let mut first = tiny_run(text);
    let (mut losses, files) = in_memory(&mut first, Some(30));
    assert_eq!(files.step, 30);
    let mut resumed = resume_in_memory("tiny", &files, &[], text, info(), &QUIET, &mut |w| {
        panic!("{w}")
    })
    .unwrap();
    assert_eq!(resumed.metrics.len(), 2); // steps 0 and 20
    assert_eq!(resumed.step_rows.len(), 30);
    let (more, end) = in_memory(&mut resumed, None);
    losses.extend(more);
    assert_eq!(losses, straight_losses);
    assert_eq!(resumed.trainer.model.params, straight.trainer.model.params);

    // Written out, the bytes of step 30 are a run directory `train --resume` continues.
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("model.safetensors", &files.model[..]),
        ("config.json", &files.config[..]),
        ("optimizer.safetensors", &files.optimizer[..]),
        ("metrics.csv", files.metrics.as_bytes()),
        ("steps.csv", files.steps.as_bytes()),
    ] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let saved = checkpoint::load_config(dir.path()).unwrap();
    let mut from_disk = Run::resume(dir.path(), saved.train, text, info()).unwrap();
    let (from_disk_losses, _) = train(&mut from_disk, dir.path(), None);
    assert_eq!(from_disk_losses, straight_losses[30..]);
    assert_eq!(end.step, 60);
}

/// A run with a time budget turns it into steps after timing its first steps (inside the
/// warm-up), records them, ends inside its budget, resumes exactly, and is repeated bit for
/// bit by a run set to those steps.
#[test]
fn a_budgeted_run_records_its_steps_resumes_exactly_and_repeats_with_them() {
    use chargpt::runs::resume_in_memory;
    let text = &TINY_SHAKESPEARE[..100_000];
    let info = || data_info("test", text);
    let budgeted = |seconds: f64| {
        let mut run = tiny_run(text);
        run.trainer.config.time_budget = seconds;
        run.trainer.config.eval_interval = 0;
        run
    };
    let in_memory = |run: &mut Run, stop_at| train_in_memory(run, stop_at, true);
    // Uninterrupted, it ends inside its 3 seconds, the final exact evaluation included (with
    // room for a machine busy with other tests), its steps set at step 10: the end of the
    // warm-up, within which the learning rate does not depend on the steps.
    let mut whole = budgeted(3.0);
    let (_, files, outcome, seconds) = in_memory(&mut whole, None);
    let train = &whole.trainer.config;
    assert_eq!(train.budget_fixed_at, Some(10));
    // (A machine that slows down after the steps are set ends the run early, its steps as
    // planned.)
    assert!(!outcome.interrupted && outcome.steps_done <= train.steps);
    assert!(train.steps > 20, "{} steps in 3 s", train.steps);
    assert!(seconds < 3.0 + 1.5, "{seconds} s for a 3 s budget");
    let recorded = checkpoint::parse_config(&files.config, "config.json").unwrap();
    assert_eq!(recorded.train.budget_fixed_at, Some(10));
    assert_eq!(recorded.train.steps, train.steps);

    // An hour's budget, stopped at step 30 (its steps set at 10), resumed to step 60: it goes
    // on with the recorded steps, and a run set to those steps without a budget takes the same
    // 60 steps bit for bit (the same learning rates: the schedule is the steps').
    let mut first = budgeted(3600.0);
    let (mut losses, files, _, _) = in_memory(&mut first, Some(30));
    let steps = first.trainer.config.steps;
    assert_eq!(first.trainer.config.budget_fixed_at, Some(10));
    let mut resumed = resume_in_memory("tiny", &files, &[], text, info(), &QUIET, &mut |w| {
        panic!("{w}")
    })
    .unwrap();
    assert_eq!(resumed.trainer.config.steps, steps);
    let (more, _, _, _) = in_memory(&mut resumed, Some(60));
    losses.extend(more);
    assert_eq!(losses.len(), 60);
    let mut repeat = tiny_run(text);
    repeat.trainer.config.steps = steps;
    repeat.trainer.config.eval_interval = 0;
    let (again, _, _, _) = in_memory(&mut repeat, Some(60));
    assert_eq!(losses, again);
    assert_eq!(resumed.trainer.model.params, repeat.trainer.model.params);
}

/// A budgeted WSD run, trained to its end or to `stop_at`: every step's (loss, learning rate),
/// the outcome and the seconds it took. `slow` makes steps longer by a wait inside the step's
/// time, as the loop of [`run_training`] times it.
fn train_wsd(
    run: &mut Run,
    stop_at: Option<usize>,
    slow: Slow,
) -> (Vec<(f32, f32)>, chargpt::runs::RunOutcome, f64) {
    use chargpt::runs::{Due, Session};
    let options = RunOptions {
        exact_eval: true,
        stop_at,
        ..RunOptions::default()
    };
    let (peak, warmup) = (
        run.trainer.config.learning_rate,
        run.trainer.config.warmup_steps,
    );
    let mut steps = Vec::new();
    let mut on_event = |event: RunEvent<'_>| {
        if let RunEvent::Step { stats, .. } = event {
            steps.push((stats.loss, stats.lr));
        }
    };
    let t0 = std::time::Instant::now();
    let mut session = Session::start(run, options, &mut on_event).unwrap();
    let mut step_s = 0.0;
    let outcome = loop {
        match session.next(run, &mut on_event).unwrap() {
            Due::Step => {
                let began = std::time::Instant::now();
                let step = run.trainer.step;
                let stats = run.trainer.train_step(&run.dataset.train);
                let seconds = began.elapsed().as_secs_f64();
                let in_decay = step >= warmup
                    && chargpt::optimizer::learning_rate(&run.trainer.config, step) < peak;
                if !in_decay {
                    step_s += 0.1 * (seconds - step_s);
                }
                let wait = match slow {
                    Slow::No => 0.0,
                    Slow::InDecay if in_decay => step_s,
                    Slow::InDecay => 0.0,
                    Slow::Each(seconds) => seconds,
                };
                std::thread::sleep(std::time::Duration::from_secs_f64(wait));
                session.stepped(run, stats, &mut on_event).unwrap();
            }
            Due::Done(outcome) => break outcome,
        }
    };
    (steps, outcome, t0.elapsed().as_secs_f64())
}

/// How [`train_wsd`] slows a run's steps down.
#[derive(Clone, Copy)]
enum Slow {
    No,
    /// Each step of the decay takes twice as long (a machine that slows down once the decay has
    /// begun).
    InDecay,
    /// Each step takes this many seconds more (a large model on a slow machine).
    Each(f64),
}

fn wsd_run(text: &str, budget: f64, steps: usize) -> Run {
    let mut run = tiny_run(text);
    let train = &mut run.trainer.config;
    train.lr_schedule = LrSchedule::Wsd;
    train.eval_interval = 0;
    train.steps = steps;
    train.time_budget = budget;
    run
}

/// A budgeted WSD run refits its steps to the machine's pace at each evaluation (its learning
/// rate is flat until its decay, and falls in straight pieces in it), decays to the end inside
/// its budget, and a run set to its recorded steps and decay repeats it bit for bit.
#[test]
fn a_budgeted_wsd_run_follows_the_pace_to_its_end() {
    let text = &TINY_SHAKESPEARE[..100_000];
    let mut timed = wsd_run(text, 3.0, 60);
    let (steps, outcome, seconds) = train_wsd(&mut timed, None, Slow::No);
    let train = timed.trainer.config.clone();
    assert!(seconds < 3.0 + 1.5, "{seconds} s for a 3 s budget");
    let fixed = train.budget_fixed_at.expect("steps set from the budget");
    assert!(fixed >= 10 && fixed < train.steps, "set at {fixed}");
    assert!(!outcome.interrupted && outcome.steps_done <= train.steps);
    if outcome.steps_done == train.steps {
        // The decay ran to its end: the last step's learning rate is one step of the last
        // piece above the floor. (A machine much slower at the end, as under other tests, can
        // cut it short.)
        let (from, at) = match train.decay_plan.last() {
            Some(&(from, _)) => (from, steps[from].1),
            None => (chargpt::optimizer::wsd_decay(&train).0, train.learning_rate),
        };
        let last_lr = steps.last().unwrap().1;
        let one_step = (at - train.min_lr) / (train.steps - from) as f32;
        assert!(
            last_lr >= train.min_lr && last_lr <= train.min_lr + one_step * 1.001,
            "{last_lr}: min_lr {} and {one_step} a step from {at} at step {from}",
            train.min_lr
        );
    }
    let mut repeat = wsd_run(text, 0.0, train.steps);
    repeat.trainer.config.decay_plan = train.decay_plan.clone();
    let (again, _, _) = train_wsd(&mut repeat, Some(outcome.steps_done), Slow::No);
    assert_eq!(steps, again, "the run set to its {} steps", train.steps);
}

/// A machine that slows down once the decay has begun: the run sets its steps again inside the
/// decay, recording the pieces (`decay_plan`), and still ends inside its budget with its
/// learning rate at the floor, never rising, and no step taken changed. A resume goes on with
/// the pieces; a run given them and the steps repeats it bit for bit.
#[test]
fn a_budgeted_wsd_run_sets_its_steps_again_inside_its_decay() {
    use chargpt::runs::resume_in_memory;
    let text = &TINY_SHAKESPEARE[..100_000];
    // Each step of the decay takes twice as long: the plan made before the decay overruns, so
    // the evaluations in the decay shorten it.
    let mut timed = wsd_run(text, 4.0, 60);
    let (steps, outcome, seconds) = train_wsd(&mut timed, None, Slow::InDecay);
    let train = timed.trainer.config.clone();
    println!(
        "{} of {} steps in {seconds:.2} s, decay {:?}",
        outcome.steps_done, train.steps, train.decay_plan
    );
    assert!(seconds < 4.0 + 1.5, "{seconds} s for a 4 s budget");
    assert!(
        train.decay_plan.len() >= 2,
        "set again inside the decay: {:?}, {} steps",
        train.decay_plan,
        train.steps
    );
    let (decay_start, _) = chargpt::optimizer::wsd_decay(&train);
    assert_eq!(decay_start, train.decay_plan[0].0);
    assert!(train.budget_fixed_at.unwrap() > decay_start);
    // The learning rate falls from the peak to the floor without a jump back up.
    let lrs: Vec<f32> = steps.iter().map(|s| s.1).collect();
    assert!(
        lrs[decay_start..].windows(2).all(|w| w[1] <= w[0]),
        "{lrs:?}"
    );
    if outcome.steps_done == train.steps {
        // To the floor: the last step one step of the last piece above it.
        let from = train.decay_plan.last().unwrap().0;
        let one_step = (lrs[from] - train.min_lr) / (train.steps - from) as f32;
        let last = *lrs.last().unwrap();
        assert!(
            last >= train.min_lr && last <= train.min_lr + one_step * 1.001,
            "{last}: one step {one_step} from {} at step {from}",
            lrs[from]
        );
    }
    let mut repeat = wsd_run(text, 0.0, train.steps);
    repeat.trainer.config.decay_plan = train.decay_plan.clone();
    let (again, _, _) = train_wsd(&mut repeat, Some(outcome.steps_done), Slow::No);
    assert_eq!(
        steps, again,
        "the run set to {} steps and {:?}",
        train.steps, train.decay_plan
    );

    // Stopped in its decay after a piece began and resumed from its saved files, it goes on
    // with the recorded pieces: the same learning rates as the run given them.
    let stop = train.decay_plan[1].0 + 1;
    println!("resumed at {stop}");
    if stop < outcome.steps_done {
        let mut first = wsd_run(text, 0.0, train.steps);
        first.trainer.config.decay_plan = train.decay_plan.clone();
        let (files, _) = {
            let (_, files, outcome, _) = train_in_memory(&mut first, Some(stop), true);
            (files, outcome)
        };
        let recorded = checkpoint::parse_config(&files.config, "config.json").unwrap();
        assert_eq!(recorded.train.decay_plan, train.decay_plan);
        let info = data_info("test", text);
        let mut resumed = resume_in_memory("tiny", &files, &[], text, info, &QUIET, &mut |w| {
            panic!("{w}")
        })
        .unwrap();
        let (rest, _, _) = train_wsd(&mut resumed, Some(outcome.steps_done), Slow::No);
        assert_eq!(&steps[stop..], &rest[..], "resumed at step {stop}");
    }
}

/// A budget whose warm-up would take more than a quarter of it to time (a large model on a slow
/// machine, a short budget) sets its steps once a quarter is spent, inside the warm-up, rather
/// than spend the budget timing it, and ends inside its budget; a run given the recorded steps
/// repeats it.
#[test]
fn a_budgeted_run_too_short_to_time_its_whole_warm_up_sets_its_steps_sooner() {
    let text = &TINY_SHAKESPEARE[..100_000];
    // 200 steps of warm-up at 10 ms or more each: 2 s or more to time, the whole budget.
    let slow_run = |budget: f64, steps: usize| {
        let mut run = wsd_run(text, budget, steps);
        run.trainer.config.warmup_steps = 200;
        run
    };
    let mut timed = slow_run(2.0, 1000);
    let (steps, outcome, seconds) = train_wsd(&mut timed, None, Slow::Each(0.01));
    let train = timed.trainer.config.clone();
    let fixed = train.budget_fixed_at.expect("steps set from the budget");
    assert!((3..200).contains(&fixed), "set at step {fixed}");
    assert!(seconds < 2.0 + 1.5, "{seconds} s for a 2 s budget");
    assert!(!outcome.interrupted && outcome.steps_done <= train.steps);
    let mut repeat = slow_run(0.0, train.steps);
    repeat.trainer.config.decay_plan = train.decay_plan.clone();
    let (again, _, _) = train_wsd(&mut repeat, Some(outcome.steps_done), Slow::No);
    assert_eq!(steps, again, "the run set to its {} steps", train.steps);
}

/// A budget that buys under half the steps its recipe planned for it (a recipe sized for a
/// faster machine) says so once, when its steps are set; one that buys more says nothing.
#[test]
fn a_budget_far_short_of_its_recipes_steps_says_so_once() {
    let text = &TINY_SHAKESPEARE[..100_000];
    let budget_set = |guess: usize| {
        let mut run = tiny_run(text);
        run.trainer.config.time_budget = 1.0;
        run.trainer.config.steps = guess;
        run.budget_guess = Some(guess);
        let mut set = Vec::new();
        run_training(&mut run, &RunOptions::default(), &mut |event| {
            if let RunEvent::BudgetSet { steps, advice } = event {
                set.push((steps, advice));
            }
        })
        .unwrap();
        (set, run.trainer.config.steps)
    };
    // A million steps do not fit in a second on any machine.
    let (set, steps) = budget_set(1_000_000);
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(set[0].0, steps);
    let advice = set[0].1.as_deref().expect("a line of advice");
    assert!(
        advice.contains(&format!(
            "buys this model {steps} steps on this machine, under half the 1000000"
        )),
        "{advice}"
    );
    // The steps are set after the warm-up's 10 steps, or after 3 on a machine so slow that
    // they take a quarter of the budget (under emulation), at least one more: over half of 6.
    let (set, _) = budget_set(6);
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(set[0].1, None);
}

/// A budget that buys a model without dropout many passes over a short text says so once, when
/// the steps are set; with dropout it says nothing.
#[test]
fn a_budget_of_many_passes_without_dropout_says_so_once() {
    let text = &TINY_SHAKESPEARE[..4000];
    let advice = |dropout: f32| {
        let mut run = tiny_run(text);
        run.trainer.model.config.dropout = dropout;
        run.trainer.config.time_budget = 2.0;
        run.trainer.config.steps = 1_000_000;
        let train_len = run.dataset.train.len();
        let mut set = Vec::new();
        run_training(&mut run, &RunOptions::default(), &mut |event| {
            if let RunEvent::BudgetSet { steps, advice } = event {
                set.push((steps, advice));
            }
        })
        .unwrap();
        assert_eq!(set.len(), 1, "{set:?}");
        let (steps, advice) = set.pop().unwrap();
        // Batch 32 x block 8 characters a step, over the 3600 of the training split.
        let passes = steps as f64 * 256.0 / train_len as f64;
        (passes, advice)
    };
    let (passes, said) = advice(0.0);
    if passes > chargpt::config::PASSES_WITHOUT_DROPOUT {
        let said = said.expect("a line of advice");
        assert!(said.contains("passes over its training text"), "{said}");
    } else {
        // A machine too slow for two seconds to buy that many passes over 3600 characters.
        println!("skipped: {passes:.1} passes in a second on this machine");
        assert_eq!(said, None);
    }
    assert_eq!(advice(0.1).1, None);
}

/// A budget that buys a model without dropout many passes over its text turns its
/// `budget_dropout` on when the steps are set, says so, and records the step: a resume goes on
/// with dropout, exactly, and a run of the recorded steps with dropout turned on at that step
/// repeats it bit for bit.
#[test]
fn a_budget_of_many_passes_turns_dropout_on_and_resumes_exactly() {
    use chargpt::runs::resume_in_memory;
    let text = &TINY_SHAKESPEARE[..4000];
    let plain = || {
        let mut run = tiny_run(text);
        run.trainer.set_dropout(0.0).unwrap();
        run.trainer.config.eval_interval = 0;
        run
    };
    // An hour's budget over 3600 characters: thousands of passes on any machine.
    let mut first = plain();
    first.trainer.config.time_budget = 3600.0;
    first.trainer.config.budget_dropout = 0.1;
    let options = RunOptions {
        stop_at: Some(30),
        save_in_memory: true,
        ..RunOptions::default()
    };
    let (mut losses, mut said, mut saved) = (Vec::new(), Vec::new(), None);
    run_training(&mut first, &options, &mut |event| match event {
        RunEvent::Step { stats, .. } => losses.push(stats.loss),
        RunEvent::BudgetSet { advice, .. } => said.push(advice),
        RunEvent::Saved(files) => saved = Some(files.clone()),
        _ => {}
    })
    .unwrap();
    assert_eq!(said.len(), 1, "{said:?}");
    let note = said[0].as_deref().expect("a note");
    assert!(note.contains("dropout 0.1 from here on"), "{note}");
    let train = &first.trainer.config;
    assert_eq!(
        (train.budget_fixed_at, train.dropout_from),
        (Some(10), Some(10))
    );
    assert_eq!(first.trainer.model.config.dropout, 0.1);
    let steps = train.steps;
    let files = saved.expect("saved");
    let recorded = checkpoint::parse_config(&files.config, "config.json").unwrap();
    assert_eq!(recorded.train.dropout_from, Some(10));
    assert_eq!(recorded.model.dropout, 0.1);

    let info = data_info("test", text);
    let mut resumed = resume_in_memory("tiny", &files, &[], text, info, &QUIET, &mut |w| {
        panic!("{w}")
    })
    .unwrap();
    assert_eq!(resumed.trainer.model.config.dropout, 0.1);
    let (more, _, _, _) = train_in_memory(&mut resumed, Some(60), false);
    losses.extend(more);
    assert_eq!(losses.len(), 60);

    // The same steps without a budget, dropout turned on by hand at step 10.
    let mut repeat = plain();
    repeat.trainer.config.steps = steps;
    let (mut again, _, _, _) = train_in_memory(&mut repeat, Some(10), false);
    repeat.trainer.set_dropout(0.1).unwrap();
    again.extend(train_in_memory(&mut repeat, Some(60), false).0);
    assert_eq!(losses, again);
    assert_eq!(resumed.trainer.model.params, repeat.trainer.model.params);

    // Without dropout the first 10 steps are the same and the others not: dropout was on from
    // step 10, and only from there.
    let mut without = plain();
    without.trainer.config.steps = steps;
    let (plain_losses, _, _, _) = train_in_memory(&mut without, Some(60), false);
    assert_eq!(plain_losses[..10], losses[..10]);
    assert_ne!(plain_losses[10..], losses[10..]);
}
