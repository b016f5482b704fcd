//! Child processes and the small things around them: unique names, temp dirs, waits with
//! deadlines, captured runs, and children whose stdout lines are read as they come.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process.
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `{prefix}-{pid}-{counter}`: unique across parallel tests and test processes.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), next_id())
}

/// A directory removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(prefix));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Polls `f` (every 20 ms) until it returns true; panics after `deadline` naming `what`.
pub fn wait_for(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    wait_for_value(deadline, what, || f().then_some(()))
}

/// Polls `f` (every 20 ms) until it returns `Some`; panics after `deadline` naming `what`.
pub fn wait_for_value<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (with its process group) and reaped on drop, by the PID it started as.
/// It is the leader of a new process group, so helpers it forks (a shell's children, rootlesskit's
/// slirp4netns) die with it.
pub struct Child {
    what: String,
    inner: std::process::Child,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
}

impl Child {
    /// Spawns `cmd` in a new process group. `what` names it in messages.
    pub fn spawn(what: &str, cmd: &mut Command) -> Child {
        cmd.process_group(0);
        let inner = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
        Child {
            what: what.to_string(),
            inner,
            status: None,
            log: None,
        }
    }

    /// Like [`Child::spawn`], with stderr going to `log` (shown by [`Child::log`] and on panic).
    pub fn spawn_logged(what: &str, cmd: &mut Command, log: PathBuf) -> Child {
        let f = fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        cmd.stderr(f);
        let mut c = Child::spawn(what, cmd);
        c.log = Some(log);
        c
    }

    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    pub fn inner(&mut self) -> &mut std::process::Child {
        &mut self.inner
    }

    /// The stderr log so far (empty when not logged).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if it has exited (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .inner
                .try_wait()
                .unwrap_or_else(|e| panic!("wait {}: {e}", self.what));
        }
        self.status
    }

    /// Waits for the exit, at most `deadline`; panics (killing it) when it does not exit.
    pub fn wait_deadline(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            if start.elapsed() >= deadline {
                let log = self.log();
                panic!(
                    "{} (pid {}) did not exit within {deadline:?}; stderr:\n{log}",
                    self.what,
                    self.pid()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the process (by its PID) while it has not been reaped.
    pub fn signal(&mut self, sig: Signal) {
        if self.try_status().is_none() {
            kill(Pid::from_raw(self.pid() as i32), sig)
                .unwrap_or_else(|e| panic!("kill -{sig} {} (pid {}): {e}", self.what, self.pid()));
        }
    }

    /// Number of open file descriptors (`/proc/PID/fd`).
    pub fn fd_count(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {dir}: {e}"))
            .count()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Not reaped yet, so the PID (and the group it leads) is still ours.
            let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
            let _ = self.inner.kill();
            let _ = self.inner.wait();
        }
        if thread::panicking() {
            let log = self.log();
            if !log.is_empty() {
                eprintln!(
                    "--- stderr of {} (pid {}):\n{log}--- end",
                    self.what,
                    self.pid()
                );
            }
        }
    }
}

/// What a finished command left.
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Captured {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics unless the command exited 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed: {}\nstdout:\n{}\nstderr:\n{}",
            describe_status(self.status),
            self.stdout_str(),
            self.stderr
        );
    }
}

/// "exit N" or "signal N".
pub fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// Runs `cmd` to completion within `deadline`, feeding it `stdin` (if any) and capturing stdout
/// and stderr. Panics (after killing it) when it overruns.
pub fn run_capture(
    what: &str,
    cmd: &mut Command,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
) -> Captured {
    let start = Instant::now();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Child::spawn(what, cmd);
    if let Some(data) = stdin {
        let mut w = child.inner.stdin.take().expect("stdin pipe");
        // A child that exits without reading makes this fail with EPIPE: not our concern here.
        thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let out_rx = read_all_in_thread(child.inner.stdout.take().expect("stdout pipe"));
    let err_rx = read_all_in_thread(child.inner.stderr.take().expect("stderr pipe"));
    let status = {
        let s = Instant::now();
        loop {
            if let Some(st) = child.try_status() {
                break st;
            }
            if s.elapsed() >= deadline {
                drop(child);
                let err = err_rx
                    .recv_timeout(Duration::from_secs(2))
                    .unwrap_or_default();
                panic!(
                    "{what} did not finish within {deadline:?}; stderr:\n{}",
                    String::from_utf8_lossy(&err)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    // A grandchild that kept the pipes open must not hang us: bounded by the same deadline.
    let grace = deadline
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(2));
    let stdout = out_rx.recv_timeout(grace).unwrap_or_else(|_| {
        panic!("{what}: stdout still open after exit (a leftover process holds it)")
    });
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    Captured {
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

fn read_all_in_thread(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

/// Reads from `r` in a thread until it has `want` bytes or EOF, at most `deadline`.
/// Returns what was read; panics on timeout naming `what`.
pub fn read_some_deadline(
    what: &str,
    mut r: impl Read + Send + 'static,
    want: usize,
    deadline: Duration,
) -> Vec<u8> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut v = Vec::new();
        let mut buf = [0u8; 256];
        while v.len() < want {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => v.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(v);
    });
    rx.recv_timeout(deadline)
        .unwrap_or_else(|_| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// Runs a short command (e.g. `ip ...`) with a 30 s deadline; panics unless it succeeds.
pub fn sh_ok(prog: &str, args: &[&str]) -> Captured {
    let what = format!("{prog} {}", args.join(" "));
    let c = run_capture(
        &what,
        Command::new(prog).args(args),
        None,
        Duration::from_secs(30),
    );
    c.assert_success(&what);
    c
}

/// Runs a short command with a 30 s deadline; true when it exits 0 (output discarded).
pub fn sh_status(prog: &str, args: &[&str]) -> bool {
    let what = format!("{prog} {}", args.join(" "));
    run_capture(
        &what,
        Command::new(prog).args(args),
        None,
        Duration::from_secs(30),
    )
    .status
    .success()
}

/// A child (e.g. a [`PY_NET`] server) whose stdout lines are collected as they come; stderr
/// goes to a log shown on panic. Killed (by its PID) and reaped on drop.
pub struct LineChild {
    child: Child,
    rx: mpsc::Receiver<String>,
    lines: Vec<String>,
    _dir: TempDir,
}

impl LineChild {
    pub fn spawn(what: &str, cmd: &mut Command) -> LineChild {
        let dir = TempDir::new("tsline");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = Child::spawn_logged(what, cmd, dir.join("stderr"));
        let stdout = child.inner().stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineChild {
            child,
            rx,
            lines: Vec::new(),
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Every JSON line printed so far (without waiting).
    pub fn json_lines(&mut self) -> Vec<Json> {
        while let Ok(l) = self.rx.try_recv() {
            self.lines.push(l);
        }
        Json::all_in(&self.lines.join("\n"))
    }

    /// Waits until at least `n` of the JSON lines printed so far satisfy `pred`; returns all of
    /// those. Panics after `deadline` (or when the child ends first) naming `what`.
    pub fn wait_json_n(
        &mut self,
        what: &str,
        n: usize,
        deadline: Duration,
        pred: impl Fn(&Json) -> bool,
    ) -> Vec<Json> {
        let start = Instant::now();
        loop {
            let found: Vec<Json> = self.json_lines().into_iter().filter(&pred).collect();
            if found.len() >= n {
                return found;
            }
            let left = deadline.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(l) => self.lines.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => panic!(
                    "timed out after {deadline:?} waiting for {what} from {}; stdout so far:\n{}\nstderr:\n{}",
                    self.child.what,
                    self.lines.join("\n"),
                    self.child.log()
                ),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait_deadline(Duration::from_secs(5));
                    panic!(
                        "{} ended ({}) before {what}; stdout:\n{}\nstderr:\n{}",
                        self.child.what,
                        describe_status(status),
                        self.lines.join("\n"),
                        self.child.log()
                    );
                }
            }
        }
    }

    /// The first JSON line satisfying `pred` (waiting at most `deadline`).
    pub fn wait_json(
        &mut self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&Json) -> bool,
    ) -> Json {
        self.wait_json_n(what, 1, deadline, pred).remove(0)
    }

    /// Waits (at most `deadline`) for the child to exit; panics unless it exited 0.
    pub fn assert_exits_ok(&mut self, deadline: Duration) {
        let status = self.child.wait_deadline(deadline);
        assert!(
            status.success(),
            "{}: {}\nstderr:\n{}",
            self.child.what,
            describe_status(status),
            self.child.log()
        );
    }

    /// The port a [`PY_NET`] server printed first.
    pub fn wait_port(&mut self, deadline: Duration) -> u16 {
        let j = self.wait_json("its port", deadline, |j| j.has("port"));
        u16::try_from(j.u64("port")).expect("port fits u16")
    }
}
