//! Running the binary under test: `tapsplice run` (captured or in the background),
//! slirp4netns mode on a namespace, and `tapsplice run` as the unprivileged test user.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// `tapsplice run OPTS... -- ARGV...` run to completion within `deadline`, captured.
pub fn tapsplice_run_capture(
    bin: &Path,
    opts: &[&str],
    argv: &[String],
    stdin: Option<Vec<u8>>,
    deadline: Duration,
) -> Captured {
    let mut cmd = Command::new(bin);
    cmd.arg("run").args(opts).arg("--").args(argv);
    let what = format!(
        "tapsplice run {} -- {}",
        opts.join(" "),
        argv.iter()
            .take(3)
            .map(|a| a.lines().next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
    );
    run_capture(&what, &mut cmd, stdin, deadline)
}

/// `tapsplice run OPTS... -- ARGV...` in the background, for tests that act on the host while
/// CMD runs: stdout goes to a file that can be read at any time, stderr to the child's log.
pub struct BackgroundRun {
    child: Child,
    stdout: PathBuf,
    _dir: TempDir,
}

impl BackgroundRun {
    pub fn start(bin: &Path, opts: &[&str], argv: &[String]) -> BackgroundRun {
        let dir = TempDir::new("tsbg");
        let stdout = dir.join("stdout");
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(opts)
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(
                fs::File::create(&stdout)
                    .unwrap_or_else(|e| panic!("create {}: {e}", stdout.display())),
            );
        let child = Child::spawn_logged("tapsplice run (background)", &mut cmd, dir.join("stderr"));
        BackgroundRun {
            child,
            stdout,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// CMD's stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout).unwrap_or_default()).into_owned()
    }

    /// tapsplice's (and CMD's) stderr so far.
    pub fn stderr(&self) -> String {
        self.child.log()
    }

    /// Waits for a complete stdout line for which `pred` holds and returns it; panics after
    /// `deadline` (or when the run ends first) with what was awaited and the output so far.
    pub fn wait_line(
        &mut self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let out = self.stdout();
            // Only complete lines: a line being written may not be whole yet.
            let complete = match out.rfind('\n') {
                Some(i) => &out[..i],
                None => "",
            };
            if let Some(l) = complete.lines().find(|l| pred(l)) {
                return l.to_string();
            }
            if let Some(status) = self.child.try_status() {
                panic!(
                    "tapsplice run ended ({}) before {what}; stdout:\n{}\nstderr:\n{}",
                    describe_status(status),
                    self.stdout(),
                    self.stderr()
                );
            }
            if start.elapsed() >= deadline {
                panic!(
                    "timed out after {deadline:?} waiting for {what}; stdout:\n{out}\nstderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the run to end (at most `deadline`); returns its status and stdout.
    pub fn finish(&mut self, deadline: Duration) -> (ExitStatus, String) {
        let status = self.child.wait_deadline(deadline);
        (status, self.stdout())
    }
}

/// `tapsplice` in slirp4netns mode on a namespace made by `ip netns add`, with any options
/// (no implicit `-c`, so a test can leave the interface unconfigured). Started through `sh` so
/// that fd 3 is the ready pipe (`-r 3` is always passed) and fd 4 the read end of a pipe whose
/// write end the fixture holds (for `-e 4`); its output goes to a log. Killed on drop.
pub struct SlirpProcess {
    exit_w: Option<std::process::ChildStdin>,
    pub child: Child,
    _logs: TempDir,
}

impl SlirpProcess {
    /// Starts `BIN -r 3 ARGS... --netns-type=path /run/netns/NAME tap0` and waits for "1" on
    /// the ready fd (panicking with the log if it does not come).
    pub fn start(bin: &Path, ns: &NetnsFixture, args: &[&str]) -> SlirpProcess {
        let logs = TempDir::new("tsslirp");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"exec 3>&1 4<&0 1>&2 0</dev/null; exec "$@""#)
            .arg("sh")
            .arg(bin)
            .args(["-r", "3"])
            .args(args)
            .args(["--netns-type=path", &ns.path(), "tap0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = Child::spawn_logged(
            &format!("tapsplice {}", args.join(" ")),
            &mut cmd,
            logs.join("slirp.log"),
        );
        let exit_w = child.inner().stdin.take();
        let ready_r = child.inner().stdout.take().expect("stdout pipe");
        let ready =
            read_some_deadline("\"1\" on the ready fd", ready_r, 1, Duration::from_secs(15));
        if ready != b"1" {
            let status = child.wait_deadline(Duration::from_secs(5));
            panic!(
                "ready fd gave {:?} instead of \"1\" (args {args:?}); process {}; log:\n{}",
                String::from_utf8_lossy(&ready),
                describe_status(status),
                child.log()
            );
        }
        SlirpProcess {
            exit_w,
            child,
            _logs: logs,
        }
    }

    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Waits (at most `deadline`) for the process to exit; panics (with the log) unless it exits
    /// with `code`. `when` says what led to the exit.
    pub fn assert_exits_with(&mut self, code: i32, deadline: Duration, when: &str) {
        let status = self.child.wait_deadline(deadline);
        assert_eq!(
            status.code(),
            Some(code),
            "{when}: {}\n{}",
            describe_status(status),
            self.child.log()
        );
    }

    /// Closes the write end of the pipe on fd 4 (what `-e 4` watches).
    pub fn close_exit_fd(&mut self) {
        drop(self.exit_w.take());
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.child.try_status() {
            panic!(
                "tapsplice exited ({}) while the test still needed it; log:\n{}",
                describe_status(s),
                self.child.log()
            );
        }
    }
}

impl Drop for SlirpProcess {
    fn drop(&mut self) {
        drop(self.exit_w.take());
    }
}

/// The unprivileged test user ([`TEST_USER`], made by `scripts/test.sh`) with a copy of the
/// binary under test in a temp dir it owns (as `DIR/bin/NAME`), for running the binary without
/// root: `tapsplice run` itself, or rootlesskit driving it.
pub struct RootlessUser {
    pub user: nix::unistd::User,
    /// The copy of the binary.
    pub bin: PathBuf,
    dir: TempDir,
    /// `DIR/run`, the user's `XDG_RUNTIME_DIR` once made by [`RootlessUser::with_runtime_dir`].
    runtime_dir: Option<PathBuf>,
}

impl RootlessUser {
    /// For `tapsplice run` as the user: [`RootlessUser::prepare`], and the binary must have the
    /// run mode.
    pub fn new() -> Option<RootlessUser> {
        let u = RootlessUser::prepare(&[])?;
        require_run_mode(&u.bin).then_some(u)
    }

    /// Checks the prerequisites (root, `setpriv` and `tools`, the user, a `/dev/net/tun` it can
    /// open; skip, or fail under CI) and prepares the copy.
    pub fn prepare(tools: &[&str]) -> Option<RootlessUser> {
        use std::os::unix::fs::PermissionsExt;
        if !require_root_or_skip() || !require_tools(&["setpriv"]) || !require_tools(tools) {
            return None;
        }
        let Some(user) = nix::unistd::User::from_name(TEST_USER).expect("getpwnam") else {
            skip_or_fail(&format!(
                "user {TEST_USER} does not exist (scripts/test.sh creates it)"
            ));
            return None;
        };
        let tun_mode = fs::metadata("/dev/net/tun")
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if tun_mode & 0o006 != 0o006 {
            skip_or_fail(&format!(
                "/dev/net/tun is mode {:o}, not usable by {TEST_USER} (scripts/test.sh sets 0666)",
                tun_mode & 0o777
            ));
            return None;
        }
        let src = tapsplice_bin()?;
        let dir = TempDir::new("tsrootless");
        let bin_dir = dir.join("bin");
        fs::create_dir(&bin_dir).expect("mkdir bin");
        let bin = bin_dir.join(src.file_name().expect("binary file name"));
        fs::copy(&src, &bin)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), bin.display()));
        for p in [dir.path(), &bin_dir, &bin] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown temp dir");
        Some(RootlessUser {
            user,
            bin,
            dir,
            runtime_dir: None,
        })
    }

    /// Makes `DIR/run` (mode 0700, the user's) and passes it as `XDG_RUNTIME_DIR` from now on.
    pub fn with_runtime_dir(mut self) -> RootlessUser {
        use std::os::unix::fs::PermissionsExt;
        let run = self.dir.join("run");
        fs::create_dir(&run).expect("mkdir run");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).expect("chmod run");
        nix::unistd::chown(&run, Some(self.user.uid), Some(self.user.gid)).expect("chown run");
        self.runtime_dir = Some(run);
        self
    }

    /// A directory the user owns.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program` run by `setpriv` as the test user, with a clean environment.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env("HOME", &self.user.dir)
            .env("USER", TEST_USER)
            .env("LOGNAME", TEST_USER)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir(self.dir.path());
        if let Some(run) = &self.runtime_dir {
            cmd.env("XDG_RUNTIME_DIR", run);
        }
        cmd
    }

    /// `tapsplice run OPTS... -- ARGV...` (the copy) as the test user, captured.
    pub fn tapsplice_run(&self, opts: &[&str], argv: &[String], deadline: Duration) -> Captured {
        let mut cmd = self.command(&self.bin);
        cmd.arg("run").args(opts).arg("--").args(argv);
        run_capture(
            &format!("tapsplice run {} as {TEST_USER}", opts.join(" ")),
            &mut cmd,
            None,
            deadline,
        )
    }
}
