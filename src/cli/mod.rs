//! The `chargpt` command line. One module per subcommand, each with its clap arguments and a
//! `run` function; what several share (reading text, the one-line error rules) lives here.
//!
//! Adding a command means one variant in [`Command`] and one module.

/// `println!` that ignores a closed stdout: a reader that stops early (`| head`) is no reason to
/// stop a training run, or to panic as `println!` does.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod attention;
mod bench;
mod eval;
mod format;
mod grid;
mod ladder;
mod ladder_modern;
mod plot;
mod presets;
mod sample;
mod sweep;
mod train;
mod vocab;

use anyhow::{Context, Result};
use chargpt::checkpoint::DataInfo;
use chargpt::distributed::{self, Group, Session};
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The command line's commands (the binary adds `serve`, the page's front end, beside them).
#[derive(Subcommand)]
pub enum Command {
    /// Train a model (by default the `default` preset on the built-in Tiny Shakespeare).
    Train(train::TrainArgs),
    /// Generate text from a trained model, streamed as it is drawn.
    Sample(sample::SampleArgs),
    /// The exact loss of a trained model over a whole split.
    Eval(eval::EvalArgs),
    /// List the presets with their shapes and parameter counts.
    Presets(presets::PresetsArgs),
    /// Time training steps and generation, and compare with the machine's matrix-product peak.
    Bench(bench::BenchArgs),
    /// Train the lecture's ladder of models, bigram to LayerNorm, and compare each val loss with
    /// the published one.
    Ladder(ladder::LadderArgs),
    /// Draw what every head of a trained model attends to over a prompt.
    Attention(attention::AttentionArgs),
    /// Train every combination of a few settings' values and plot the val loss against them.
    Sweep(sweep::SweepArgs),
    /// List a model's characters, and which characters of a text it lacks.
    Vocab(vocab::VocabArgs),
}

/// What the binary parsed: `--threads` and a command of the command line, or another front
/// end's (`T`), which runs outside the worker pool and never under mpirun.
pub enum Parsed<T> {
    /// (Boxed: `train`'s arguments make a command ten times the size of the server's.)
    Command(Option<usize>, Box<Command>),
    Other(Option<usize>, T),
}

/// `--engine`, shared by the commands that run the model.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum EngineArg {
    /// The fast kernels.
    #[default]
    Fast,
    /// The plain-loop reference engine (src/reference/): the math as written, much slower.
    Reference,
}

impl From<EngineArg> for chargpt::engine::Engine {
    fn from(arg: EngineArg) -> Self {
        match arg {
            EngineArg::Fast => chargpt::engine::Engine::Fast,
            EngineArg::Reference => chargpt::engine::Engine::Reference,
        }
    }
}

/// A mistake in the command line itself (exit status 2, as clap uses).
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// An error that another rank reports (rank 0, or the rank it happened on): this rank ends with
/// the exit status and prints nothing, so that an error every rank meets is one line, not N.
#[derive(Debug)]
pub struct Quiet(pub u8);

impl std::fmt::Display for Quiet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reported by another rank")
    }
}

impl std::error::Error for Quiet {}

/// Parses the arguments with `parse` and runs the command (`other` runs another front end's);
/// returns the exit status of a run that did not fail (0, or 130 for a training run stopped
/// with Ctrl-C).
///
/// Under mpirun (a build with `--features mpi`) every rank runs this; `train`, `sweep` and
/// `ladder` share their work among the ranks and every other command is refused.
pub fn run<T>(
    parse: impl FnOnce() -> Result<Parsed<T>, clap::Error>,
    other: impl FnOnce(T, Option<usize>) -> Result<ExitCode>,
) -> Result<ExitCode> {
    let session = match Session::start() {
        Ok(session) => session,
        // Every rank meets the same refusal: rank 0 says it.
        Err(_) if distributed::launched_rank() > 0 => return Err(Quiet(1).into()),
        Err(e) => return Err(e.into()),
    };
    let group = session.group();
    let result = run_in(group, parse, other);
    match result {
        Err(e) if !group.is_root() && !e.is::<Quiet>() => Err(e.context(group.describe())),
        other => other,
    }
}

fn run_in<T>(
    group: Group,
    parse: impl FnOnce() -> Result<Parsed<T>, clap::Error>,
    other: impl FnOnce(T, Option<usize>) -> Result<ExitCode>,
) -> Result<ExitCode> {
    let parsed = match parse() {
        // Every rank parses the same arguments: rank 0 alone prints the help or the mistake.
        Err(e) if !group.is_root() => return Err(Quiet(if e.use_stderr() { 2 } else { 0 }).into()),
        Ok(parsed) => parsed,
        Err(e) => return usage_error(e),
    };
    let threads = match &parsed {
        Parsed::Command(threads, _) | Parsed::Other(threads, _) => *threads,
    };
    if threads == Some(0) {
        return quiet_unless_root(group, UsageError("--threads must be at least 1".into()));
    }
    if group.size() > 1
        && !matches!(
            &parsed,
            Parsed::Command(_, command)
                if matches!(**command, Command::Train(_) | Command::Sweep(_) | Command::Ladder(_))
        )
    {
        return quiet_unless_root(
            group,
            UsageError(
                "only train, sweep and ladder run across several processes; start this command without mpirun".into(),
            ),
        );
    }
    // Another front end (the server) runs each training in a pool of its own (so that two
    // trainings share the cores instead of one waiting inside the other's fork-join).
    let command = match parsed {
        Parsed::Other(_, args) => return other(args, threads),
        Parsed::Command(_, command) => *command,
    };
    // Ranks on one machine share its cores.
    let threads = threads.or_else(|| {
        let ranks = distributed::ranks_on_this_machine();
        (ranks > 1).then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / ranks).max(1)
        })
    });
    let pool = chargpt::runtime::thread_pool(threads).context("cannot start the worker threads")?;
    // Everything runs inside the pool, so kernels fork and join without a hand-off from an
    // outside thread.
    pool.install(|| match command {
        Command::Train(args) => train::run(args, group),
        Command::Sample(args) => sample::run(args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::Presets(args) => presets::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Ladder(args) => ladder::run(args, group),
        Command::Attention(args) => attention::run(args).map(|()| ExitCode::SUCCESS),
        Command::Sweep(args) => sweep::run(args, group),
        Command::Vocab(args) => vocab::run(args).map(|()| ExitCode::SUCCESS),
    })
}

/// The flag a run's loop stops at: Ctrl-C sets it (the run in progress stops after its step and
/// saves, and `stopping` says so, e.g. above a progress bar); a second Ctrl-C quits at once, the
/// atomic writes keeping the last checkpoint intact. Under mpirun, which turns Ctrl-C into
/// SIGTERM for every rank, the signal sets it on every rank and they agree at the next step.
pub fn stop_on_ctrl_c(group: Group, stopping: impl Fn() + Send + 'static) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    if group.size() > 1 {
        distributed::stop_on_signals(stop.clone());
        return stop;
    }
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            note!("\nquitting without saving");
            std::process::exit(130);
        }
        stopping();
    });
    stop
}

/// `err` on rank 0; the others end quietly with the same status (they met the same error).
fn quiet_unless_root(group: Group, err: UsageError) -> Result<ExitCode> {
    if group.is_root() {
        Err(err.into())
    } else {
        Err(Quiet(2).into())
    }
}

/// Under mpirun, the outcome of a step every rank takes, known to all (a collective): they go on
/// together or stop together. An error is reported once: by rank 0 if it met it, else by the
/// rank that did; the other ranks end quietly.
pub fn agree<T>(group: Group, result: Result<T>) -> Result<T> {
    if group.size() == 1 {
        return result;
    }
    let failed = group.all_gather(usize::from(result.is_err()));
    match result {
        Err(e) if group.is_root() || failed[0] == 0 => Err(e),
        Err(_) => Err(Quiet(1).into()),
        Ok(_) if failed.iter().any(|&f| f != 0) => Err(Quiet(1).into()),
        Ok(value) => Ok(value),
    }
}

/// Prints `err` as `main` would and ends every rank of the job: for an error on one rank while
/// the others wait for it (they would otherwise wait to their deadline).
pub fn abort_job(group: Group, err: &anyhow::Error) -> ! {
    let place = if group.is_root() {
        String::new()
    } else {
        format!("{}: ", group.describe())
    };
    note!("error: {place}{}", one_line(err));
    distributed::abort(1)
}

/// Help and version go to stdout as usual; a real mistake becomes one line: clap's message, its
/// tips, and where to read more.
fn usage_error(e: clap::Error) -> Result<ExitCode> {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let mut parts: Vec<String> = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("Usage:") || line.starts_with("For more") {
            continue;
        }
        if let Some(first) = line.strip_prefix("error: ") {
            parts.push(first.to_string());
        } else if let Some(tip) = line.strip_prefix("tip: ") {
            parts.push(tip.to_string());
        } else if parts.len() == 1 && !line.contains(' ') {
            // The rest of the usage line ("<COMMAND>" and the like) is not worth a line.
            continue;
        } else {
            parts.push(line.to_string());
        }
    }
    let command = std::env::args().skip(1).find(|a| {
        [
            "train",
            "sample",
            "eval",
            "presets",
            "bench",
            "ladder",
            "attention",
            "sweep",
            "vocab",
            "serve",
        ]
        .contains(&a.as_str())
    });
    let help = match command {
        Some(c) => format!("see `chargpt {c} --help`"),
        None => "see `chargpt --help`".to_string(),
    };
    parts.push(help);
    Err(UsageError(parts.join("; ")).into())
}

/// The error as one line: its message and those of its causes that it does not already show.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message.replace(['\n', '\r'], " ")
}

/// The exit status for an error: 2 for a mistake in the command line, 1 otherwise.
pub fn exit_status(err: &anyhow::Error) -> u8 {
    if let Some(Quiet(code)) = err.downcast_ref::<Quiet>() {
        *code
    } else if err.is::<UsageError>() {
        2
    } else {
        1
    }
}

/// A progress bar on stderr for `len` units of `what` (drawn only when stderr is a terminal, and
/// only once the work has taken a moment, so quick commands print nothing extra).
pub fn progress_bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len as u64),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{pos}}/{{len}} {what} [{{bar:30}}] {{elapsed}}, ETA {{eta}}"
        ))
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// The ids of a prompt; characters the model's vocabulary lacks are one error listing them all.
pub fn encode_prompt(
    tokenizer: &chargpt::tokenizer::Tokenizer,
    text: &str,
) -> Result<Vec<chargpt::tokenizer::TokenId>> {
    Ok(chargpt::sampling::encode_prompt(tokenizer, text)?)
}

/// Reads a training or evaluation text: `path`, or the built-in Tiny Shakespeare.
pub fn load_text(path: Option<&Path>) -> Result<(String, DataInfo)> {
    Ok(chargpt::runs::load_text(path)?)
}

/// Reads the text a checkpoint was trained on, as its `config.json` records it (`None`: the
/// built-in text).
pub fn load_recorded_text(recorded: Option<&DataInfo>) -> Result<(String, DataInfo)> {
    Ok(chargpt::runs::load_recorded_text(
        recorded,
        train::WORDING.give_text,
    )?)
}
