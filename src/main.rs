//! Entry point: parse the command line, run, and map the outcome to an exit status.
//!
//! `tapsplice stats|flows|forwards|pcap|probe ...` are clients of a running instance with
//! their own parser; anything else is the slirp4netns-compatible command line.

use std::process::ExitCode;

use tapsplice::cli::{self, Command};
use tapsplice::{inspect, launch};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).is_some_and(|arg| inspect::is_subcommand(arg)) {
        return inspect::main(&argv);
    }
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
