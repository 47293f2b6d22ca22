//! The pace of a run as it goes: tokens per second and the time left.

/// This session's time in training steps and in evaluations, for the throughput and the ETA.
#[derive(Debug, Default)]
pub(super) struct Clock {
    steps: usize,
    pub(super) train_s: f64,
    /// The first step of a session is slow (threads and caches warm up); the pace leaves it out
    /// once there are others.
    first_step_s: f64,
    /// The recent time per step: the mean of the steps so far up to [`PACE_STEPS`] of them, then
    /// an exponential average over about that many, so the ETA follows a machine that speeds
    /// up or slows down (other work starting or stopping).
    pace_s: f64,
    evals: usize,
    eval_s: f64,
}

/// Steps the pace averages over.
const PACE_STEPS: usize = 50;

impl Clock {
    pub(super) fn step(&mut self, seconds: f64) {
        self.steps += 1;
        self.train_s += seconds;
        match self.steps {
            1 => {
                self.first_step_s = seconds;
                self.pace_s = seconds;
            }
            // The first steady step replaces the warm-up one.
            2 => self.pace_s = seconds,
            n => {
                let weight = 1.0 / (n - 1).min(PACE_STEPS) as f64;
                self.pace_s += weight * (seconds - self.pace_s);
            }
        }
    }

    pub(super) fn eval(&mut self, seconds: f64) {
        self.evals += 1;
        self.eval_s += seconds;
    }

    /// The mean seconds of an evaluation this session, once one is measured.
    pub(super) fn eval_mean_s(&self) -> Option<f64> {
        (self.evals > 0).then(|| self.eval_s / self.evals as f64)
    }

    /// Training steps this session.
    pub(super) fn steps(&self) -> usize {
        self.steps
    }

    /// Seconds per training step, measured on training steps only.
    pub(super) fn step_s(&self) -> f64 {
        self.pace_s
    }

    /// This session's training throughput: its steps (but the warm-up one) over their time.
    pub(super) fn tokens_per_s(&self, tokens_per_step: f64) -> f64 {
        let (steps, seconds) = match self.steps {
            0 => return 0.0,
            1 => (1, self.first_step_s),
            n => (n - 1, self.train_s - self.first_step_s),
        };
        if seconds > 0.0 {
            steps as f64 * tokens_per_step / seconds
        } else {
            0.0
        }
    }

    /// The time left: the remaining steps at the recent pace, plus the remaining evaluations
    /// (and the final exact one, `exact` estimates long) at the measured evaluation time, when
    /// one has been measured.
    pub(super) fn eta_s(&self, steps_left: usize, evals_left: usize, exact: Option<f64>) -> f64 {
        let per_eval = if self.evals > 0 {
            self.eval_s / self.evals as f64
        } else {
            0.0
        };
        steps_left as f64 * self.step_s() + (evals_left as f64 + exact.unwrap_or(0.0)) * per_eval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_counts_training_steps_and_evaluations_each_at_its_own_pace() {
        let mut clock = Clock::default();
        // The step-0 evaluation, a slow first step, then steady steps.
        clock.eval(3.0);
        clock.step(1.0);
        assert_eq!(clock.step_s(), 1.0);
        clock.step(0.1);
        clock.step(0.1);
        assert!(
            (clock.step_s() - 0.1).abs() < 1e-12,
            "the warm-up step is left out"
        );
        // 100 steps and 2 evaluations to go, and an exact evaluation as long as 5 estimates.
        let eta = clock.eta_s(100, 2, Some(5.0));
        assert!((eta - (10.0 + 7.0 * 3.0)).abs() < 1e-9, "{eta}");
        assert!((clock.tokens_per_s(1000.0) - 10_000.0).abs() < 1e-6);
        // The machine slows down to 0.3 s a step: within about 50 steps the pace follows.
        for _ in 0..150 {
            clock.step(0.3);
        }
        assert!((clock.step_s() - 0.3).abs() < 0.01, "{}", clock.step_s());
    }
}
