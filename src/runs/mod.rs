//! A run directory's whole life, as every front end (`chargpt train`, `chargpt serve`, the
//! page in the browser) sees it: preparing a new, resumed or fine-tuned run ([`prepare`]), the
//! lock that lets one process at a time train it ([`lock`]), the run loop with its one event
//! stream ([`train`]), its records ([`records`], [`probe`]) and checkpoints, and the list of the
//! runs of a directory ([`list`]). [`crate::training`] keeps the lecture's loop: a step, the
//! shards, the loss estimates.
//!
//! Every check a front end used to make before training lives here, in the order they run, so
//! that a command line and a web page refuse the same mistakes with the same words; only the
//! "what to do" clause that names a flag or a button comes from the front end ([`Wording`]).
//!
//! A run trained across ranks (`mpirun`) is prepared on rank 0 alone and sent to the others
//! ([`share_run`]), which need neither its directory nor its text.

mod clock;
pub mod error;
pub mod list;
pub mod lock;
pub mod prepare;
pub mod probe;
pub mod records;
pub mod run;
pub mod share;
pub mod train;

pub use error::*;
pub use list::*;
pub use lock::*;
pub use prepare::*;
pub use probe::*;
pub use records::*;
pub use run::*;
pub use share::*;
pub use train::*;
