//! The `chargpt` command line: train, sample, evaluate.

mod cli;

fn main() {
    if let Err(err) = cli::run() {
        // One line that says what went wrong and what to do; the chain gives the cause.
        let mut message = err.to_string();
        for cause in err.chain().skip(1) {
            message.push_str(": ");
            message.push_str(&cause.to_string());
        }
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
