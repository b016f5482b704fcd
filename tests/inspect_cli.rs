//! `tapsplice stats|flows|forwards|pcap|probe` as a user runs them: the built binary against a
//! fake API socket served by a thread of the test.
//!
//! Nothing here needs privileges or a namespace. The fake server speaks the API's protocol
//! (read one request to EOF, write one reply, close) with canned reports, so these tests check
//! what the binary prints and how it exits: help, usage errors, a missing socket, an error
//! reply, and the JSON and text output of a report.

mod bin_run;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bin_run::{Outcome, run_bin};
use serde_json::{Value, json};
use tapsplice::stats::report::{
    DirectionReport, FlowReport, FlowTotals, ForwardTotals, PcapReport, StatsReport, TapReport,
};

/// How long any invocation here may take; they all answer at once.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs tapsplice with `args` in `cwd`; it must end within [`DEADLINE`].
fn run_in(cwd: &Path, args: &[&str]) -> Outcome {
    run_bin(Some(cwd), args, DEADLINE)
}

fn run(args: &[&str]) -> Outcome {
    run_in(&std::env::temp_dir(), args)
}

fn socket_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "tapsplice-inspect-cli-{}-{n}.sock",
        std::process::id()
    ))
}

/// An API socket answering requests with `replies` in order, recording what it was asked.
struct FakeApi {
    path: PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl FakeApi {
    fn start(replies: Vec<String>) -> FakeApi {
        let path = socket_path();
        let listener = UnixListener::bind(&path).expect("bind the fake API socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        thread::spawn(move || {
            for reply in replies {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let mut raw = String::new();
                let _ = stream.read_to_string(&mut raw);
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_str(&raw).unwrap_or(Value::String(raw)));
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        FakeApi { path, requests }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("UTF-8 temporary directory")
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn canned_stats() -> StatsReport {
    StatsReport {
        version: "0.1.0".into(),
        uptime_ms: 61_000,
        tap: TapReport {
            frames_in: 10,
            bytes_in: 1500,
            frames_out: 8,
            bytes_out: 900,
        },
        drops: [("no_flow".to_string(), 2), ("malformed".to_string(), 0)]
            .into_iter()
            .collect(),
        flows: FlowTotals {
            tcp: [("established".to_string(), 1)].into_iter().collect(),
            udp: 1,
            tcp_opened: 3,
            bytes_to_host: 2048,
            bytes_to_guest: 4096,
            ..FlowTotals::default()
        },
        forwards: ForwardTotals {
            count: 1,
            accepted: 3,
            via_stack: 3,
            ..ForwardTotals::default()
        },
        api_requests: 7,
        pcap: None,
        metrics_addr: None,
    }
}

#[test]
fn help_of_a_subcommand_exits_0() {
    let out = run(&["stats", "--help"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("--api-socket <PATH>"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("--watch [<SECS>]"),
        "{}",
        out.describe()
    );
    assert!(out.stderr.is_empty(), "{}", out.describe());
}

#[test]
fn a_bad_flag_is_one_line_and_exit_1() {
    let out = run(&["stats", "--api-socket", "/nonexistent", "--bogus"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(
        out.stderr,
        "tapsplice: unexpected argument '--bogus' found (see 'tapsplice stats --help')\n",
        "{}",
        out.describe()
    );
    let out = run(&["flows"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    assert!(
        out.stderr.contains("--api-socket <PATH>"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_missing_socket_is_named_with_its_error() {
    let path = socket_path();
    let path = path.to_str().unwrap();
    let out = run(&["stats", "--api-socket", path]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(
        out.stderr,
        format!("tapsplice: {path}: No such file or directory\n"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

#[test]
fn an_error_reply_prints_its_desc_and_exits_1() {
    let api = FakeApi::start(vec![
        r#"{"error":{"desc":"bad request: unknown execute"}}"#.into(),
    ]);
    let out = run(&["forwards", "-a", api.path()]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(
        out.stderr,
        format!(
            "tapsplice: {}: list_forwards: bad request: unknown execute\n",
            api.path()
        ),
        "{}",
        out.describe()
    );
}

#[test]
fn stats_json_prints_the_report_as_sent() {
    let report = canned_stats();
    let api = FakeApi::start(vec![json!({"return": report}).to_string()]);
    let out = run(&["stats", "--api-socket", api.path(), "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.describe());
    let printed: Value = serde_json::from_str(&out.stdout).expect("valid JSON");
    assert_eq!(printed, serde_json::to_value(&report).unwrap());
    let parsed: StatsReport = serde_json::from_value(printed).unwrap();
    assert_eq!(parsed, report);
    assert_eq!(api.requests(), vec![json!({"execute": "get_stats"})]);
}

#[test]
fn stats_text_is_readable() {
    let api = FakeApi::start(vec![json!({"return": canned_stats()}).to_string()]);
    let out = run(&["stats", "--api-socket", api.path()]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("\nuptime           1m01s\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("\ndrops            no_flow 2\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("2.0 KiB to host, 4.0 KiB to guest"),
        "{}",
        out.stdout
    );
}

#[test]
fn flows_prints_a_row_per_flow() {
    let flow = FlowReport {
        proto: "tcp".into(),
        direction: "inbound".into(),
        forward_id: Some(4),
        path: "stack".into(),
        guest: "10.0.2.100:80".into(),
        remote: "10.0.2.2:40000".into(),
        state: "established".into(),
        age_ms: 1500,
        to_host: DirectionReport {
            bytes: 100,
            ..DirectionReport::default()
        },
        ..FlowReport::default()
    };
    let api = FakeApi::start(vec![json!({"return": {"flows": [flow]}}).to_string()]);
    let out = run(&["flows", "--api-socket", api.path()]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[1].starts_with("PROTO"), "{}", out.stdout);
    assert!(
        lines[2].starts_with("tcp    stack  in#4  10.0.2.100:80  10.0.2.2:40000  established"),
        "{}",
        out.stdout
    );
}

#[test]
fn pcap_start_sends_an_absolute_path() {
    let pcap = PcapReport {
        path: "/somewhere/cap.pcap".into(),
        active: true,
        snaplen: 128,
        max_bytes: 1 << 20,
        ..PcapReport::default()
    };
    let api = FakeApi::start(vec![json!({"return": pcap}).to_string()]);
    let cwd = std::env::temp_dir().canonicalize().unwrap();
    let out = run_in(
        &cwd,
        &[
            "pcap",
            "start",
            "--api-socket",
            api.path(),
            "cap.pcap",
            "--snaplen",
            "128",
            "--max-bytes",
            "1M",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("state    capturing\n"),
        "{}",
        out.stdout
    );
    let expected = cwd.join("cap.pcap");
    assert_eq!(
        api.requests(),
        vec![json!({"execute": "start_pcap", "arguments":
            {"path": expected.to_str().unwrap(), "snaplen": 128, "max_bytes": 1048576}})]
    );
}
