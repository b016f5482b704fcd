//! Fixtures for the port-forwarding and API-socket tests (`tests/forward.rs`, `tests/api.rs`),
//! on top of `tests/common`.
//!
//! - [`Instance`]: the binary in slirp4netns mode (`-c -r 3 -a SOCK`) on a namespace of the
//!   test's own, started like rootlesskit starts slirp4netns and awaited on its ready fd; its API
//!   socket must answer at once after ready.
//! - [`GuestProc`]: a process inside a namespace that prints one JSON object per line (the
//!   [`FWD_PY`] helper: TCP server that reports each peer, UDP echo).
//! - [`api_exchange`]: one API request the way rootlesskit sends it (write, half-close, read to
//!   EOF), with a deadline.
//! - [`exchange`]: a host-side TCP client moving the pattern stream both ways.
//! - [`RootlessEnv`]: a copy of the binary runnable by the unprivileged test user.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::{User, chown};

use crate::common::*;

/// How long the binary may take to report ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(15);
/// Anything that should take a moment.
pub const SHORT: Duration = Duration::from_secs(30);
/// Moving 256 MiB each way through a userspace stack on 2 shared cores.
pub const BULK: Duration = Duration::from_secs(300);
/// The guest address with the default CIDR.
pub const GUEST_IP: &str = "10.0.2.100";

/// The binary in slirp4netns mode on a fresh namespace, with an API socket.
pub struct Instance {
    pub child: Child,
    pub api: PathBuf,
    pub ns: NetnsFixture,
    /// Keeps the write end of the exit fd (fd 4 of the child) while the instance should run.
    pub exit_w: Option<std::process::ChildStdin>,
    _dir: TempDir,
}

impl Instance {
    /// Starts `BIN -c -r 3 -a DIR/api.sock EXTRA... --netns-type=path NS tap0`, waits for "1"
    /// on fd 3, and checks that the API socket answers right away.
    pub fn start(bin: &Path, extra: &[&str]) -> Instance {
        let ns = NetnsFixture::new();
        let dir = TempDir::new("tsfwd");
        let api = dir.join("api.sock");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"exec 3>&1 4<&0 1>&2 0</dev/null; exec "$@""#)
            .arg("sh")
            .arg(bin)
            .args(["-c", "-r", "3", "-a"])
            .arg(&api)
            .args(extra)
            .args(["--netns-type=path", &ns.path(), "tap0"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = Child::spawn_logged("tapsplice (forwarding)", &mut cmd, dir.join("log"));
        let exit_w = child.inner().stdin.take();
        let ready_r = child.inner().stdout.take().expect("stdout pipe");
        let ready = read_some_deadline("\"1\" on the ready fd", ready_r, 1, READY_DEADLINE);
        if ready != b"1" {
            let status = child.wait_deadline(Duration::from_secs(5));
            panic!(
                "ready fd gave {:?}; process {}; log:\n{}",
                String::from_utf8_lossy(&ready),
                describe_status(status),
                child.log()
            );
        }
        let inst = Instance {
            child,
            api,
            ns,
            exit_w,
            _dir: dir,
        };
        // Ready means listening: the very first request must be answered.
        let reply = api_exchange(&inst.api, br#"{"execute":"list_hostfwd"}"#);
        assert!(
            String::from_utf8_lossy(&reply).contains("\"entries\":["),
            "first API request after ready: {}",
            String::from_utf8_lossy(&reply)
        );
        inst
    }

    /// One request, its reply as text.
    pub fn request(&self, json: &str) -> String {
        String::from_utf8(api_exchange(&self.api, json.as_bytes())).expect("UTF-8 reply")
    }

    /// Adds a forward and returns its id (panics on an error reply).
    pub fn add(&self, proto: &str, host_addr: &str, host_port: u16, guest_port: u16) -> u64 {
        let reply = self.request(&add_request(proto, host_addr, host_port, guest_port));
        let json = Json::parse(&reply);
        let id = serde_json::from_str::<serde_json::Value>(&reply)
            .ok()
            .and_then(|v| v["return"]["id"].as_u64())
            .unwrap_or_else(|| panic!("add_hostfwd failed: {reply} ({json:?})"));
        assert_eq!(reply, format!("{{\"return\":{{\"id\":{id}}}}}"));
        id
    }

    pub fn remove(&self, id: u64) {
        let reply = self.request(&format!(
            r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#
        ));
        assert_eq!(reply, r#"{"return":{}}"#);
    }

    /// A TCP forward from `host_addr`:(free port) to guest port `guest_port`; the host port.
    pub fn add_tcp(&self, host_addr: &str, guest_port: u16) -> u16 {
        let port = free_port(host_addr);
        self.add("tcp", host_addr, port, guest_port);
        port
    }

    /// Runs `prog args` inside the namespace, printing JSON lines.
    pub fn guest(&self, what: &str, prog: &str, args: &[String]) -> GuestProc {
        GuestProc::spawn(what, self.ns.exec(prog, args))
    }
}

/// `{"execute":"add_hostfwd",...}` with every field.
pub fn add_request(proto: &str, host_addr: &str, host_port: u16, guest_port: u16) -> String {
    format!(
        r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"{host_addr}","host_port":{host_port},"guest_addr":"{GUEST_IP}","guest_port":{guest_port}}}}}"#
    )
}

/// A port with nothing bound on `addr` (TCP and UDP) right now.
pub fn free_port(addr: &str) -> u16 {
    let ip: std::net::IpAddr = addr
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    for _ in 0..64 {
        let l = std::net::TcpListener::bind((ip, 0)).expect("bind port 0");
        let port = l.local_addr().expect("local_addr").port();
        drop(l);
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {addr}");
}

/// One API request as rootlesskit sends it: write, half-close, read to EOF (10 s deadline).
pub fn api_exchange(path: &Path, request: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("connect to the API socket {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write the request");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("read the reply to EOF");
    reply
}

/// A process printing JSON lines, killed on drop.
pub struct GuestProc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl GuestProc {
    pub fn spawn(what: &str, mut cmd: Command) -> GuestProc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let log = std::env::temp_dir().join(unique_name("tsguest"));
        let mut child = Child::spawn_logged(what, &mut cmd, log);
        let stdout = child.inner().stdout.take().expect("stdout pipe");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        GuestProc { child, lines }
    }

    /// The next JSON line, within `deadline`.
    pub fn next(&self, deadline: Duration) -> Json {
        let line = self.lines.recv_timeout(deadline).unwrap_or_else(|_| {
            panic!(
                "no line from {} within {deadline:?}; stderr:\n{}",
                self.child.pid(),
                self.child.log()
            )
        });
        Json::parse(&line)
    }

    /// The first line's `port`.
    pub fn port(&self) -> u16 {
        u16::try_from(self.next(SHORT).u64("port")).expect("port")
    }
}

/// Python helper run inside namespaces (the pattern stream is the one of `tests/common`).
///
/// - `tcp BIND PORT COUNT REPLY_LEN SEED [DELAY_MS]`: listen (PORT 0: any), print `{"port":P}`;
///   serve COUNT connections one after another (0: forever): read to EOF, wait DELAY_MS (a slow
///   server), send REPLY_LEN pattern bytes, close; print `{"ok":true,"peer","peer_port","recv_len","recv_sha","sent_len","sent_sha"}`
///   (or `{"ok":false,"error",...}`) for each.
/// - `udp BIND PORT`: print `{"port":P}`; echo every datagram to its sender until one says
///   `quit`; print `{"peer","len"}` for each.
/// - `send_first BIND PORT LEN SEED`: one connection: send LEN pattern bytes, half-close, read
///   to EOF; print the digests.
/// - `rst BIND PORT`: one connection: read 1000 bytes, then close with `SO_LINGER` 0 (an RST).
/// - `gated BIND PORT FILE`: one connection: print `{"accepted"}`, read nothing until FILE
///   exists, then read to EOF and print the digest.
/// - `ack_then_read BIND PORT`: one connection: read 1000 bytes, send `k`, read to EOF; print
///   `{"ok":true}` or `{"ok":false,"errno"}` (an RST from the client).
/// - `respond BIND PORT COUNT DELAY_MS REPLY`: COUNT connections, each: read once (the
///   request), wait DELAY_MS, send REPLY and half-close, read to EOF; print the digests.
pub const FWD_PY: &str = r#"
import hashlib, json, socket, sys

BLOCK = 1 << 20
_blocks = {}

def block(seed):
    b = _blocks.get(seed)
    if b is None:
        b = bytearray(b"".join(hashlib.sha256(b"tapsplice:%d:%d" % (seed, i)).digest()
                               for i in range(BLOCK // 32)))
        _blocks[seed] = b
    return b

def out(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()

def family(bind):
    return socket.AF_INET6 if ":" in bind else socket.AF_INET

def tcp(bind, port, count, n, seed, delay_ms="0"):
    import time
    count, n, seed, delay = int(count), int(n), int(seed), int(delay_ms) / 1000
    ls = socket.socket(family(bind), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, int(port)))
    ls.listen(128)
    out({"port": ls.getsockname()[1]})
    served = 0
    buf = bytearray(256 * 1024)
    mv = memoryview(buf)
    while count == 0 or served < count:
        c, peer = ls.accept()
        served += 1
        c.settimeout(120)
        hr, hs = hashlib.sha256(), hashlib.sha256()
        recvd = sent = 0
        try:
            while True:
                r = c.recv_into(buf)
                if r == 0:
                    break
                hr.update(mv[:r])
                recvd += r
            time.sleep(delay)
            blk = block(seed)
            bmv = memoryview(blk)
            k = 0
            while sent < n:
                blk[0:8] = k.to_bytes(8, "little")
                m = min(BLOCK, n - sent)
                c.sendall(bmv[:m])
                hs.update(bmv[:m])
                sent += m
                k += 1
            c.shutdown(socket.SHUT_WR)
            c.close()
        except OSError as e:
            out({"ok": False, "error": str(e), "errno": e.errno, "peer": peer[0], "recv_len": recvd})
            c.close()
            continue
        out({"ok": True, "peer": peer[0], "peer_port": peer[1], "recv_len": recvd, "recv_sha": hr.hexdigest(),
             "sent_len": sent, "sent_sha": hs.hexdigest()})

def send_first(bind, port, n, seed):
    n, seed = int(n), int(seed)
    ls = socket.socket(family(bind), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, int(port)))
    ls.listen(8)
    out({"port": ls.getsockname()[1]})
    c, peer = ls.accept()
    c.settimeout(120)
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sent = recvd = 0
    blk = block(seed)
    bmv = memoryview(blk)
    k = 0
    while sent < n:
        blk[0:8] = k.to_bytes(8, "little")
        m = min(BLOCK, n - sent)
        c.sendall(bmv[:m])
        hs.update(bmv[:m])
        sent += m
        k += 1
    c.shutdown(socket.SHUT_WR)
    while True:
        d = c.recv(256 * 1024)
        if not d:
            break
        hr.update(d)
        recvd += len(d)
    c.close()
    out({"ok": True, "peer": peer[0], "recv_len": recvd, "recv_sha": hr.hexdigest(),
         "sent_len": sent, "sent_sha": hs.hexdigest()})

def rst(bind, port):
    import struct
    ls = socket.socket(family(bind), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, int(port)))
    ls.listen(8)
    out({"port": ls.getsockname()[1]})
    c, peer = ls.accept()
    c.settimeout(120)
    got = 0
    while got < 1000:
        d = c.recv(1000 - got)
        if not d:
            break
        got += len(d)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    out({"ok": True, "recv_len": got})

def ack_then_read(bind, port):
    ls = socket.socket(family(bind), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, int(port)))
    ls.listen(8)
    out({"port": ls.getsockname()[1]})
    c, peer = ls.accept()
    c.settimeout(120)
    got = 0
    try:
        while got < 1000:
            d = c.recv(1000 - got)
            if not d:
                break
            got += len(d)
        c.sendall(b"k")
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += len(d)
    except OSError as e:
        out({"ok": False, "errno": e.errno, "error": str(e), "recv_len": got})
        return
    out({"ok": True, "recv_len": got})

def gated(bind, port, gate):
    import os, time
    ls = socket.socket(family(bind), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, int(port)))
    ls.listen(8)
    out({"port": ls.getsockname()[1]})
    c, peer = ls.accept()
    out({"accepted": peer[0]})
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    c.settimeout(120)
    hr = hashlib.sha256()
    got = 0
    while True:
        d = c.recv(256 * 1024)
        if not d:
            break
        hr.update(d)
        got += len(d)
    c.close()
    out({"ok": True, "recv_len": got, "recv_sha": hr.hexdigest(), "sent_len": 0,
         "sent_sha": hashlib.sha256().hexdigest()})

def respond(bind, port, count, delay_ms, reply):
    import time
    ls = socket.socket(family(bind), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, int(port)))
    ls.listen(8)
    out({"port": ls.getsockname()[1]})
    for _ in range(int(count)):
        c, peer = ls.accept()
        c.settimeout(120)
        hr = hashlib.sha256()
        first = c.recv(65536)
        hr.update(first)
        got = len(first)
        time.sleep(int(delay_ms) / 1000)
        c.sendall(reply.encode())
        c.shutdown(socket.SHUT_WR)
        while True:
            d = c.recv(65536)
            if not d:
                break
            hr.update(d)
            got += len(d)
        c.close()
        out({"ok": True, "recv_len": got, "recv_sha": hr.hexdigest(), "sent_len": len(reply),
             "sent_sha": hashlib.sha256(reply.encode()).hexdigest()})

def udp(bind, port):
    s = socket.socket(family(bind), socket.SOCK_DGRAM)
    s.bind((bind, int(port)))
    out({"port": s.getsockname()[1]})
    s.settimeout(120)
    while True:
        data, peer = s.recvfrom(65535)
        if data == b"quit":
            break
        s.sendto(data, peer)
        out({"peer": peer[0], "peer_port": peer[1], "len": len(data)})

{"tcp": tcp, "udp": udp, "send_first": send_first, "rst": rst,
 "ack_then_read": ack_then_read, "gated": gated, "respond": respond}[sys.argv[1]](*sys.argv[2:])
"#;

/// `python3` arguments for a TCP server in the guest.
pub fn py_tcp_server(bind: &str, port: u16, count: u32, reply_len: u64, seed: u64) -> Vec<String> {
    vec![
        "-c".into(),
        FWD_PY.into(),
        "tcp".into(),
        bind.into(),
        port.to_string(),
        count.to_string(),
        reply_len.to_string(),
        seed.to_string(),
    ]
}

/// `python3` arguments for another mode of [`FWD_PY`].
pub fn py_mode(mode: &str, args: &[String]) -> Vec<String> {
    let mut v = vec!["-c".to_string(), FWD_PY.to_string(), mode.to_string()];
    v.extend(args.iter().cloned());
    v
}

/// `python3` arguments for a UDP echo server in the guest.
pub fn py_udp_echo(bind: &str, port: u16) -> Vec<String> {
    vec![
        "-c".into(),
        FWD_PY.into(),
        "udp".into(),
        bind.into(),
        port.to_string(),
    ]
}

/// `read`, again after `EINTR`. Linux interrupts socket reads that have a timeout when the
/// process is stopped and continued (signal(7)), even without signal handlers, e.g. while a
/// debugger or profiler attaches to it.
pub fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// What a host-side client sent and received on one connection.
pub struct Exchanged {
    pub sent: Digest,
    pub received: Digest,
    pub elapsed: Duration,
}

/// Connects to `addr`, sends `len` bytes of stream `seed`, half-closes, reads to EOF.
pub fn exchange(
    addr: SocketAddr,
    len: u64,
    seed: u64,
    timeout: Duration,
) -> std::io::Result<Exchanged> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut sent = Hasher::default();
    for_each_chunk(seed, len, |chunk| {
        s.write_all(chunk)?;
        sent.update(chunk);
        Ok(())
    })?;
    s.shutdown(Shutdown::Write)?;
    let mut received = Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = read_retrying(&mut s, &mut buf)?;
        if n == 0 {
            break;
        }
        received.update(&buf[..n]);
    }
    Ok(Exchanged {
        sent: sent.finish(),
        received: received.finish(),
        elapsed: start.elapsed(),
    })
}

/// The `(recv, sent)` digests of a guest server's report.
pub fn server_digests(j: &Json) -> (Digest, Digest) {
    assert!(j.ok(), "guest server failed on a connection: {j:?}");
    (
        Digest {
            len: j.u64("recv_len"),
            sha: j.str("recv_sha").to_string(),
        },
        Digest {
            len: j.u64("sent_len"),
            sha: j.str("sent_sha").to_string(),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// The unprivileged test user.

/// A temp dir owned by the test user holding a copy of the binary under test.
pub struct RootlessEnv {
    pub user: User,
    pub bin: PathBuf,
    pub dir: TempDir,
}

impl RootlessEnv {
    /// Checks every prerequisite (skip, or fail under CI) and prepares the dir.
    pub fn new(tools: &[&str]) -> Option<RootlessEnv> {
        if !require_root_or_skip() || !require_tools(&["setpriv", PYTHON]) || !require_tools(tools)
        {
            return None;
        }
        let Some(user) = User::from_name(TEST_USER).expect("getpwnam") else {
            skip_or_fail(&format!(
                "user {TEST_USER} does not exist (scripts/test.sh creates it)"
            ));
            return None;
        };
        for f in ["/etc/subuid", "/etc/subgid"] {
            let text = fs::read_to_string(f).unwrap_or_default();
            if !text
                .lines()
                .any(|l| l.starts_with(&format!("{TEST_USER}:")))
            {
                skip_or_fail(&format!(
                    "{f} has no range for {TEST_USER} (scripts/test.sh adds it)"
                ));
                return None;
            }
        }
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
        let dir = TempDir::new("tsfwdrk");
        let bin_dir = dir.join("bin");
        fs::create_dir(&bin_dir).expect("mkdir bin");
        let bin = bin_dir.join(src.file_name().expect("binary file name"));
        fs::copy(&src, &bin)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), bin.display()));
        for (p, mode) in [
            (dir.path(), 0o755),
            (bin_dir.as_path(), 0o755),
            (bin.as_path(), 0o755),
        ] {
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let run = dir.join("run");
        fs::create_dir(&run).expect("mkdir run");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).expect("chmod run");
        chown(&run, Some(user.uid), Some(user.gid)).expect("chown run");
        Some(RootlessEnv { user, bin, dir })
    }

    /// A directory the test user owns.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// `program` run by `setpriv` as the test user, with a clean environment.
    pub fn as_test_user(&self, program: &Path) -> Command {
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
            .env("XDG_RUNTIME_DIR", self.run_dir())
            .current_dir(self.dir.path());
        cmd
    }
}
