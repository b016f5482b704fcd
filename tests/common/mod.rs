//! Fixtures shared by the namespace and real-client tests.
//!
//! Everything a test makes (namespaces, veth pairs, child processes, temp dirs, servers) is owned
//! by a guard that removes it in `Drop`, so a failed assertion still cleans up. Names carry the
//! process id and a counter, so tests run in parallel. Servers bind port 0. Every wait has a
//! deadline and says what it waited for. Traffic goes only to loopback and to namespaces made here.
//!
//! Data checks use one deterministic byte stream, generated identically in Rust and in the Python
//! helper that runs inside namespaces (see [`PY_HELPER`]): block `k` of a stream with seed `s` is
//! the 1 MiB pattern block of `s` with its first 8 bytes replaced by `k` (little endian); the
//! pattern block is `sha256("tapsplice:{s}:{i}")` for `i` in `0..32768`, concatenated. A stream of
//! length `n` is the first `n` bytes of blocks `0, 1, 2, ...`.

#![allow(dead_code)]

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use sha2::{Digest as _, Sha256};

/// Debian's interpreter: the same for root, `ip netns exec` and the unprivileged test user
/// (a developer's pyenv shim on PATH would not be).
pub const PYTHON: &str = "/usr/bin/python3";
/// The unprivileged user `scripts/test.sh` creates for rootless tests.
pub const TEST_USER: &str = "tapsplice-test";
/// Gateway of the default CIDR 10.0.2.0/24: the host's 127.0.0.1 as seen from the guest.
pub const GATEWAY: &str = "10.0.2.2";
/// Size of one pattern block.
pub const BLOCK: usize = 1 << 20;
pub const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// CI rule: missing tool or privilege is a failure under CI=true, a loud skip elsewhere.

/// True when running under CI (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Under CI, fails the test; elsewhere prints why it is skipped (past the test harness's output
/// capture, so it shows even when the test passes) and returns false.
pub fn skip_or_fail(reason: &str) -> bool {
    if in_ci() {
        panic!("CI=true and this test cannot run: {reason}");
    }
    let _ = writeln!(io::stderr(), "SKIP {}: {reason}", current_test());
    false
}

fn current_test() -> String {
    thread::current().name().unwrap_or("?").to_string()
}

/// True when running as root; otherwise skip (or fail under CI).
pub fn require_root_or_skip() -> bool {
    nix::unistd::geteuid().is_root() || skip_or_fail("needs root (namespaces, TAP devices)")
}

/// Full path of an executable found on PATH or in the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain([
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True when `name` is installed; otherwise skip (or fail under CI).
pub fn require_tool(name: &str) -> bool {
    find_tool(name).is_some()
        || skip_or_fail(&format!(
            "`{name}` is not installed (scripts/install-deps.sh installs it)"
        ))
}

/// All of [`require_tool`] for each name.
pub fn require_tools(names: &[&str]) -> bool {
    names.iter().all(|n| require_tool(n))
}

/// The binary under test: `$TAPSPLICE_BIN` if set (e.g. `/usr/bin/slirp4netns` to validate the
/// slirp4netns-compatible tests against the real thing), else cargo's build of `tapsplice`.
pub fn tapsplice_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TAPSPLICE_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            is_executable(&p),
            "TAPSPLICE_BIN={} is not an executable file",
            p.display()
        );
        return Some(p);
    }
    match option_env!("CARGO_BIN_EXE_tapsplice") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            skip_or_fail(
                "the crate has no `tapsplice` binary target yet and TAPSPLICE_BIN is unset",
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names, temp dirs, waits.

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

// ---------------------------------------------------------------------------------------------
// Child processes.

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

// ---------------------------------------------------------------------------------------------
// Network namespaces.

/// A network namespace made by `ip netns add`, deleted on drop.
pub struct NetnsFixture {
    name: String,
}

impl NetnsFixture {
    pub fn new() -> NetnsFixture {
        let name = unique_name("tsns");
        sh_ok("ip", &["netns", "add", &name]);
        let ns = NetnsFixture { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `--netns-type=path`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> Captured {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        sh_ok("ip", &a)
    }

    /// True when the namespace has a link called `ifname`.
    pub fn has_link(&self, ifname: &str) -> bool {
        sh_status("ip", &["-n", &self.name, "link", "show", "dev", ifname])
    }

    /// A command that runs `prog args...` inside the namespace (`ip netns exec`, which execs, so
    /// the PID is the program's).
    pub fn exec(&self, prog: &str, args: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]).args(args);
        c
    }
}

impl Default for NetnsFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetnsFixture {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A "remote" host: a namespace of its own reached from the host netns over a veth pair in
/// 10.201.X.Y/30 (never overlapping 10.0.2.0/24). The host end is deleted on drop, then the
/// namespace. Drop any process running in it before this.
pub struct VethPeer {
    host_if: String,
    /// Address of the host end.
    pub host_ip: Ipv4Addr,
    /// Address of the peer end, inside [`VethPeer::ns`].
    pub peer_ip: Ipv4Addr,
    pub ns: NetnsFixture,
}

impl VethPeer {
    pub fn new() -> VethPeer {
        let ns = NetnsFixture::new();
        let n = next_id();
        let tag = format!("{:x}{:x}", std::process::id(), n);
        let host_if = format!("tsh{tag}");
        let peer_if = format!("tsp{tag}");
        assert!(host_if.len() <= 15, "interface name {host_if} too long");
        let used = sh_ok("ip", &["-4", "-o", "addr", "show"]).stdout_str();
        let (host_ip, peer_ip) = (0..64u32)
            .map(|attempt| {
                let idx = (std::process::id().wrapping_mul(64) + n * 7 + attempt * 131) % 16384;
                let (a, b) = ((idx / 64) as u8, ((idx % 64) * 4) as u8);
                (
                    Ipv4Addr::new(10, 201, a, b + 1),
                    Ipv4Addr::new(10, 201, a, b + 2),
                )
            })
            .find(|(h, p)| !used.contains(&format!(" {h}/")) && !used.contains(&format!(" {p}/")))
            .expect("no free 10.201.x.y/30 subnet among 64 candidates");
        sh_ok(
            "ip",
            &[
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
                "netns",
                ns.name(),
            ],
        );
        // From here on, Drop removes the link.
        let peer = VethPeer {
            host_if,
            host_ip,
            peer_ip,
            ns,
        };
        sh_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &peer.host_if,
            ],
        );
        sh_ok("ip", &["link", "set", &peer.host_if, "up"]);
        peer.ns
            .ip(&["addr", "add", &format!("{peer_ip}/30"), "dev", &peer_if]);
        peer.ns.ip(&["link", "set", &peer_if, "up"]);
        peer
    }

    pub fn host_if(&self) -> &str {
        &self.host_if
    }
}

impl Default for VethPeer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for VethPeer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic data and digests.

/// Length and SHA-256 (lowercase hex) of a byte stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub sha: String,
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes sha256 {}", self.len, self.sha)
    }
}

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest {
            len: data.len() as u64,
            sha: hex(&Sha256::digest(data)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A running length + SHA-256.
#[derive(Default)]
pub struct Hasher {
    len: u64,
    sha: Sha256,
}

impl Hasher {
    pub fn update(&mut self, b: &[u8]) {
        self.len += b.len() as u64;
        self.sha.update(b);
    }

    pub fn finish(self) -> Digest {
        Digest {
            len: self.len,
            sha: hex(&self.sha.finalize()),
        }
    }
}

/// The 1 MiB pattern block of `seed` (see the module doc).
pub fn pattern_block(seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK);
    for i in 0..BLOCK / 32 {
        v.extend_from_slice(&Sha256::digest(format!("tapsplice:{seed}:{i}").as_bytes()));
    }
    v
}

/// Calls `f` with consecutive chunks (at most 1 MiB) of the stream of `seed`, `len` bytes in all.
pub fn for_each_chunk(
    seed: u64,
    len: u64,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut block = pattern_block(seed);
    let mut left = len;
    let mut k: u64 = 0;
    while left > 0 {
        block[..8].copy_from_slice(&k.to_le_bytes());
        let n = left.min(BLOCK as u64) as usize;
        f(&block[..n])?;
        left -= n as u64;
        k += 1;
    }
    Ok(())
}

/// The whole stream of `seed`, `len` bytes (for small streams).
pub fn pattern_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize);
    for_each_chunk(seed, len, |c| {
        v.extend_from_slice(c);
        Ok(())
    })
    .expect("in-memory");
    v
}

/// Length + SHA-256 of the stream of `seed`, `len` bytes.
pub fn pattern_digest(seed: u64, len: u64) -> Digest {
    let mut h = Hasher::default();
    for_each_chunk(seed, len, |c| {
        h.update(c);
        Ok(())
    })
    .expect("in-memory");
    h.finish()
}

/// Digest of the stream of `seed`, `len` bytes repeated `times` times back to back (what the
/// many-connections client sends or receives in all).
pub fn pattern_digest_repeated(seed: u64, len: u64, times: u64) -> Digest {
    let one = pattern_bytes(seed, len);
    let mut h = Hasher::default();
    for _ in 0..times {
        h.update(&one);
    }
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// Host TCP test server.

/// What the test server saw on one connection.
#[derive(Clone, Debug)]
pub struct ConnRecord {
    /// Everything the client sent up to its EOF.
    pub received: Digest,
    /// What the server wrote back.
    pub sent: Digest,
    /// An I/O error that cut the exchange short.
    pub error: Option<String>,
}

/// A TCP server on 127.0.0.1:0: for each connection it reads to EOF (hashing and counting), then
/// writes the pattern stream (`reply_seed`, `reply_len` bytes) and closes. Stopped on drop.
pub struct TestServer {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<ConnRecord>>>,
    accepted: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Per-operation I/O timeout on server sockets, so a stuck test cannot hang a server thread.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(120);

impl TestServer {
    pub fn start(reply_seed: u64, reply_len: u64) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let records = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let block = Arc::new(pattern_block(reply_seed));
        let thread = {
            let (records, accepted, stop) = (records.clone(), accepted.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (records, block) = (records.clone(), block.clone());
                    thread::spawn(move || {
                        let rec = serve_conn(conn, &block, reply_len);
                        records.lock().unwrap().push(rec);
                    });
                }
            })
        };
        TestServer {
            addr,
            records,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Records of finished connections, in the order they finished.
    pub fn records(&self) -> Vec<ConnRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until `n` connections have finished; returns their records.
    pub fn wait_records(&self, n: usize, deadline: Duration) -> Vec<ConnRecord> {
        wait_for_value(
            deadline,
            &format!("{n} finished connections at the test server"),
            || {
                let r = self.records();
                (r.len() >= n).then_some(r)
            },
        )
    }
}

fn serve_conn(mut conn: TcpStream, block: &[u8], reply_len: u64) -> ConnRecord {
    let _ = conn.set_read_timeout(Some(SERVER_IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(SERVER_IO_TIMEOUT));
    let mut rx = Hasher::default();
    let mut tx = Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    let result = (|| -> io::Result<()> {
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            rx.update(&buf[..n]);
        }
        let mut chunk = block.to_vec();
        let mut left = reply_len;
        let mut k: u64 = 0;
        while left > 0 {
            chunk[..8].copy_from_slice(&k.to_le_bytes());
            let n = left.min(BLOCK as u64) as usize;
            conn.write_all(&chunk[..n])?;
            tx.update(&chunk[..n]);
            left -= n as u64;
            k += 1;
        }
        conn.shutdown(std::net::Shutdown::Write)
    })();
    ConnRecord {
        received: rx.finish(),
        sent: tx.finish(),
        error: result.err().map(|e| e.to_string()),
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port on 127.0.0.1 with nothing listening: bound, read, released.
pub fn refused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

// ---------------------------------------------------------------------------------------------
// Host HTTP server.

/// One HTTP request as the server saw it.
#[derive(Clone, Debug)]
pub struct HttpRecord {
    pub request_line: String,
    /// The request body (`Content-Length` bytes), empty for GET.
    pub body: Digest,
    /// What the server sent as the response body.
    pub sent: Digest,
}

/// A minimal HTTP/1.1 server on 127.0.0.1:0 answering every request with `200` and a fixed
/// body (`Connection: close`), recording the request body's digest. Stopped on drop.
pub struct HttpServer {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<HttpRecord>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(body: Vec<u8>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let body = Arc::new(body);
        let thread = {
            let (records, stop) = (records.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (records, body) = (records.clone(), body.clone());
                    thread::spawn(move || {
                        if let Ok(rec) = serve_http(conn, &body) {
                            records.lock().unwrap().push(rec);
                        }
                    });
                }
            })
        };
        HttpServer {
            addr,
            records,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn records(&self) -> Vec<HttpRecord> {
        self.records.lock().unwrap().clone()
    }
}

fn serve_http(mut conn: TcpStream, body: &[u8]) -> io::Result<HttpRecord> {
    conn.set_read_timeout(Some(SERVER_IO_TIMEOUT))?;
    conn.set_write_timeout(Some(SERVER_IO_TIMEOUT))?;
    // Headers: at most 64 KiB.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("headers too long"));
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("EOF in headers"));
        }
        head.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&head[..header_end]).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    let header = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let content_length: u64 = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // curl asks first for bodies over 1 MiB; answering saves its 1 s wait.
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut rx = Hasher::default();
    let already = &head[header_end..];
    let first = already.len().min(content_length as usize);
    rx.update(&already[..first]);
    let mut left = content_length - first as u64;
    let mut big = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = left.min(big.len() as u64) as usize;
        let n = conn.read(&mut big[..want])?;
        if n == 0 {
            return Err(io::Error::other("EOF in body"));
        }
        rx.update(&big[..n]);
        left -= n as u64;
    }
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(header.as_bytes())?;
    conn.write_all(body)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    Ok(HttpRecord {
        request_line,
        body: rx.finish(),
        sent: Digest::of(body),
    })
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Python helper that runs inside namespaces.

/// Run as `python3 -c PY_HELPER MODE ARGS...`; prints one JSON object per line.
///
/// - `client HOST PORT SEND_LEN SEED [CONNECT_TIMEOUT]`: connect, send the stream, shut down the
///   write side, read to EOF. Prints `{"ok":true,"sent_len","sent_sha","recv_len","recv_sha",
///   "connect_ms","elapsed_ms"}` or `{"ok":false,"stage":"connect"|"data","errno","error",
///   "elapsed_ms"}` (errno -1 for a timeout).
/// - `many HOST PORT COUNT SEND_LEN SEED`: COUNT sequential connections doing the same; prints
///   totals with the digests of everything sent and received back to back, plus `"conns"`.
/// - `server BIND_IP REPLY_LEN REPLY_SEED`: listen on port 0, print `{"port":P}`, serve one
///   connection like the host test server, print `{"ok":true,"recv_len","recv_sha","sent_len",
///   "sent_sha"}`.
pub const PY_HELPER: &str = r#"
import hashlib, json, socket, sys, time

BLOCK = 1 << 20
IO_TIMEOUT = 120.0
_blocks = {}

def block(seed):
    b = _blocks.get(seed)
    if b is None:
        b = bytearray(b"".join(hashlib.sha256(b"tapsplice:%d:%d" % (seed, i)).digest()
                               for i in range(BLOCK // 32)))
        _blocks[seed] = b
    return b

def send_stream(sock, seed, n, h):
    blk = block(seed)
    mv = memoryview(blk)
    sent = 0
    k = 0
    while sent < n:
        blk[0:8] = k.to_bytes(8, "little")
        m = min(BLOCK, n - sent)
        sock.sendall(mv[:m])
        h.update(mv[:m])
        sent += m
        k += 1
    return sent

def recv_stream(sock, h):
    buf = bytearray(256 * 1024)
    mv = memoryview(buf)
    total = 0
    while True:
        r = sock.recv_into(buf)
        if r == 0:
            return total
        h.update(mv[:r])
        total += r

def out(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()

def ms(t0):
    return int((time.monotonic() - t0) * 1000)

def fail(stage, e, t0, **extra):
    d = {"ok": False, "stage": stage, "errno": e.errno if getattr(e, "errno", None) is not None else -1,
         "error": str(e) or type(e).__name__, "elapsed_ms": ms(t0)}
    d.update(extra)
    out(d)

def connect(host, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    s.settimeout(IO_TIMEOUT)
    return s

def exchange(s, seed, n, hs, hr):
    sent = send_stream(s, seed, n, hs)
    s.shutdown(socket.SHUT_WR)
    recvd = recv_stream(s, hr)
    s.close()
    return sent, recvd

def client(host, port, n, seed, timeout=30.0):
    t0 = time.monotonic()
    try:
        s = connect(host, int(port), float(timeout))
    except OSError as e:
        return fail("connect", e, t0)
    cms = ms(t0)
    hs, hr = hashlib.sha256(), hashlib.sha256()
    try:
        sent, recvd = exchange(s, int(seed), int(n), hs, hr)
    except OSError as e:
        return fail("data", e, t0)
    out({"ok": True, "sent_len": sent, "sent_sha": hs.hexdigest(), "recv_len": recvd,
         "recv_sha": hr.hexdigest(), "connect_ms": cms, "elapsed_ms": ms(t0)})

def many(host, port, count, n, seed):
    t0 = time.monotonic()
    hs, hr = hashlib.sha256(), hashlib.sha256()
    tsent = trecv = 0
    for i in range(int(count)):
        stage = "connect"
        try:
            s = connect(host, int(port), 10.0)
            stage = "data"
            sent, recvd = exchange(s, int(seed), int(n), hs, hr)
        except OSError as e:
            return fail(stage, e, t0, conn=i)
        tsent += sent
        trecv += recvd
    out({"ok": True, "conns": int(count), "sent_len": tsent, "sent_sha": hs.hexdigest(),
         "recv_len": trecv, "recv_sha": hr.hexdigest(), "elapsed_ms": ms(t0)})

def server(bind_ip, n, seed):
    t0 = time.monotonic()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((bind_ip, 0))
    ls.listen(1)
    out({"port": ls.getsockname()[1]})
    ls.settimeout(IO_TIMEOUT)
    try:
        c, _ = ls.accept()
        c.settimeout(IO_TIMEOUT)
        hr, hs = hashlib.sha256(), hashlib.sha256()
        recvd = recv_stream(c, hr)
        sent = send_stream(c, int(seed), int(n), hs)
        c.shutdown(socket.SHUT_WR)
        c.close()
    except OSError as e:
        return fail("server", e, t0)
    out({"ok": True, "recv_len": recvd, "recv_sha": hr.hexdigest(), "sent_len": sent,
         "sent_sha": hs.hexdigest(), "elapsed_ms": ms(t0)})

{"client": client, "many": many, "server": server}[sys.argv[1]](*sys.argv[2:])
"#;

/// `["-c", PY_HELPER, mode, args...]`: the arguments after [`PYTHON`].
pub fn py_args(mode: &str, args: &[String]) -> Vec<String> {
    let mut v = vec!["-c".to_string(), PY_HELPER.to_string(), mode.to_string()];
    v.extend(args.iter().cloned());
    v
}

/// Arguments of `python3` for one client exchange.
pub fn py_client(
    host: &str,
    port: u16,
    send_len: u64,
    seed: u64,
    connect_timeout_s: u32,
) -> Vec<String> {
    py_args(
        "client",
        &[
            host.into(),
            port.to_string(),
            send_len.to_string(),
            seed.to_string(),
            connect_timeout_s.to_string(),
        ],
    )
}

/// Arguments of `python3` for `count` sequential exchanges.
pub fn py_many(host: &str, port: u16, count: u32, send_len: u64, seed: u64) -> Vec<String> {
    py_args(
        "many",
        &[
            host.into(),
            port.to_string(),
            count.to_string(),
            send_len.to_string(),
            seed.to_string(),
        ],
    )
}

/// Arguments of `python3` for a one-connection server.
pub fn py_server(bind_ip: &str, reply_len: u64, reply_seed: u64) -> Vec<String> {
    py_args(
        "server",
        &[
            bind_ip.into(),
            reply_len.to_string(),
            reply_seed.to_string(),
        ],
    )
}

/// The python helper with `PYTHON` as argv\[0\]: `[PYTHON, "-c", ...]`.
pub fn with_python(args: Vec<String>) -> Vec<String> {
    let mut v = vec![PYTHON.to_string()];
    v.extend(args);
    v
}

// ---------------------------------------------------------------------------------------------
// Reports.

/// A JSON object printed by a helper (one line of its output).
#[derive(Debug, Clone)]
pub struct Json(serde_json::Value);

impl Json {
    /// Parses one JSON object. Panics with the input on malformed text.
    pub fn parse(s: &str) -> Json {
        let value: serde_json::Value =
            serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"));
        assert!(value.is_object(), "not a JSON object: {s}");
        Json(value)
    }

    /// The last line of `out` that starts with `{`, parsed.
    pub fn last_in(out: &str) -> Json {
        let line = out
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON line in output:\n{out}"));
        Json::parse(line.trim())
    }

    fn field(&self, k: &str) -> &serde_json::Value {
        self.0
            .get(k)
            .unwrap_or_else(|| panic!("no {k:?} in {self:?}"))
    }

    pub fn str(&self, k: &str) -> &str {
        self.field(k)
            .as_str()
            .unwrap_or_else(|| panic!("{k:?} not a string in {self:?}"))
    }

    pub fn i64(&self, k: &str) -> i64 {
        self.field(k)
            .as_i64()
            .unwrap_or_else(|| panic!("{k:?} not an integer in {self:?}"))
    }

    pub fn u64(&self, k: &str) -> u64 {
        self.field(k)
            .as_u64()
            .unwrap_or_else(|| panic!("{k:?} not an unsigned integer in {self:?}"))
    }

    pub fn ok(&self) -> bool {
        self.0.get("ok").and_then(serde_json::Value::as_bool) == Some(true)
    }

    /// `(sent, received)` digests of a successful exchange; panics with the report otherwise.
    pub fn digests(&self) -> (Digest, Digest) {
        assert!(self.ok(), "exchange failed: {self:?}");
        (
            Digest {
                len: self.u64("sent_len"),
                sha: self.str("sent_sha").to_string(),
            },
            Digest {
                len: self.u64("recv_len"),
                sha: self.str("recv_sha").to_string(),
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Additions for the UDP, DNS, DHCP and ping tests.

/// DNS address of the default CIDR (N+3).
pub const DNS_ADDR: &str = "10.0.2.3";
/// The guest address that `-c` and `tapsplice run` configure (N+100).
pub const GUEST_ADDR: &str = "10.0.2.100";

/// `[PYTHON, "-c", script, args...]`.
pub fn python_script(script: &str, args: &[String]) -> Vec<String> {
    let mut v = vec![PYTHON.to_string(), "-c".to_string(), script.to_string()];
    v.extend(args.iter().cloned());
    v
}

/// `["/bin/sh", "-c", script, "sh", args...]`: a shell script with positional arguments.
pub fn sh_script(script: &str, args: &[String]) -> Vec<String> {
    let mut v = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        script.to_string(),
        "sh".to_string(),
    ];
    v.extend(args.iter().cloned());
    v
}

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

/// An address in 127.77.0.0/16 for this test alone (from the process id and a counter) on which
/// UDP and TCP port 53 are free: a resolver started there cannot collide with another test's,
/// and a resolv.conf can name it (resolv.conf has no port).
pub fn unique_loopback_addr() -> Ipv4Addr {
    for attempt in 0..512u32 {
        let n = std::process::id()
            .wrapping_mul(97)
            .wrapping_add(next_id().wrapping_mul(131))
            .wrapping_add(attempt.wrapping_mul(7919))
            % (250 * 254);
        let addr = Ipv4Addr::new(127, 77, (n / 254 + 1) as u8, (n % 254 + 1) as u8);
        let udp = std::net::UdpSocket::bind((addr, 53));
        let tcp = TcpListener::bind((addr, 53));
        if udp.is_ok() && tcp.is_ok() {
            return addr;
        }
    }
    panic!("no 127.77.x.y with UDP and TCP port 53 free among 512 candidates");
}

/// A port free for both UDP and TCP on `addr` (bound, read, released).
pub fn free_udp_tcp_port(addr: Ipv4Addr) -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind((addr, 0)).expect("bind udp port 0");
        let port = udp.local_addr().expect("local_addr").port();
        if TcpListener::bind((addr, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {addr}");
}

/// What a DNS server answered to one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsReply {
    pub rcode: u8,
    pub a: Vec<Ipv4Addr>,
}

/// One DNS query for the A record of `name` over UDP from the host to `server`, waiting at most
/// `timeout`; None when nothing (or garbage) came back. For readiness checks of test resolvers.
pub fn dns_query_a(server: SocketAddr, name: &str, timeout: Duration) -> Option<DnsReply> {
    let sock = std::net::UdpSocket::bind(match server {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })
    .ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let id = (std::process::id() as u16) ^ (next_id() as u16).rotate_left(7);
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server).ok()?;
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        if from == server && n >= 12 && buf[..2] == id.to_be_bytes() {
            return parse_dns_a(&buf[..n]);
        }
        if start.elapsed() >= timeout {
            return None;
        }
    }
}

fn parse_dns_a(m: &[u8]) -> Option<DnsReply> {
    fn skip_name(m: &[u8], mut p: usize) -> Option<usize> {
        loop {
            let l = *m.get(p)? as usize;
            if l == 0 {
                return Some(p + 1);
            }
            if l & 0xc0 == 0xc0 {
                return Some(p + 2);
            }
            p += 1 + l;
        }
    }
    let rcode = m[3] & 0x0f;
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut p = 12;
    for _ in 0..qd {
        p = skip_name(m, p)? + 4;
    }
    let mut a = Vec::new();
    for _ in 0..an {
        p = skip_name(m, p)?;
        let h = m.get(p..p + 10)?;
        let (ty, len) = (
            u16::from_be_bytes([h[0], h[1]]),
            u16::from_be_bytes([h[8], h[9]]) as usize,
        );
        let rd = m.get(p + 10..p + 10 + len)?;
        if ty == 1 && len == 4 {
            a.push(Ipv4Addr::new(rd[0], rd[1], rd[2], rd[3]));
        }
        p += 10 + len;
    }
    Some(DnsReply { rcode, a })
}

/// A dnsmasq resolver for one test: answers only from its own records (`--local=/tapsplice.test/`
/// plus the records the test gives, e.g. `--host-record=a.tapsplice.test,192.0.2.7`), forwards
/// nothing, reads no host file, logs every query to a file in its temp dir. It listens on one
/// address and port (`--bind-interfaces`), on the host or inside a test namespace. Started in the
/// foreground by its PID and killed on drop.
pub struct Dnsmasq {
    pub addr: Ipv4Addr,
    pub port: u16,
    child: Child,
    dir: TempDir,
}

impl Dnsmasq {
    /// On a fresh 127.77.x.y, port 53 (so a resolv.conf can name it).
    pub fn on_loopback(records: &[String]) -> Dnsmasq {
        Dnsmasq::start(None, unique_loopback_addr(), 53, records)
    }

    /// On `addr:port`, inside `ns` when given. Returns once it answers a query.
    pub fn start(
        ns: Option<&NetnsFixture>,
        addr: Ipv4Addr,
        port: u16,
        records: &[String],
    ) -> Dnsmasq {
        let dnsmasq = find_tool("dnsmasq")
            .expect("dnsmasq not installed (check require_tool(\"dnsmasq\") first)");
        let dir = TempDir::new("tsdnsmasq");
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-poll".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={addr}"),
            format!("--port={port}"),
            format!("--pid-file={}", dir.join("pid").display()),
            "--log-queries".into(),
            format!("--log-facility={}", dir.join("queries.log").display()),
            "--cache-size=0".into(),
            "--local=/tapsplice.test/".into(),
        ];
        args.extend(records.iter().cloned());
        let mut cmd = match ns {
            Some(ns) => ns.exec(&dnsmasq.to_string_lossy(), &args),
            None => {
                let mut c = Command::new(&dnsmasq);
                c.args(&args);
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let mut child = Child::spawn_logged(
            &format!("dnsmasq on {addr}:{port}"),
            &mut cmd,
            dir.join("stderr"),
        );
        let server = SocketAddr::from((addr, port));
        wait_for(
            Duration::from_secs(15),
            &format!("dnsmasq to answer on {server}"),
            || {
                if let Some(s) = child.try_status() {
                    panic!(
                        "dnsmasq on {server} exited ({}); stderr:\n{}",
                        describe_status(s),
                        child.log()
                    );
                }
                dns_query_a(
                    server,
                    "ready-probe.tapsplice.test",
                    Duration::from_millis(200),
                )
                .is_some()
            },
        );
        Dnsmasq {
            addr,
            port,
            child,
            dir,
        }
    }

    /// The query log so far.
    pub fn query_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("queries.log")).unwrap_or_default())
            .into_owned()
    }

    /// How many queries (any type, UDP or TCP) for exactly `name` it has logged.
    pub fn queries_for(&self, name: &str) -> usize {
        let needle = format!(" {name} from ");
        self.query_log()
            .lines()
            .filter(|l| l.contains("query[") && l.contains(&needle))
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// A file written with `contents`, for `--resolv-conf`; lives in `dir`.
pub fn write_resolv_conf(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

/// The lines of `/proc/self/mountinfo` that mention `resolv.conf` (to check that nothing leaks
/// into the test's own mount namespace).
pub fn resolv_conf_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("resolv.conf"))
        .map(String::from)
        .collect()
}

impl Json {
    /// The whole object.
    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }

    /// True when the object has key `k`.
    pub fn has(&self, k: &str) -> bool {
        self.0.get(k).is_some()
    }

    /// An array of strings.
    pub fn strs(&self, k: &str) -> Vec<String> {
        self.field(k)
            .as_array()
            .unwrap_or_else(|| panic!("{k:?} not an array in {self:?}"))
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{k:?} has a non-string in {self:?}"))
                    .to_string()
            })
            .collect()
    }

    /// Every line of `out` that is a JSON object, parsed.
    pub fn all_in(out: &str) -> Vec<Json> {
        out.lines()
            .map(str::trim)
            .filter(|l| l.starts_with('{'))
            .map(Json::parse)
            .collect()
    }
}

/// The unprivileged test user ([`TEST_USER`], made by `scripts/test.sh`) with a copy of the
/// binary under test in a temp dir it can read, for `tapsplice run` without root.
pub struct RootlessUser {
    pub user: nix::unistd::User,
    /// The copy of the binary.
    pub bin: PathBuf,
    dir: TempDir,
}

impl RootlessUser {
    /// Checks the prerequisites (skip, or fail under CI) and prepares the copy.
    pub fn new() -> Option<RootlessUser> {
        use std::os::unix::fs::PermissionsExt;
        if !require_root_or_skip() || !require_tools(&["setpriv"]) {
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
        if !src.ends_with("tapsplice") {
            skip_or_fail("TAPSPLICE_BIN is not tapsplice: no run mode to test");
            return None;
        }
        let dir = TempDir::new("tsrootless");
        let bin = dir.join("tapsplice");
        fs::copy(&src, &bin)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), bin.display()));
        for (p, mode) in [(dir.path(), 0o755), (bin.as_path(), 0o755)] {
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown temp dir");
        Some(RootlessUser { user, bin, dir })
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

/// A sysctl (a file under /proc/sys of the test's own network namespace) set for the life of
/// the guard and restored on drop.
pub struct SysctlGuard {
    path: PathBuf,
    old: String,
}

impl SysctlGuard {
    pub fn set(path: &str, value: &str) -> SysctlGuard {
        let path = PathBuf::from(path);
        let old = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
        fs::write(&path, value).unwrap_or_else(|e| panic!("write {value:?} to {path:?}: {e}"));
        SysctlGuard { path, old }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, self.old.trim());
    }
}

// ---------------------------------------------------------------------------------------------
// Additions for the IPv6 (`-6`) and `--outbound-addr` tests.

/// The IPv6 gateway (`-6`): the host's ::1 as seen from the guest.
pub const GATEWAY6: &str = "fd00::2";
/// The IPv6 DNS address (`-6`).
pub const DNS6: &str = "fd00::3";

/// The family-agnostic helper run inside namespaces (and on the host): `python3 -c PY_NET MODE
/// ARGS...`. Every line it prints is a JSON object with `"mode"`. Addresses are IPv6 when they
/// contain `:`. TCP streams are the pattern streams of the module doc; UDP payloads are
/// `sha256("tapsplice-udp:{seed}:{i}")` repeated, as in the UDP tests.
///
/// - `tcp_client HOST PORT SEND_LEN SEED TIMEOUT`: connect, send the stream, shut down the write
///   side, read to EOF: `{"ok":true,"local","sent_len","sent_sha","recv_len","recv_sha",
///   "connect_ms"}` or `{"ok":false,"stage":"connect"|"data","errno","error","elapsed_ms"}`.
/// - `tcp_server BIND_IP REPLY_LEN REPLY_SEED COUNT`: prints `{"port"}`, then serves COUNT
///   connections one after the other (read to EOF, send the reply stream, close), printing for
///   each `{"ok":true,"peer","recv_len","recv_sha","sent_len","sent_sha"}`: `peer` is the
///   client's source address.
/// - `udp_server BIND_IP IDLE`: prints `{"port"}`, echoes every datagram and prints
///   `{"from","from_port","len","sha"}` for each, until IDLE seconds pass without one.
/// - `udp_echo HOST PORT SEED SIZES TIMEOUT`: one socket sends datagram `i` of each size (comma
///   list) and waits for its byte-identical echo from HOST:PORT: `{"ok":true,"count","local",
///   "sent_len","sent_sha","recv_len","recv_sha"}` or `{"ok":false,"stage",...}`.
/// - `udp_error HOST PORT TIMEOUT [RECVERR]`: a connected socket sends one datagram and reads:
///   `{"result":"error","errno",...}`, `{"result":"timeout"}` or `{"result":"data"}`. With
///   RECVERR `1` it sets IP_RECVERR / IPV6_RECVERR (the kernel reports "soft" ICMP errors such as
///   net unreachable only then) and adds the ICMP error's `ee_origin`, `ee_type`, `ee_code`.
/// - `icmp_watch 4|6 IDLE`: a raw ICMP (ICMPv6) socket; prints `{"ready":true}`, then
///   `{"from","id","seq"}` for every echo request that arrives, until IDLE seconds of silence.
pub const PY_NET: &str = r#"
import hashlib, json, socket, struct, sys, time

BLOCK = 1 << 20
IO_TIMEOUT = 60.0
_blocks = {}
MODE = sys.argv[1]

def out(o):
    o = dict(o, mode=MODE)
    sys.stdout.write(json.dumps(o, separators=(",", ":")) + "\n")
    sys.stdout.flush()

def ms(t0):
    return int((time.monotonic() - t0) * 1000)

def fam(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def err(e):
    n = getattr(e, "errno", None)
    return {"errno": n if n is not None else -1, "error": str(e) or type(e).__name__}

def block(seed):
    b = _blocks.get(seed)
    if b is None:
        b = bytearray(b"".join(hashlib.sha256(b"tapsplice:%d:%d" % (seed, i)).digest()
                               for i in range(BLOCK // 32)))
        _blocks[seed] = b
    return b

def send_stream(sock, seed, n, h):
    blk = block(seed)
    mv = memoryview(blk)
    sent = k = 0
    while sent < n:
        blk[0:8] = k.to_bytes(8, "little")
        m = min(BLOCK, n - sent)
        sock.sendall(mv[:m])
        h.update(mv[:m])
        sent += m
        k += 1
    return sent

def recv_stream(sock, h):
    buf = bytearray(256 * 1024)
    mv = memoryview(buf)
    total = 0
    while True:
        r = sock.recv_into(buf)
        if r == 0:
            return total
        h.update(mv[:r])
        total += r

def payload(seed, i, size):
    h = hashlib.sha256(b"tapsplice-udp:%d:%d" % (int(seed), int(i))).digest()
    return (h * (size // 32 + 1))[:size]

def same_addr(a, b, f):
    return socket.inet_pton(f, a) == socket.inet_pton(f, b)

def tcp_client(host, port, n, seed, timeout):
    t0 = time.monotonic()
    s = socket.socket(fam(host), socket.SOCK_STREAM)
    s.settimeout(float(timeout))
    try:
        s.connect((host, int(port)))
    except OSError as e:
        return out(dict(ok=False, stage="connect", elapsed_ms=ms(t0), **err(e)))
    cms = ms(t0)
    s.settimeout(IO_TIMEOUT)
    local = s.getsockname()[0]
    hs, hr = hashlib.sha256(), hashlib.sha256()
    try:
        sent = send_stream(s, int(seed), int(n), hs)
        s.shutdown(socket.SHUT_WR)
        recvd = recv_stream(s, hr)
        s.close()
    except OSError as e:
        return out(dict(ok=False, stage="data", elapsed_ms=ms(t0), **err(e)))
    out({"ok": True, "local": local, "sent_len": sent, "sent_sha": hs.hexdigest(),
         "recv_len": recvd, "recv_sha": hr.hexdigest(), "connect_ms": cms, "elapsed_ms": ms(t0)})

def tcp_server(bind_ip, n, seed, count):
    ls = socket.socket(fam(bind_ip), socket.SOCK_STREAM)
    ls.bind((bind_ip, 0))
    ls.listen(16)
    out({"port": ls.getsockname()[1]})
    ls.settimeout(IO_TIMEOUT)
    for _ in range(int(count)):
        t0 = time.monotonic()
        try:
            c, peer = ls.accept()
            c.settimeout(IO_TIMEOUT)
            hr, hs = hashlib.sha256(), hashlib.sha256()
            recvd = recv_stream(c, hr)
            sent = send_stream(c, int(seed), int(n), hs)
            c.shutdown(socket.SHUT_WR)
            c.close()
        except OSError as e:
            out(dict(ok=False, stage="serve", elapsed_ms=ms(t0), **err(e)))
            continue
        out({"ok": True, "peer": peer[0], "peer_port": peer[1], "recv_len": recvd,
             "recv_sha": hr.hexdigest(), "sent_len": sent, "sent_sha": hs.hexdigest(),
             "elapsed_ms": ms(t0)})

def udp_server(bind_ip, idle):
    s = socket.socket(fam(bind_ip), socket.SOCK_DGRAM)
    s.bind((bind_ip, 0))
    out({"port": s.getsockname()[1]})
    s.settimeout(float(idle))
    while True:
        try:
            data, frm = s.recvfrom(1 << 17)
        except socket.timeout:
            return out({"idle": True})
        s.sendto(data, frm)
        out({"from": frm[0], "from_port": frm[1], "len": len(data),
             "sha": hashlib.sha256(data).hexdigest()})

def udp_echo(host, port, seed, sizes, timeout):
    f = fam(host)
    dest = (host, int(port))
    s = socket.socket(f, socket.SOCK_DGRAM)
    s.settimeout(float(timeout))
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sl = rl = n = 0
    t0 = time.monotonic()
    for i, size in enumerate(int(x) for x in sizes.split(",")):
        p = payload(seed, i, size)
        try:
            s.sendto(p, dest)
        except OSError as e:
            return out(dict(ok=False, stage="send", index=i, size=size, **err(e)))
        hs.update(p); sl += len(p)
        try:
            data, frm = s.recvfrom(1 << 17)
        except OSError as e:
            return out(dict(ok=False, stage="recv", index=i, size=size, **err(e)))
        hr.update(data); rl += len(data); n += 1
        if frm[1] != dest[1] or not same_addr(frm[0], host, f) or data != p:
            return out({"ok": False, "stage": "check", "index": i, "size": size, "from": frm[0],
                        "from_port": frm[1], "got_len": len(data), "equal": data == p})
    out({"ok": True, "count": n, "local": s.getsockname()[0], "sent_len": sl,
         "sent_sha": hs.hexdigest(), "recv_len": rl, "recv_sha": hr.hexdigest(),
         "elapsed_ms": ms(t0)})

def udp_error(host, port, timeout, recverr="0"):
    f = fam(host)
    s = socket.socket(f, socket.SOCK_DGRAM)
    level, opt = (socket.IPPROTO_IPV6, 25) if f == socket.AF_INET6 else (socket.IPPROTO_IP, 11)
    if recverr == "1":
        s.setsockopt(level, opt, 1)  # IPV6_RECVERR / IP_RECVERR
    s.connect((host, int(port)))
    s.settimeout(float(timeout))
    t0 = time.monotonic()
    try:
        s.send(b"tapsplice-error-probe")
        data = s.recv(2048)
        return out({"result": "data", "len": len(data), "elapsed_ms": ms(t0)})
    except socket.timeout:
        return out({"result": "timeout", "elapsed_ms": ms(t0)})
    except OSError as e:
        r = dict(result="error", elapsed_ms=ms(t0), **err(e))
    if recverr == "1":
        try:
            _, anc, _, _ = s.recvmsg(2048, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            for lvl, typ, data in anc:
                if lvl == level and typ == opt and len(data) >= 16:
                    ee_errno, origin, etype, code, _, _, _ = struct.unpack("=IBBBBII", data[:16])
                    r.update({"ee_errno": ee_errno, "ee_origin": origin, "ee_type": etype,
                              "ee_code": code})
        except OSError as e:
            r["errqueue_error"] = str(e)
    out(r)

def icmp_watch(family, idle):
    if family == "6":
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    out({"ready": True})
    s.settimeout(float(idle))
    while True:
        try:
            data, frm = s.recvfrom(65536)
        except socket.timeout:
            return out({"idle": True})
        if family == "6":
            if len(data) >= 8 and data[0] == 128:
                ident, seq = struct.unpack("!HH", data[4:8])
                out({"from": frm[0], "id": ident, "seq": seq})
        else:
            ihl = (data[0] & 15) * 4
            if len(data) >= ihl + 8 and data[ihl] == 8:
                ident, seq = struct.unpack("!HH", data[ihl + 4:ihl + 8])
                out({"from": socket.inet_ntoa(data[12:16]), "id": ident, "seq": seq})

{"tcp_client": tcp_client, "tcp_server": tcp_server, "udp_server": udp_server,
 "udp_echo": udp_echo, "udp_error": udp_error, "icmp_watch": icmp_watch}[MODE](*sys.argv[2:])
"#;

/// `["-c", PY_NET, mode, args...]`: the arguments after [`PYTHON`] (for [`NetnsFixture::exec`]).
pub fn py_net_args(mode: &str, args: &[String]) -> Vec<String> {
    let mut v = vec!["-c".to_string(), PY_NET.to_string(), mode.to_string()];
    v.extend(args.iter().cloned());
    v
}

/// `[PYTHON, "-c", PY_NET, mode, args...]`: a whole argv.
pub fn py_net(mode: &str, args: &[String]) -> Vec<String> {
    with_python(py_net_args(mode, args))
}

/// Shell functions for guest scripts (see [`guest_sh`]): `py MODE ARGS...` runs [`PY_NET`];
/// `wait_slaac` waits (15 s deadline) until tap0 has a global fd00:: address that is no longer
/// tentative and a default route via fe80::2, then prints `{"mode":"slaac","addr":...}`; on
/// timeout it says what it waited for (with the addresses and routes) and exits 97.
pub const GUEST_SH_PRELUDE: &str = r#"PY=$1; NET=$2; shift 2
py() { "$PY" -c "$NET" "$@"; }
wait_slaac() {
  end=$(( $(date +%s) + 15 ))
  while :; do
    a=$(ip -6 -o addr show dev tap0 scope global 2>/dev/null | grep ' inet6 fd00::' | grep -v tentative | head -n 1)
    r=$(ip -6 route show default 2>/dev/null | grep 'via fe80::2 dev tap0')
    if [ -n "$a" ] && [ -n "$r" ]; then
      echo "{\"mode\":\"slaac\",\"addr\":\"$(echo "$a" | awk '{print $4}')\"}"
      return 0
    fi
    if [ "$(date +%s)" -ge "$end" ]; then
      echo "timed out after 15 s waiting for SLAAC: a non-tentative fd00::/64 address on tap0 and a default route via fe80::2" >&2
      ip -6 addr show >&2
      ip -6 route show >&2
      exit 97
    fi
    sleep 0.05
  done
}
"#;

/// `["/bin/sh", "-c", PRELUDE + body, "sh", PYTHON, PY_NET, args...]`: a guest script with
/// [`GUEST_SH_PRELUDE`]'s `py` and `wait_slaac`; `args` are `$1...` inside `body`.
pub fn guest_sh(body: &str, args: &[String]) -> Vec<String> {
    let mut v = vec![PYTHON.to_string(), PY_NET.to_string()];
    v.extend(args.iter().cloned());
    sh_script(&format!("{GUEST_SH_PRELUDE}{body}"), &v)
}

/// The JSON line of `out` whose `"mode"` is `mode`; panics (with the output) unless exactly one.
pub fn json_of_mode(out: &str, mode: &str) -> Json {
    let mut found: Vec<Json> = Json::all_in(out)
        .into_iter()
        .filter(|j| j.value().get("mode").and_then(serde_json::Value::as_str) == Some(mode))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {mode:?} report in the output:\n{out}"
    );
    found.remove(0)
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

    /// The port a [`PY_NET`] server printed first.
    pub fn wait_port(&mut self, deadline: Duration) -> u16 {
        let j = self.wait_json("its port", deadline, |j| j.has("port"));
        u16::try_from(j.u64("port")).expect("port fits u16")
    }
}

/// A [`PY_NET`] server (`tcp_server`, `udp_server`, `icmp_watch`) inside `ns`, or on the host
/// when `ns` is None.
pub fn py_net_child(
    what: &str,
    ns: Option<&NetnsFixture>,
    mode: &str,
    args: &[String],
) -> LineChild {
    let mut cmd = match ns {
        Some(ns) => ns.exec(PYTHON, &py_net_args(mode, args)),
        None => {
            let mut c = Command::new(PYTHON);
            c.args(py_net_args(mode, args));
            c
        }
    };
    LineChild::spawn(what, &mut cmd)
}

/// A "remote" host for IPv4 and IPv6: a namespace of its own reached from the host netns over a
/// veth pair. The pair gets a /24 in 10.202.0.0/16 and a /64 in fd42::/16 chosen per test (and
/// not in use on the host): the peer end has `.2` and `::2`, the host end one address for each
/// of the host parts given (in that order: the first is the interface's first address). IPv6
/// duplicate address detection is off on both ends, so no address is ever tentative. The host
/// end (and with it the peer end) is deleted on drop, then the namespace.
pub struct DualStackPeer {
    host_if: String,
    pub peer_if: String,
    /// The host end's IPv4 addresses, in the order they were added.
    pub host4: Vec<Ipv4Addr>,
    pub peer4: Ipv4Addr,
    /// The host end's global IPv6 addresses, in the order they were added.
    pub host6: Vec<std::net::Ipv6Addr>,
    pub peer6: std::net::Ipv6Addr,
    /// `10.202.X.0/24`.
    pub prefix4: String,
    /// `fd42:X:Y::/64`.
    pub prefix6: String,
    pub ns: NetnsFixture,
}

impl DualStackPeer {
    /// `host4` and `host6` are the last octet / last group of the host end's addresses
    /// (e.g. `&[1, 5]`); neither may contain 2 (the peer).
    pub fn new(host4: &[u8], host6: &[u16]) -> DualStackPeer {
        use std::net::Ipv6Addr;
        assert!(
            !host4.contains(&2) && !host6.contains(&2),
            ".2 / ::2 is the peer"
        );
        let ns = NetnsFixture::new();
        let n = next_id();
        let tag = format!("{:x}{:x}", std::process::id(), n);
        let host_if = format!("tsd{tag}");
        let peer_if = format!("tse{tag}");
        assert!(host_if.len() <= 15, "interface name {host_if} too long");
        let used = format!(
            "{}\n{}",
            sh_ok("ip", &["-o", "addr", "show"]).stdout_str(),
            sh_ok("ip", &["route", "show", "table", "all"]).stdout_str()
        );
        let pid = std::process::id();
        let (a, x, y) = (0..64u32)
            .map(|attempt| {
                let a = ((pid.wrapping_mul(31) + n * 7 + attempt * 53) % 254 + 1) as u8;
                let x = (pid & 0xffff) as u16;
                let y = ((n * 131 + attempt) & 0xffff) as u16;
                (a, x, y)
            })
            .find(|(a, x, y)| {
                !used.contains(&format!("10.202.{a}."))
                    && !used.contains(&format!("fd42:{x:x}:{y:x}:"))
            })
            .expect("no free 10.202.X.0/24 and fd42:X:Y::/64 among 64 candidates");
        let v4 = |last: u8| Ipv4Addr::new(10, 202, a, last);
        let v6 = |last: u16| Ipv6Addr::new(0xfd42, x, y, 0, 0, 0, 0, last);
        sh_ok(
            "ip",
            &[
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
                "netns",
                ns.name(),
            ],
        );
        // From here on, Drop removes the link.
        let peer = DualStackPeer {
            host_if,
            peer_if,
            host4: host4.iter().map(|&l| v4(l)).collect(),
            peer4: v4(2),
            host6: host6.iter().map(|&l| v6(l)).collect(),
            peer6: v6(2),
            prefix4: format!("10.202.{a}.0/24"),
            prefix6: format!("fd42:{x:x}:{y:x}::/64"),
            ns,
        };
        let dad = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", peer.host_if);
        fs::write(&dad, "0").unwrap_or_else(|e| panic!("write 0 to {dad}: {e}"));
        let c = run_capture(
            "accept_dad=0 in the peer namespace",
            &mut peer.ns.exec(
                "/bin/sh",
                &[
                    "-c".into(),
                    "echo 0 >/proc/sys/net/ipv6/conf/$1/accept_dad".into(),
                    "sh".into(),
                    peer.peer_if.clone(),
                ],
            ),
            None,
            Duration::from_secs(30),
        );
        c.assert_success("accept_dad=0 in the peer namespace");
        for addr in &peer.host4 {
            sh_ok(
                "ip",
                &["addr", "add", &format!("{addr}/24"), "dev", &peer.host_if],
            );
        }
        for addr in &peer.host6 {
            sh_ok(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{addr}/64"),
                    "dev",
                    &peer.host_if,
                    "nodad",
                ],
            );
        }
        sh_ok("ip", &["link", "set", &peer.host_if, "up"]);
        peer.ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", peer.peer4),
            "dev",
            &peer.peer_if,
        ]);
        peer.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", peer.peer6),
            "dev",
            &peer.peer_if,
            "nodad",
        ]);
        peer.ns.ip(&["link", "set", &peer.peer_if, "up"]);
        peer
    }

    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    /// The source address the host's routing picks towards `dest` (`ip route get`).
    pub fn host_route_src(dest: std::net::IpAddr) -> std::net::IpAddr {
        let out = sh_ok("ip", &["-o", "route", "get", &dest.to_string()]).stdout_str();
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "src")
            .and_then(|_| words.next())
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no src in `ip route get {dest}`: {out}"))
    }
}

impl Drop for DualStackPeer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl TestServer {
    /// Like [`TestServer::start`], listening on `bind` (port 0 for any), e.g. `[::1]:0`.
    pub fn start_on(bind: SocketAddr, reply_seed: u64, reply_len: u64) -> TestServer {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let records = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let block = Arc::new(pattern_block(reply_seed));
        let thread = {
            let (records, accepted, stop) = (records.clone(), accepted.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (records, block) = (records.clone(), block.clone());
                    thread::spawn(move || {
                        let rec = serve_conn(conn, &block, reply_len);
                        records.lock().unwrap().push(rec);
                    });
                }
            })
        };
        TestServer {
            addr,
            records,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

/// A UDP port on `ip` with nothing bound to it: bound, read, released.
pub fn closed_udp_port(ip: std::net::IpAddr) -> u16 {
    let s = std::net::UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind udp {ip}: {e}"));
    s.local_addr().expect("local_addr").port()
}

/// Checks an iputils ping transcript: one reply from `from` for each icmp_seq 1..=count, each of
/// `bytes` bytes, no duplicates or errors, and the summary line.
pub fn assert_ping_transcript(out: &str, from: &str, count: u32, bytes: u32) {
    for seq in 1..=count {
        let prefix = format!("{bytes} bytes from {from}: icmp_seq={seq} ");
        let n = out.lines().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(
            n, 1,
            "expected one reply line starting {prefix:?}, found {n}:\n{out}"
        );
    }
    let replies = out.lines().filter(|l| l.contains(" bytes from ")).count();
    assert_eq!(replies, count as usize, "reply lines:\n{out}");
    for bad in ["DUP!", "wrong data", "Unreachable", "Time to live exceeded"] {
        assert!(!out.contains(bad), "ping reported {bad:?}:\n{out}");
    }
    assert!(
        out.contains(&format!(
            "{count} packets transmitted, {count} received, 0% packet loss"
        )),
        "ping summary:\n{out}"
    );
}

/// Datagram `i` of `seed`, `size` bytes: `sha256("tapsplice-udp:{seed}:{i}")` repeated (as
/// `payload` in [`PY_NET`]).
pub fn py_net_payload(seed: u64, i: u64, size: usize) -> Vec<u8> {
    let h = Sha256::digest(format!("tapsplice-udp:{seed}:{i}").as_bytes());
    h.iter().copied().cycle().take(size).collect()
}
