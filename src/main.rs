//! The `chargpt` binary: two front ends over the library, the command line (`src/cli/`) and
//! the web server (`src/serve/`). This file parses the arguments into one or the other; neither
//! calls the other.

mod cli;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "chargpt",
    version,
    about = "A character-level GPT you can train on a laptop CPU",
    after_help = "Start with `chargpt train`: the default model on the built-in Tiny Shakespeare."
)]
struct Args {
    /// Worker threads [default: all cores]. Runs with the same thread count give the same numbers
    /// bit for bit.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: FrontEnd,
}

#[derive(Subcommand)]
enum FrontEnd {
    #[command(flatten)]
    Cli(cli::Command),
    /// A web page to start runs, watch them learn live, compare them and sample from them.
    Serve(serve::ServeArgs),
}

fn parse() -> Result<cli::Parsed<serve::ServeArgs>, clap::Error> {
    let args = Args::try_parse()?;
    Ok(match args.command {
        FrontEnd::Cli(command) => cli::Parsed::Command(args.threads, Box::new(command)),
        FrontEnd::Serve(serve) => cli::Parsed::Other(args.threads, serve),
    })
}

fn main() -> ExitCode {
    match cli::run(parse, serve::run) {
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
