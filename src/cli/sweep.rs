//! `chargpt sweep`: trains every combination of a few settings' values from one preset, and shows
//! how the final val loss moves with them: a table, `sweep.md`, and `sweep.png` (val loss against
//! the first setting's values, one line per combination of the others).

use super::format::{duration, markdown_table, text_table, thousands};
use super::grid::{on_rank, run_error, train_divided, train_quietly, workers, Trained};
use super::plot::{draw_line_plot, label_values, LinePlot, Series};
use super::{agree, load_text, Quiet, UsageError};
use anyhow::{anyhow, bail, Context, Result};
use chargpt::checkpoint;
use chargpt::config::{self, apply_to_configs, ModelConfig, TrainConfig};
use chargpt::data::Dataset;
use chargpt::distributed::Group;
use chargpt::ladder::with_steps;
use chargpt::runs::Run;
use chargpt::tokenizer::Tokenizer;
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

pub const TABLE_FILE: &str = "sweep.md";
pub const PLOT_FILE: &str = "sweep.png";

#[derive(Args)]
#[command(after_help = "\
Each --set KEY=V1,V2,... names a setting (any key `chargpt train --set` takes) and the values to \
try; with several, every combination is trained, the first --set varying fastest. A --set with a \
single value fixes that setting for every run. Every run starts from --preset, then --steps, \
--seed, the fixed settings and the combination's values, and uses the same seed, so only the \
swept settings differ. A combination that is not a valid model (n_embd not divisible \
by n_head, ...) is an error before anything is trained.

Output: DIR/<KEY=VALUE,...>/ (a checkpoint and its loss.png per combination, as `chargpt train` \
writes them), \
DIR/sweep.md (the table) and DIR/sweep.png (the exact val loss against the first setting's \
values, one line per combination of the others; a logarithmic axis for learning rates, and for \
any positive values spanning a factor of 100). A directory that already holds a sweep is never \
overwritten: choose another --out or delete it.

Example: chargpt sweep --preset layernorm --set n_head=1,2,4,8 (4 runs of the 42k-parameter \
model, about 10 s each on 2 cores).")]
pub struct SweepArgs {
    /// Preset to start from (`chargpt presets` lists them).
    #[arg(long, value_name = "NAME")]
    preset: String,
    /// A setting and the values to try, e.g. --set n_head=1,2,4,8 (repeatable: the grid is
    /// every combination).
    #[arg(long = "set", value_name = "KEY=V1,V2,...", required = true)]
    sets: Vec<String>,
    /// Train every combination for N steps instead of the preset's, with proportionally fewer
    /// evaluations.
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Training text, UTF-8 [default: the built-in Tiny Shakespeare].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "runs/sweep", value_name = "DIR")]
    out: PathBuf,
    /// Seed for every run [default: the preset's].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Print the results as a JSON list of {"settings": {KEY: VALUE, ...}, "params",
    /// "val_exact", "val_estimate", "wall_s"} instead of the table.
    #[arg(long)]
    json: bool,
}

/// One swept setting and its values, as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

/// Parses one `KEY=V1,V2,...`.
pub fn parse_axis(text: &str) -> Result<Axis, String> {
    let (key, list) = config::parse_override(text).map_err(|_| {
        format!("--set {text:?}: expected KEY=V1,V2,..., for example --set n_head=1,2,4,8")
    })?;
    let values: Vec<String> = list.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(String::is_empty) {
        return Err(format!(
            "--set {text}: an empty value; separate values with single commas, e.g. --set {key}=1,2,4"
        ));
    }
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(format!("--set {text}: {key}={v} is given twice"));
        }
    }
    Ok(Axis {
        key: key.to_string(),
        values,
    })
}

/// The settings' axes; a key may be swept once.
pub fn parse_axes(sets: &[String]) -> Result<Vec<Axis>, String> {
    let mut axes: Vec<Axis> = Vec::new();
    for text in sets {
        let axis = parse_axis(text)?;
        if axes.iter().any(|a| a.key == axis.key) {
            return Err(format!(
                "--set {}: {} is swept twice; give all its values in one --set {}=V1,V2,...",
                text, axis.key, axis.key
            ));
        }
        axes.push(axis);
    }
    Ok(axes)
}

/// Splits the settings into those with one value, fixed for every run, and the swept ones. When
/// none has several values the grid is a single run, named by all of them.
pub fn split_fixed(all: Vec<Axis>) -> (Vec<Axis>, Vec<Axis>) {
    if all.iter().all(|a| a.values.len() == 1) {
        return (Vec::new(), all);
    }
    all.into_iter().partition(|a| a.values.len() == 1)
}

/// Every combination of the axes' values, as one value index per axis, the first axis varying
/// fastest (so the runs of one line of the plot follow each other).
pub fn grid(axes: &[Axis]) -> Vec<Vec<usize>> {
    // Combination n written in the mixed radix of the axes' lengths, first axis lowest.
    let total: usize = axes.iter().map(|a| a.values.len()).product();
    (0..total)
        .map(|mut n| {
            axes.iter()
                .map(|a| {
                    let i = n % a.values.len();
                    n /= a.values.len();
                    i
                })
                .collect()
        })
        .collect()
}

/// `n_head=2, n_embd=64`.
fn describe(axes: &[Axis], combo: &[usize]) -> String {
    axes.iter()
        .zip(combo)
        .map(|(a, &i)| format!("{}={}", a.key, a.values[i]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A directory name for a combination: `n_head=2,n_embd=64`, with anything that is not a
/// letter, digit, `.`, `-`, `_`, `=` or `,` replaced by `_`.
fn dir_name(axes: &[Axis], combo: &[usize]) -> String {
    describe(axes, combo)
        .replace(", ", ",")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-=,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Keys whose values span decades: plotted on a logarithmic axis.
const LOG_KEYS: &[&str] = &["learning_rate", "min_lr", "weight_decay", "eps"];

/// The x coordinates of an axis's values and whether the axis is logarithmic: the numbers
/// themselves, or (for words such as relu/gelu, true/false) their positions 0, 1, ...
fn x_positions(axis: &Axis) -> (Vec<f64>, bool, bool) {
    let numbers: Option<Vec<f64>> = axis
        .values
        .iter()
        .map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect();
    match numbers {
        Some(xs) => {
            let positive = xs.iter().all(|&x| x > 0.0);
            let (lo, hi) = xs
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            let log = positive && (LOG_KEYS.contains(&axis.key.as_str()) || hi >= 100.0 * lo);
            (xs, log, true)
        }
        None => (
            (0..axis.values.len()).map(|i| i as f64).collect(),
            false,
            false,
        ),
    }
}

/// A configuration of the grid, checked and ready to train.
struct Planned {
    combo: Vec<usize>,
    model: ModelConfig,
    train: TrainConfig,
    params: usize,
}

#[derive(Debug, Serialize)]
struct SweepResult {
    settings: serde_json::Map<String, serde_json::Value>,
    params: usize,
    val_exact: f64,
    val_estimate: f32,
    wall_s: f64,
    #[serde(skip)]
    combo: Vec<usize>,
}

/// Applies every combination to the preset and checks it on the data, before anything trains:
/// a bad key or value names the `--set` it came from, an invalid model the combination.
fn plan(
    args: &SweepArgs,
    fixed: &[Axis],
    axes: &[Axis],
    text: &str,
    data_name: &str,
) -> Result<Vec<Planned>> {
    let preset = config::preset(&args.preset)?;
    let (mut model0, mut train0) = (preset.model, preset.train);
    if let Some(steps) = args.steps {
        train0 = with_steps(&train0, steps);
    }
    if let Some(seed) = args.seed {
        train0.seed = seed;
    }
    // Each value on its own first: the error names the setting, not a whole combination.
    for axis in fixed.iter().chain(axes) {
        for v in &axis.values {
            let (mut m, mut t) = (model0.clone(), train0.clone());
            apply_to_configs(&mut m, &mut t, &axis.key, v)
                .map_err(|e| anyhow!("--set {}={v}: {e}", axis.key))?;
        }
    }
    for axis in fixed {
        apply_to_configs(&mut model0, &mut train0, &axis.key, &axis.values[0])?;
    }
    let tokenizer = Tokenizer::from_text(text).map_err(chargpt::data::DataError::from)?;
    let dataset = Dataset::new(text, &tokenizer)?;
    model0.vocab_size = tokenizer.vocab_size();
    let mut planned = Vec::new();
    for combo in grid(axes) {
        let (mut model, mut train) = (model0.clone(), train0.clone());
        for (axis, &i) in axes.iter().zip(&combo) {
            apply_to_configs(&mut model, &mut train, &axis.key, &axis.values[i])?;
        }
        let checked = model
            .validate()
            .and_then(|()| train.validate())
            .map_err(|e| e.to_string())
            .and_then(|()| {
                dataset
                    .check_block_size(model.block_size)
                    .map_err(|e| format!("{data_name}: {e}"))
            });
        if let Err(e) = checked {
            let with = if fixed.is_empty() {
                String::new()
            } else {
                let all: Vec<usize> = vec![0; fixed.len()];
                format!(" (with {})", describe(fixed, &all))
            };
            bail!(
                "the combination {}{with} is invalid: {e}; change or drop one of its values",
                describe(axes, &combo)
            );
        }
        super::train::check_memory(&model, &train)
            .with_context(|| format!("the combination {}", describe(axes, &combo)))?;
        let params = chargpt::model::ParamLayout::new(&model).len;
        planned.push(Planned {
            combo,
            model,
            train,
            params,
        });
    }
    Ok(planned)
}

fn table(axes: &[Axis], results: &[SweepResult]) -> (Vec<String>, Vec<Vec<String>>, Vec<bool>) {
    let best = results
        .iter()
        .map(|r| r.val_exact)
        .fold(f64::INFINITY, f64::min);
    let mut header: Vec<String> = axes.iter().map(|a| a.key.clone()).collect();
    header.extend(["params", "val (exact)", "val (estimate)", "wall time"].map(String::from));
    let rows = results
        .iter()
        .map(|r| {
            let mut row: Vec<String> = axes
                .iter()
                .zip(&r.combo)
                .map(|(a, &i)| a.values[i].clone())
                .collect();
            let mark = if r.val_exact == best && results.len() > 1 {
                " (best)"
            } else {
                ""
            };
            row.extend([
                thousands(r.params),
                format!("{:.4}{mark}", r.val_exact),
                format!("{:.4}", r.val_estimate),
                duration(r.wall_s),
            ]);
            row
        })
        .collect();
    let mut right = vec![true; axes.len() + 4];
    right[axes.len() + 1] = false;
    (header, rows, right)
}

/// How a sweep ran, for its report.
struct HowRun<'a> {
    total_s: f64,
    steps: usize,
    /// `2 threads`, `2 ranks of 1 thread`.
    workers: &'a str,
}

fn write_report(
    out: &Path,
    args: &SweepArgs,
    fixed: &[Axis],
    axes: &[Axis],
    results: &[SweepResult],
    how: &HowRun,
) -> Result<()> {
    let HowRun {
        total_s,
        steps,
        workers,
    } = how;
    let (header, rows, right) = table(axes, results);
    let sets: Vec<String> = args
        .sets
        .iter()
        .map(|s| format!("--set {}", s.replace(' ', "")))
        .collect();
    let mut text = format!(
        "# Sweep of {}\n\n`chargpt sweep --preset {} {}`: {} run{} of {steps} steps each from the `{}` preset, {} in all on {workers}.\n\n",
        axes.iter().map(|a| a.key.as_str()).collect::<Vec<_>>().join(" x "),
        args.preset,
        sets.join(" "),
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        args.preset,
        duration(*total_s),
    );
    if !fixed.is_empty() {
        let fixed: Vec<String> = fixed
            .iter()
            .map(|a| format!("`{}={}`", a.key, a.values[0]))
            .collect();
        text.push_str(&format!("Every run with {}.\n\n", fixed.join(", ")));
    }
    text.push_str(&markdown_table(&header, &rows, &right));
    text.push_str(
        "\n- **val (exact)**: the mean loss over every target of the val split after the last step \
         (`chargpt eval`).\n\
         - **val (estimate)**: the mean loss of `eval_iters` random val batches at the last step, \
         as printed during training.\n\n\
         ![exact val loss against the swept values](sweep.png)\n",
    );
    let path = out.join(TABLE_FILE);
    checkpoint::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;

    let first = &axes[0];
    let (xs, log_x, numeric) = x_positions(first);
    let rest = &axes[1..];
    let mut series: Vec<Series> = Vec::new();
    for r in results {
        let label = if rest.is_empty() {
            "val loss (exact)".to_string()
        } else {
            describe(rest, &r.combo[1..])
        };
        let point = (xs[r.combo[0]], r.val_exact);
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => series.push(Series::line(label, vec![point])),
        }
    }
    // Every tried value is a tick, labelled as a number in one format, or by its name.
    let ticks: Vec<(f64, String)> = if numeric {
        label_values(&xs)
    } else {
        xs.iter()
            .copied()
            .zip(first.values.iter().cloned())
            .collect()
    };
    let title = format!("{}: val loss against {}", args.preset, first.key);
    draw_line_plot(
        &out.join(PLOT_FILE),
        &LinePlot {
            log_x,
            x_ticks: Some(&ticks),
            // At least 0.1 nats tall: runs that differ only in their seed already differ by
            // about 0.01.
            min_y_span: 0.1,
            ..LinePlot::new(
                &title,
                &first.key,
                "val loss (exact, nats per character)",
                &series,
            )
        },
    )
}

/// The table's results: the finished combinations, in grid order.
fn sweep_results(
    fixed: &[Axis],
    axes: &[Axis],
    planned: &[Planned],
    trained: &[Option<Trained>],
) -> Vec<SweepResult> {
    planned
        .iter()
        .zip(trained)
        .filter_map(|(p, t)| {
            let t = t.as_ref()?;
            let settings = fixed
                .iter()
                .map(|a| (a, 0))
                .chain(axes.iter().zip(p.combo.iter().copied()))
                .map(|(a, i)| {
                    let v = &a.values[i];
                    let value = serde_json::from_str(v)
                        .unwrap_or_else(|_| serde_json::Value::String(v.clone()));
                    (a.key.clone(), value)
                })
                .collect();
            Some(SweepResult {
                settings,
                params: p.params,
                val_exact: t.val_exact,
                val_estimate: t.val_estimate,
                wall_s: t.wall_s,
                combo: p.combo.clone(),
            })
        })
        .collect()
}

pub fn run(args: SweepArgs, group: Group) -> Result<ExitCode> {
    let parsed = if args.steps == Some(0) {
        Err(UsageError("--steps must be at least 1".into()).into())
    } else {
        parse_axes(&args.sets).map_err(|e| UsageError(e).into())
    };
    let (fixed, axes) = split_fixed(agree(group, parsed)?);
    // Rank 0 reads the text; the other ranks' machines need not have it.
    let loaded = if group.is_root() {
        Some(load_text(args.data.as_deref()))
    } else {
        None
    };
    let shared = chargpt::runs::share_text(
        group,
        loaded.as_ref().and_then(|l| l.as_ref().ok()).cloned(),
    )?;
    if let Some(Err(e)) = loaded {
        return Err(e);
    }
    let Some((text, info)) = shared else {
        return Err(Quiet(1).into());
    };
    let planned = agree(group, plan(&args, &fixed, &axes, &text, &info.source))?;
    let out = &args.out;
    let checked = (|| -> Result<()> {
        let taken: Vec<String> = planned
            .iter()
            .map(|p| dir_name(&axes, &p.combo))
            .filter(|name| checkpoint::exists(&out.join(name)))
            .collect();
        if group.is_root() && (!taken.is_empty() || out.join(TABLE_FILE).exists()) {
            let what = taken
                .first()
                .map_or(TABLE_FILE.to_string(), |t| format!("a checkpoint in {t}"));
            bail!(
                "{} already holds a sweep ({what}); choose another --out, or delete it first",
                out.display()
            );
        }
        // Every rank writes its runs' checkpoints on its own machine.
        super::train::check_writable(out)
    })();
    agree(group, checked)?;
    let stop = super::stop_on_ctrl_c(group, || {
        note!("\nstopping after this step to save (Ctrl-C again to quit without saving)")
    });
    let started = Instant::now();
    let steps = planned.first().map_or(0, |p| p.train.steps);
    let n = planned.len();
    let workers = workers(group);
    let mut train = |i: usize| -> Result<Option<Trained>> {
        let p = &planned[i];
        let run_started = Instant::now();
        let what = describe(&axes, &p.combo);
        if group.is_root() {
            note!(
                "[{}/{n}] {what}: {} parameters, {} steps",
                i + 1,
                thousands(p.params),
                p.train.steps
            );
        }
        let mut run = Run::new(p.model.clone(), p.train.clone(), &text, info.clone())
            .map_err(|e| run_error(e, &what))?;
        run.preset = Some(args.preset.clone());
        let dir = out.join(dir_name(&axes, &p.combo));
        let label = format!("[{}/{n}]", i + 1);
        train_quietly(&mut run, &dir, &stop, &label, run_started)
    };
    let mut finished = |i: usize, rank: usize, trained: &[Option<Trained>]| -> Result<()> {
        if let Some(t) = &trained[i] {
            note!(
                "[{}/{n}] {}: val {:.4} (exact), {}{}",
                i + 1,
                describe(&axes, &planned[i].combo),
                t.val_exact,
                duration(t.wall_s),
                on_rank(group, rank)
            );
        }
        let results = sweep_results(&fixed, &axes, &planned, trained);
        write_report(
            out,
            &args,
            &fixed,
            &axes,
            &results,
            &HowRun {
                total_s: started.elapsed().as_secs_f64(),
                steps,
                workers: &workers,
            },
        )
    };
    let Some(divided) = train_divided(group, n, &mut train, &mut finished)? else {
        // Another rank than 0: its results went to rank 0.
        return Ok(ExitCode::SUCCESS);
    };
    let results = sweep_results(&fixed, &axes, &planned, &divided.results);
    if !divided.stopped.is_empty() {
        let finished = if results.is_empty() {
            "no run finished".to_string()
        } else {
            format!(
                "the finished runs are in {}",
                out.join(TABLE_FILE).display()
            )
        };
        for &(index, rank) in &divided.stopped {
            let what = describe(&axes, &planned[index].combo);
            let dir = out.join(dir_name(&axes, &planned[index].combo));
            note!(
                "stopped during {what}{}; its checkpoint is in {} (continue it with `chargpt train --resume --out {}`); {finished}",
                on_rank(group, rank),
                dir.display(),
                dir.display(),
            );
        }
        return Ok(ExitCode::from(130));
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        let (header, rows, right) = table(&axes, &results);
        say!("{}", text_table(&header, &rows, &right));
        say!(
            "{} runs in {}; table in {}, plot in {}",
            results.len(),
            duration(started.elapsed().as_secs_f64()),
            out.join(TABLE_FILE).display(),
            out.join(PLOT_FILE).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axes(sets: &[&str]) -> Vec<Axis> {
        parse_axes(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn settings_parse_into_axes_and_a_grid_with_the_first_varying_fastest() {
        let a = axes(&["n_head=1, 2,4", "n_embd=32,64"]);
        assert_eq!(a[0].key, "n_head");
        assert_eq!(a[0].values, ["1", "2", "4"]);
        let g = grid(&a);
        assert_eq!(g, [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]]);
        assert_eq!(describe(&a, &g[4]), "n_head=2, n_embd=64");
        assert_eq!(dir_name(&a, &g[4]), "n_head=2,n_embd=64");
        assert_eq!(grid(&axes(&["seed=7"])), [[0]]);
        // Single values are fixed settings, unless nothing has several.
        let (fixed, swept) = split_fixed(axes(&["n_layer=1", "n_head=1,2", "seed=3"]));
        assert_eq!(
            fixed.iter().map(|a| &a.key).collect::<Vec<_>>(),
            ["n_layer", "seed"]
        );
        assert_eq!(swept.iter().map(|a| &a.key).collect::<Vec<_>>(), ["n_head"]);
        let (fixed, swept) = split_fixed(axes(&["n_layer=1", "seed=3"]));
        assert!(fixed.is_empty());
        assert_eq!(swept.len(), 2);
    }

    #[test]
    fn malformed_settings_are_refused() {
        let err = |sets: &[&str]| {
            parse_axes(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err()
        };
        assert!(err(&["n_head"]).contains("KEY=V1,V2"));
        assert!(err(&["n_head=1,,2"]).contains("empty value"));
        assert!(err(&["n_head=1,2,1"]).contains("twice"));
        assert!(err(&["n_head=1", "n_head=2"]).contains("swept twice"));
    }

    #[test]
    fn learning_rates_get_a_log_axis_and_words_get_positions() {
        let lr = &axes(&["learning_rate=1e-3,3e-3"])[0];
        assert_eq!(x_positions(lr), (vec![1e-3, 3e-3], true, true));
        let heads = &axes(&["n_head=1,2,4,8"])[0];
        assert_eq!(x_positions(heads), (vec![1.0, 2.0, 4.0, 8.0], false, true));
        let wide = &axes(&["batch_size=1,100"])[0];
        assert!(x_positions(wide).1);
        let act = &axes(&["activation=relu,gelu"])[0];
        assert_eq!(x_positions(act), (vec![0.0, 1.0], false, false));
    }
}
