//! Which implementation of the model computes a pass: the fast engine ([`crate::model`] over
//! [`crate::kernels`]: fused, SIMD, threaded, allocation-free) or the reference engine
//! ([`crate::reference`]: plain loops, the math as written). Both read the same parameters and
//! give the same results up to the order of float sums; the reference is what a learner reads and
//! what the fast one is tested against.
//!
//! Training ([`crate::training::Trainer::with_engine`]), the exact loss
//! ([`crate::training::evaluate_exact`]) and generation ([`crate::sampling::Generator::on`]) take
//! an [`Engine`]; `chargpt train`, `eval`, `sample` and `bench` take `--engine`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The fast kernels (the default).
    #[default]
    Fast,
    /// The plain-loop reference.
    Reference,
}

impl Engine {
    pub const ALL: [Engine; 2] = [Engine::Fast, Engine::Reference];

    pub fn name(self) -> &'static str {
        match self {
            Engine::Fast => "fast",
            Engine::Reference => "reference",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown engine {0:?}; use fast or reference")]
pub struct UnknownEngine(pub String);

impl FromStr for Engine {
    type Err = UnknownEngine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Engine::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| UnknownEngine(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in Engine::ALL {
            assert_eq!(e.name().parse::<Engine>(), Ok(e));
        }
        assert_eq!(Engine::default(), Engine::Fast);
        assert!("slow".parse::<Engine>().is_err());
    }
}
