//! Running the tapsplice binary once, with a deadline: its exit code, stdout and stderr
//! (`tests/cli_contract.rs`, `tests/inspect_cli.rs`).

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tapsplice");

pub struct Outcome {
    /// `None` when the process was ended by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs tapsplice with `args` (in `cwd` if given), no stdin, and a clean `RUST_LOG` so that
/// logging does not leak into stderr. The run must end within `deadline`; if not, it is
/// killed and the test fails.
pub fn run_bin(cwd: Option<&Path>, args: &[&str], deadline: Duration) -> Outcome {
    let mut cmd = Command::new(BIN);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tapsplice");
    let stdout = drain(child.stdout.take().expect("stdout pipe"));
    let stderr = drain(child.stderr.take().expect("stderr pipe"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for tapsplice") {
            Some(status) => break status,
            None if started.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tapsplice {args:?} still ran after {deadline:?}; killed it");
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    // A leftover helper process could hold the pipes open; do not wait for it forever.
    let collect = |rx: mpsc::Receiver<Vec<u8>>, name: &str| {
        let bytes = rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| panic!("tapsplice {args:?} exited but its {name} stayed open"));
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("{name} is not UTF-8: {e}"))
    };
    Outcome {
        code: status.code(),
        stdout: collect(stdout, "stdout"),
        stderr: collect(stderr, "stderr"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}
