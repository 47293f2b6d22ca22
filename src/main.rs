//! The `chargpt` binary: the command line (`src/cli/`) and the web server (`src/serve/`).

mod cli;
mod serve;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(err) => {
            // One line that says what went wrong and what to do (unless another rank of an
            // mpirun job says it).
            if !err.is::<cli::Quiet>() {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "error: {}", cli::one_line(&err));
            }
            ExitCode::from(cli::exit_status(&err))
        }
    }
}
