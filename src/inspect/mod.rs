//! `tapsplice stats|flows|forwards|pcap|probe`: looking into a running tapsplice through its
//! API socket.
//!
//! These subcommands are clients: they connect to the `--api-socket` of a running instance,
//! send one of the statistics commands, and print the answer as text for people or as JSON
//! for scripts (`--json`, one document per line, also under `--watch`). `probe` adds
//! connections of its own through a forward to tell where a request's time goes.
//!
//! They are parsed with clap, apart from the slirp4netns-compatible command line in
//! [`crate::cli`], whose texts are a contract; `main.rs` hands an argument vector over here
//! when its first argument is one of [`SUBCOMMANDS`]. No slirp4netns invocation starts that
//! way: its first argument is an option or a PID, and a path is only taken after the
//! `--netns-type=path` option.
//!
//! Every failure is one line on stderr, `tapsplice: ` then what failed, and exit status 1,
//! clap's own usage errors included (clap would exit 2; the rest of the tool exits 1).

mod client;
mod probe;
mod render;
mod table;
#[cfg(test)]
mod testkit;

use std::io::{self, ErrorKind, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::error::ErrorKind as ClapErrorKind;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use client::{ApiClient, ApiCommand, ClientError, FlowList, ForwardList};
use probe::ProbeOptions;

use crate::stats::report::{PcapReport, StatsReport};

/// The first arguments that select these subcommands instead of the slirp4netns command line.
pub const SUBCOMMANDS: [&str; 5] = ["stats", "flows", "forwards", "probe", "pcap"];

/// Moves the cursor home and clears the screen before each `--watch` redraw.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// Longest accepted `--watch` interval or `--timeout`.
const MAX_SECONDS: f64 = 86_400.0;

/// Whether `arg` (the first argument) selects one of these subcommands.
pub fn is_subcommand(arg: &str) -> bool {
    SUBCOMMANDS.contains(&arg)
}

/// Look into a running tapsplice through its API socket.
#[derive(Debug, Parser)]
#[command(
    name = "tapsplice",
    bin_name = "tapsplice",
    disable_help_subcommand = true
)]
struct Inspect {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Totals of the instance: TAP traffic, drops, flows, forwards, the capture.
    Stats(View),
    /// Every open flow, one row each: addresses, state, bytes, queues, RTT, latencies.
    Flows(View),
    /// Every port forward, one row each: connections and latency percentiles.
    Forwards(View),
    /// Capture the TAP's frames to a pcap file, or stop capturing.
    #[command(subcommand)]
    Pcap(Pcap),
    /// Time connections through a forward, at the client and inside tapsplice, and say which
    /// stage takes the time.
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
struct Api {
    /// The API socket of the running tapsplice (its --api-socket).
    #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
    api_socket: PathBuf,
}

impl Api {
    fn client(&self) -> ApiClient {
        ApiClient::new(&self.api_socket)
    }
}

#[derive(Debug, Args)]
struct View {
    #[command(flatten)]
    api: Api,
    /// Print the report as JSON on one line.
    #[arg(long)]
    json: bool,
    /// Redraw every SECS seconds (1 when not given) until interrupted; with --json, print one
    /// document per line instead.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "1",
        value_parser = parse_seconds
    )]
    watch: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum Pcap {
    /// Start capturing to FILE (relative to the current directory).
    Start {
        #[command(flatten)]
        api: Api,
        /// The pcap file to write.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Bytes kept of each frame (default: whole frames at any MTU).
        #[arg(long, value_name = "N", default_value_t = crate::stats::pcap::DEFAULT_SNAPLEN,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::stats::pcap::DEFAULT_SNAPLEN)))]
        snaplen: u32,
        /// Stop growing the file at this size (K, M, G: binary units; 0: no limit).
        #[arg(long, value_name = "N", default_value = "0", value_parser = parse_size)]
        max_bytes: u64,
        /// Print the capture's report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the capture.
    Stop {
        #[command(flatten)]
        api: Api,
        /// Print the capture's report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ProbeArgs {
    #[command(flatten)]
    api: Api,
    /// A forward's host address: 127.0.0.1:8080, [::1]:8080, localhost:8080.
    #[arg(value_name = "HOST:PORT")]
    target: String,
    /// Connections to make, one after another.
    #[arg(short = 'n', value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// What to send on each connection (\r \n \t \0 \\ are interpreted); empty: send nothing
    /// and wait for the server to speak first.
    #[arg(long, value_name = "TEXT", default_value = r"GET / HTTP/1.0\r\n\r\n")]
    data: String,
    /// Longest wait for a connect, for the first byte, and for the rest of the answer.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    timeout: Duration,
    /// Print the figures, the summary and the verdict as JSON.
    #[arg(long)]
    json: bool,
}

/// Why a subcommand failed; printed after `tapsplice: `.
#[derive(Debug, thiserror::Error)]
enum InspectError {
    /// The API socket did not answer, or answered with an error.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// The probe's HOST:PORT names no address.
    #[error("{target}: {reason}")]
    Target { target: String, reason: String },
    /// The capture file's path cannot be made absolute or sent as JSON text.
    #[error("{path}: {reason}")]
    PcapPath { path: String, reason: String },
    /// Writing to standard output failed.
    #[error("standard output: {}", describe_io(.0))]
    Output(#[from] io::Error),
}

/// Runs the subcommand named by `argv[1]`.
pub fn main(argv: &[String]) -> ExitCode {
    let inspect = match Inspect::try_parse_from(argv) {
        Ok(inspect) => inspect,
        Err(err) => return usage_error(&err, argv),
    };
    match run(inspect.command) {
        Ok(code) => code,
        // The reader went away (`| head`): nothing left to say.
        Err(InspectError::Output(err)) if err.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tapsplice: {err}");
            ExitCode::from(1)
        }
    }
}

/// `--help` on stdout with status 0; any other parse error as one line and status 1.
fn usage_error(err: &clap::Error, argv: &[String]) -> ExitCode {
    match err.kind() {
        ClapErrorKind::DisplayHelp => {
            // Nothing to do if stdout is gone.
            let _ = err.print();
            ExitCode::SUCCESS
        }
        ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(1)
        }
        _ => {
            let subcommand = argv.get(1).map_or("", String::as_str);
            eprintln!(
                "tapsplice: {} (see 'tapsplice {subcommand} --help')",
                first_paragraph(&err.to_string())
            );
            ExitCode::from(1)
        }
    }
}

/// The first paragraph of clap's message on one line, without its `error: ` prefix: clap puts
/// the missing arguments on lines of their own under the sentence that announces them.
fn first_paragraph(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let text = lines.join(" ");
    text.strip_prefix("error: ").unwrap_or(&text).to_string()
}

fn run(command: Command) -> Result<ExitCode, InspectError> {
    match command {
        Command::Stats(view) => view.show(&ApiCommand::GetStats, |client, command, value| {
            let report: StatsReport = client.parse(command, value)?;
            Ok(render::stats_text(&report))
        }),
        Command::Flows(view) => view.show(&ApiCommand::ListFlows, |client, command, value| {
            let list: FlowList = client.parse(command, value)?;
            Ok(render::flows_text(&list.flows))
        }),
        Command::Forwards(view) => {
            view.show(&ApiCommand::ListForwards, |client, command, value| {
                let list: ForwardList = client.parse(command, value)?;
                Ok(render::forwards_text(&list.forwards))
            })
        }
        Command::Pcap(Pcap::Start {
            api,
            file,
            snaplen,
            max_bytes,
            json,
        }) => {
            let command = ApiCommand::StartPcap {
                path: absolute_path(&file)?,
                snaplen,
                max_bytes,
            };
            View::once(api, json).show(&command, render_pcap)
        }
        Command::Pcap(Pcap::Stop { api, json }) => {
            View::once(api, json).show(&ApiCommand::StopPcap, render_pcap)
        }
        Command::Probe(args) => run_probe(&args),
    }
}

/// Reads a report's `return` value as its type and renders it as text.
type Renderer = fn(&ApiClient, &ApiCommand, Value) -> Result<String, ClientError>;

fn render_pcap(
    client: &ApiClient,
    command: &ApiCommand,
    value: Value,
) -> Result<String, ClientError> {
    let report: PcapReport = client.parse(command, value)?;
    Ok(render::pcap_text(&report))
}

impl View {
    /// A command answered once, with no `--watch`.
    fn once(api: Api, json: bool) -> View {
        View {
            api,
            json,
            watch: None,
        }
    }

    /// Asks `command` once, or every `--watch` interval, and prints the answer.
    fn show(&self, command: &ApiCommand, render: Renderer) -> Result<ExitCode, InspectError> {
        let client = self.api.client();
        let mut out = io::stdout().lock();
        loop {
            let value = client.call(command)?;
            // The text is made even for --json: it checks the reply has the report's shape.
            let text = render(&client, command, value.clone())?;
            match (self.json, self.watch) {
                (true, _) => writeln!(out, "{value}")?,
                (false, Some(_)) => write!(out, "{CLEAR_SCREEN}{text}")?,
                (false, None) => write!(out, "{text}")?,
            }
            out.flush()?;
            match self.watch {
                Some(interval) => thread::sleep(interval),
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// The capture file's path as the server must get it: absolute, since its working directory
/// is not ours, and valid UTF-8, since it travels as a JSON string.
fn absolute_path(file: &Path) -> Result<String, InspectError> {
    let shown = file.display().to_string();
    let absolute = std::path::absolute(file).map_err(|err| InspectError::PcapPath {
        path: shown.clone(),
        reason: describe_io(&err),
    })?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|_| InspectError::PcapPath {
            path: shown,
            reason: "not valid UTF-8".into(),
        })
}

fn run_probe(args: &ProbeArgs) -> Result<ExitCode, InspectError> {
    let addresses: Vec<_> = args
        .target
        .to_socket_addrs()
        .map_err(|err| InspectError::Target {
            target: args.target.clone(),
            reason: describe_io(&err),
        })?
        .collect();
    let client = args.api.client();
    // A wrong socket path is an error before anything is timed, not a note on every row.
    client.flows()?;
    let options = ProbeOptions {
        target: args.target.clone(),
        addresses,
        count: args.count,
        data: probe::unescape(&args.data),
        timeout: args.timeout,
    };
    let report = probe::run(&client, &options);
    let mut out = io::stdout().lock();
    if args.json {
        let json = serde_json::to_string(&report).map_err(io::Error::other)?;
        writeln!(out, "{json}")?;
    } else {
        write!(out, "{}", probe::report_text(&report))?;
    }
    out.flush()?;
    Ok(if report.connected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// An I/O error as one short phrase: the errno's text without Rust's `(os error N)`, and
/// timeouts called what they are.
fn describe_io(err: &io::Error) -> String {
    match (err.kind(), err.raw_os_error()) {
        (ErrorKind::WouldBlock | ErrorKind::TimedOut, _) => "timed out".into(),
        (_, Some(code)) => nix::errno::Errno::from_raw(code).desc().into(),
        _ => err.to_string(),
    }
}

/// `--watch` and `--timeout`: seconds, fractions allowed, more than 0 and at most a day.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!(
            "must be more than 0 and at most {MAX_SECONDS} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `--max-bytes`: a byte count, optionally with a binary unit: `4096`, `512K`, `100MiB`, `1G`.
fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match text[digits.len()..].to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("'{text}': unknown unit (use K, M or G)")),
    };
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count"))?;
    count
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let argv: Vec<String> = std::iter::once("tapsplice")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        Inspect::try_parse_from(argv).map(|inspect| inspect.command)
    }

    #[test]
    fn the_subcommands_are_recognised_by_their_first_argument() {
        for name in SUBCOMMANDS {
            assert!(is_subcommand(name));
        }
        assert!(!is_subcommand("--help"));
        assert!(!is_subcommand("1234"));
    }

    #[test]
    fn watch_takes_an_optional_interval() {
        let Ok(Command::Stats(view)) = parse(&["stats", "-a", "/s"]) else {
            panic!()
        };
        assert_eq!(view.watch, None);
        let Ok(Command::Flows(view)) = parse(&["flows", "--api-socket", "/s", "--watch"]) else {
            panic!()
        };
        assert_eq!(view.watch, Some(Duration::from_secs(1)));
        let Ok(Command::Forwards(view)) = parse(&["forwards", "-a", "/s", "--watch", "0.5"]) else {
            panic!()
        };
        assert_eq!(view.watch, Some(Duration::from_millis(500)));
        assert!(parse(&["stats", "-a", "/s", "--watch", "0"]).is_err());
        assert!(parse(&["stats", "-a", "/s", "--watch", "x"]).is_err());
    }

    #[test]
    fn pcap_start_takes_a_file_and_sizes() {
        let Ok(Command::Pcap(Pcap::Start {
            file,
            snaplen,
            max_bytes,
            ..
        })) = parse(&[
            "pcap",
            "start",
            "-a",
            "/s",
            "cap.pcap",
            "--max-bytes",
            "100M",
        ])
        else {
            panic!()
        };
        assert_eq!(file, PathBuf::from("cap.pcap"));
        assert_eq!(snaplen, crate::stats::pcap::DEFAULT_SNAPLEN);
        assert_eq!(max_bytes, 100 << 20);
        let absolute = absolute_path(&file).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute, cwd.join("cap.pcap").to_str().unwrap());
        assert_eq!(absolute_path("/a/b.pcap".as_ref()).unwrap(), "/a/b.pcap");
    }

    #[test]
    fn probe_defaults() {
        let Ok(Command::Probe(args)) = parse(&["probe", "-a", "/s", "127.0.0.1:8080"]) else {
            panic!()
        };
        assert_eq!(args.count, 5);
        assert_eq!(probe::unescape(&args.data), b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(args.timeout, Duration::from_secs(5));
        assert!(parse(&["probe", "-a", "/s", "127.0.0.1:8080", "-n", "0"]).is_err());
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let err = parse(&["stats"]).unwrap_err();
        assert_eq!(
            first_paragraph(&err.to_string()),
            "the following required arguments were not provided: --api-socket <PATH>"
        );
        let err = parse(&["stats", "-a", "/s", "--bogus"]).unwrap_err();
        assert_eq!(
            first_paragraph(&err.to_string()),
            "unexpected argument '--bogus' found"
        );
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("1T").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn io_errors_read_like_perror() {
        let err = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(describe_io(&err), "Connection refused");
        let err = io::Error::from(ErrorKind::WouldBlock);
        assert_eq!(describe_io(&err), "timed out");
    }
}
