//! A training's live events as the page reads them (`GET /api/runs/NAME/events`): the run
//! loop's [`RunEvent`]s in the page's JSON, the same from `chargpt serve` and from the tab.

use crate::runs::{RunEvent, RunOutcome};
use serde::Serialize;

/// One training step, as the page plots it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepPoint {
    /// Steps done, this one included.
    pub step: usize,
    pub steps: usize,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    /// When the step ended, in milliseconds since 1970 (for measuring how late a page sees it).
    pub at_ms: f64,
}

fn unix_ms() -> f64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// What a training reports, in order. Each is an event named by [`LiveEvent::name`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LiveEvent {
    Start {
        step: usize,
        steps: usize,
        resumed: bool,
        preset: Option<String>,
        params: usize,
    },
    Step(StepPoint),
    Eval {
        step: usize,
        train_loss: f32,
        val_loss: f32,
        lr: f32,
        tokens_per_s: f64,
        elapsed_s: f64,
        improved: bool,
        saved: bool,
        /// The evaluation's sample (the one `chargpt train` prints and writes to samples.txt).
        sample: String,
    },
    Saved {
        step: usize,
    },
    /// A line for the learner while it trains (a time budget far short of its recipe's steps:
    /// `RunEvent::BudgetSet`'s advice).
    Note {
        note: String,
    },
    /// The final exact evaluation over `windows` windows has begun.
    Exact {
        windows: usize,
    },
    Finished {
        /// "finished" or "stopped".
        state: &'static str,
        step: usize,
        steps: usize,
        best_val_loss: Option<f32>,
        best_val_step: Option<usize>,
        final_val_loss: Option<f64>,
        tokens_per_s: f64,
        elapsed_s: f64,
        /// A longer sample of the final model (finished runs only).
        sample: Option<String>,
    },
    Error {
        error: String,
    },
}

impl LiveEvent {
    pub fn name(&self) -> &'static str {
        match self {
            LiveEvent::Start { .. } => "start",
            LiveEvent::Step(_) => "step",
            LiveEvent::Eval { .. } => "eval",
            LiveEvent::Saved { .. } => "saved",
            LiveEvent::Note { .. } => "note",
            LiveEvent::Exact { .. } => "exact",
            LiveEvent::Finished { .. } => "finished",
            LiveEvent::Error { .. } => "error",
        }
    }

    /// The last event of a training.
    pub fn is_last(&self) -> bool {
        matches!(self, LiveEvent::Finished { .. } | LiveEvent::Error { .. })
    }

    /// The page's events for one of the run loop's: a step, an evaluation (and its save).
    pub fn from_run(event: &RunEvent<'_>) -> Vec<LiveEvent> {
        match event {
            RunEvent::Step {
                stats,
                steps,
                tokens_per_s,
                eta_s,
            } => vec![LiveEvent::Step(StepPoint {
                step: stats.step + 1,
                steps: *steps,
                loss: stats.loss,
                lr: stats.lr,
                grad_norm: stats.grad_norm,
                tokens_per_s: *tokens_per_s,
                eta_s: *eta_s,
                at_ms: unix_ms(),
            })],
            RunEvent::Eval {
                row,
                improved,
                saved,
                sample,
                ..
            } => {
                let mut out = vec![LiveEvent::Eval {
                    step: row.step,
                    train_loss: row.train_loss,
                    val_loss: row.val_loss,
                    lr: row.lr,
                    tokens_per_s: row.tokens_per_s,
                    elapsed_s: row.elapsed_s,
                    improved: *improved,
                    saved: *saved,
                    sample: sample.unwrap_or_default().to_string(),
                }];
                if *saved {
                    out.push(LiveEvent::Saved { step: row.step });
                }
                out
            }
            RunEvent::BudgetSet { advice, .. } => advice
                .iter()
                .map(|note| LiveEvent::Note { note: note.clone() })
                .collect(),
            RunEvent::ExactEval { windows } => vec![LiveEvent::Exact { windows: *windows }],
            RunEvent::Saved { .. } => Vec::new(),
        }
    }

    /// The last events of a run that ended: its final save, then `finished`.
    pub fn ended(outcome: RunOutcome, steps: usize) -> Vec<LiveEvent> {
        let saved = outcome.saved_step.map(|step| LiveEvent::Saved { step });
        let finished = LiveEvent::Finished {
            state: if outcome.interrupted {
                "stopped"
            } else {
                "finished"
            },
            step: outcome.steps_done,
            steps,
            best_val_loss: outcome.best.map(|b| b.0),
            best_val_step: outcome.best.map(|b| b.1),
            final_val_loss: outcome.final_val.map(|e| e.loss),
            tokens_per_s: outcome.tokens_per_s,
            elapsed_s: outcome.elapsed_s,
            sample: outcome.final_sample,
        };
        saved.into_iter().chain([finished]).collect()
    }
}

/// What a started training answers at once (`POST /api/runs`, `.../resume`).
#[derive(Debug, Serialize)]
pub struct Started {
    pub name: String,
    pub step: usize,
    pub steps: usize,
    pub resumed: bool,
    /// Settings that followed others (`warmup_steps` with `steps`, ...), one line each.
    pub notes: Vec<String>,
    /// Settings that are valid but probably not what was meant, one line each.
    pub warnings: Vec<String>,
}

/// The events of a stretch of the log as the page receives them: consecutive steps (after
/// `after`, which the page read from the run's records) as one `("step", [...])` message, every
/// other event as its own.
pub fn messages(events: &[LiveEvent], after: Option<usize>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut steps: Vec<StepPoint> = Vec::new();
    let flush = |steps: &mut Vec<StepPoint>, out: &mut Vec<(&'static str, String)>| {
        if !steps.is_empty() {
            out.push(("step", json(&steps)));
            steps.clear();
        }
    };
    for event in events {
        match event {
            LiveEvent::Step(p) => {
                if after.is_none_or(|a| p.step > a) {
                    steps.push(*p);
                }
            }
            other => {
                flush(&mut steps, &mut out);
                out.push((other.name(), json(other)));
            }
        }
    }
    flush(&mut steps, &mut out);
    out
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budgets_advice_reaches_the_page_as_a_note_and_nothing_else_does() {
        let advice = RunEvent::BudgetSet {
            steps: 1212,
            advice: Some("20m buys this model 1212 steps".into()),
        };
        let events = LiveEvent::from_run(&advice);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name(), "note");
        let sent = messages(&events, None);
        assert_eq!(sent[0].0, "note");
        let json: serde_json::Value = serde_json::from_str(&sent[0].1).unwrap();
        assert_eq!(json["note"], "20m buys this model 1212 steps");
        let quiet = RunEvent::BudgetSet {
            steps: 4200,
            advice: None,
        };
        assert!(LiveEvent::from_run(&quiet).is_empty());
    }
}
