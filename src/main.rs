//! Entry point: parse the command line, run, and map the outcome to an exit status.

use std::process::ExitCode;

use tapsplice::cli::{self, Command};
use tapsplice::launch;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let command = match cli::parse(&argv) {
        Ok(command) => command,
        Err(err) => {
            if !err.message.is_empty() {
                eprintln!("{}", err.message);
            }
            if let Some(usage) = err.usage {
                print!("{usage}");
            }
            return ExitCode::from(1);
        }
    };
    let result = match command {
        Command::Help(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            print!("{}", cli::version_text());
            return ExitCode::SUCCESS;
        }
        Command::Attach(opts) => {
            launch::init_logging(opts.debug);
            launch::attach(&opts)
        }
        Command::Run(opts) => {
            launch::init_logging(opts.debug);
            launch::run(&opts)
        }
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::from(1)
        }
    }
}
