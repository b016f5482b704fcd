//! TCP semantics across the splice, with a real guest kernel and real host sockets: a FIN
//! from the host first, resets in both directions, and back-pressure (a stalled reader on
//! either side does not make tapsplice buffer the stream). Root tests through `tapsplice run`.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(120);

/// Bytes moved by the back-pressure tests: far more than tapsplice may hold for one flow.
const STALLED_STREAM: u64 = 128 * MIB;

/// Peak resident memory tapsplice may reach while a reader stalls on a 128 MiB stream: its
/// per-flow buffers are 2 x 512 KiB and its frame buffers reused; 3-4 MiB was measured.
const PEAK_RSS_LIMIT_KIB: u64 = 16 * 1024;

/// How long a slow reader leaves the stream unread.
const STALL: Duration = Duration::from_secs(2);

/// Runs `argv` inside `tapsplice run`, sampling tapsplice's peak RSS (VmHWM) until it exits.
/// Returns the guest's stdout and the peak in KiB.
fn run_sampled(bin: &std::path::Path, argv: &[String]) -> (String, u64) {
    let dir = TempDir::new("tssem");
    let out_path = dir.join("stdout");
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"));
    let mut child = Child::spawn_logged("tapsplice run", &mut cmd, dir.join("stderr"));
    let status_path = format!("/proc/{}/status", child.pid());
    let mut peak = 0;
    let status = loop {
        // Read before reaping: once reaped the PID is no longer ours to look at.
        if let Some(hwm) = fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| vm_hwm_kib(&s))
        {
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_status() {
            break status;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(peak > 0, "tapsplice exited before its memory could be read");
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "tapsplice run failed ({}): stdout {stdout}\nstderr {}",
        describe_status(status),
        child.log()
    );
    (stdout, peak)
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Guest: connect, read to EOF, then send N bytes of SEED and close; print digests.
const READ_THEN_SEND: &str = r#"
import hashlib, json, socket, sys
host, port, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((host, port), timeout=30)
s.settimeout(60)
hr, hs = hashlib.sha256(), hashlib.sha256()
got = 0
while True:
    b = s.recv(1 << 16)
    if not b:
        break
    hr.update(b); got += len(b)
blk = bytearray(b"".join(hashlib.sha256(b"tapsplice:%d:%d" % (seed, i)).digest() for i in range(1 << 15)))
sent = k = 0
while sent < n:
    blk[0:8] = k.to_bytes(8, "little")
    m = min(len(blk), n - sent)
    s.sendall(blk[:m]); hs.update(blk[:m]); sent += m; k += 1
s.shutdown(socket.SHUT_WR)
s.close()
print(json.dumps({"ok": True, "recv_len": got, "recv_sha": hr.hexdigest(), "sent_len": sent, "sent_sha": hs.hexdigest()}))
"#;

/// The host closes its side first: the guest sees EOF after all the data, and can still send
/// its own stream, which reaches the host whole.
#[test]
fn host_fin_first_then_guest_sends() {
    let Some(bin) = prereqs(&[]) else { return };
    let (down_seed, up_seed, down_len, up_len) = (31, 32, 8 * MIB, 8 * MIB + 5);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || -> io::Result<Digest> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(DEADLINE))?;
        conn.write_all(&pattern_bytes(down_seed, down_len))?;
        conn.shutdown(Shutdown::Write)?;
        let mut got = Vec::new();
        conn.read_to_end(&mut got)?;
        Ok(Digest::of(&got))
    });
    let argv = python_script(
        READ_THEN_SEND,
        &[
            GATEWAY.into(),
            port.to_string(),
            up_len.to_string(),
            up_seed.to_string(),
        ],
    );
    let (stdout, _) = run_sampled(&bin, &argv);
    let report = Json::last_in(&stdout);
    let (guest_sent, guest_recv) = report.digests();
    assert_eq!(
        guest_recv,
        pattern_digest(down_seed, down_len),
        "host -> guest"
    );
    assert_eq!(guest_sent, pattern_digest(up_seed, up_len), "guest stream");
    let host_recv = server.join().unwrap().expect("host server I/O");
    assert_eq!(host_recv, guest_sent, "guest -> host after the host's FIN");
}

/// Guest: connect, send a few bytes, then close with SO_LINGER 0 (an RST).
const GUEST_RESETS: &str = r#"
import socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(b"x" * 1000)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print('{"ok": true}')
"#;

/// A reset from the guest reaches the host socket as a reset, not as a clean EOF.
#[test]
fn guest_reset_resets_the_host_side() {
    let Some(bin) = prereqs(&[]) else { return };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || -> io::ErrorKind {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return io::ErrorKind::UnexpectedEof,
                Ok(_) => continue,
                Err(e) => return e.kind(),
            }
        }
    });
    let argv = python_script(GUEST_RESETS, &[GATEWAY.into(), port.to_string()]);
    run_sampled(&bin, &argv);
    assert_eq!(
        server.join().unwrap(),
        io::ErrorKind::ConnectionReset,
        "the host saw a clean close instead of a reset"
    );
}

/// Guest: connect, send 1000 bytes, then read; print the errno the read ends with.
const GUEST_AWAITS_RESET: &str = r#"
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.settimeout(60)
s.sendall(b"y" * 1000)
try:
    data = s.recv(4096)
    print(json.dumps({"ok": True, "errno": 0, "len": len(data)}))
except OSError as e:
    print(json.dumps({"ok": False, "errno": e.errno}))
"#;

/// A reset from the host reaches the guest as ECONNRESET.
#[test]
fn host_reset_resets_the_guest() {
    let Some(bin) = prereqs(&[]) else { return };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 1000];
        conn.read_exact(&mut buf)
            .expect("read the guest's 1000 bytes");
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(conn);
    });
    let argv = python_script(GUEST_AWAITS_RESET, &[GATEWAY.into(), port.to_string()]);
    let (stdout, _) = run_sampled(&bin, &argv);
    server.join().unwrap();
    let report = Json::last_in(&stdout);
    assert_eq!(
        report.i64("errno"),
        libc::ECONNRESET as i64,
        "expected ECONNRESET in the guest: {report:?}"
    );
}

/// A host server that stalls for [`STALL`] before it reads the guest's stream, then hashes it.
#[test]
fn slow_host_reader_does_not_grow_tapsplice_memory() {
    let Some(bin) = prereqs(&[]) else { return };
    let up_seed = 41;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || -> io::Result<Digest> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(DEADLINE))?;
        thread::sleep(STALL);
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        conn.shutdown(Shutdown::Write)?;
        Ok(hasher.finish())
    });
    let argv = with_python(py_client(GATEWAY, port, STALLED_STREAM, up_seed, 10));
    let (stdout, peak) = run_sampled(&bin, &argv);
    let (guest_sent, _) = Json::last_in(&stdout).digests();
    let host_recv = server.join().unwrap().expect("host server I/O");
    assert_eq!(guest_sent, pattern_digest(up_seed, STALLED_STREAM));
    assert_eq!(host_recv, guest_sent, "guest -> host bytes differ");
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "tapsplice peaked at {peak} KiB while the host reader stalled"
    );
    eprintln!("peak RSS with a stalled host reader: {peak} KiB");
}

/// Guest: connect, stall, then read to EOF; print the digest.
const SLOW_GUEST_READER: &str = r#"
import hashlib, json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.settimeout(60)
s.shutdown(socket.SHUT_WR)
time.sleep(float(sys.argv[3]))
h = hashlib.sha256()
n = 0
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
print(json.dumps({"ok": True, "sent_len": 0, "sent_sha": hashlib.sha256().hexdigest(), "recv_len": n, "recv_sha": h.hexdigest()}))
"#;

/// The host writes its whole stream at once; the guest leaves it unread for [`STALL`].
#[test]
fn slow_guest_reader_does_not_grow_tapsplice_memory() {
    let Some(bin) = prereqs(&[]) else { return };
    let down_seed = 42;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let writer = thread::spawn(move || -> io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_write_timeout(Some(DEADLINE))?;
        for_each_chunk(down_seed, STALLED_STREAM, |chunk| conn.write_all(chunk))?;
        conn.shutdown(Shutdown::Write)
    });
    let argv = python_script(
        SLOW_GUEST_READER,
        &[
            GATEWAY.into(),
            port.to_string(),
            STALL.as_secs_f64().to_string(),
        ],
    );
    let (stdout, peak) = run_sampled(&bin, &argv);
    writer.join().unwrap().expect("host writer I/O");
    let (_, guest_recv) = Json::last_in(&stdout).digests();
    assert_eq!(
        guest_recv,
        pattern_digest(down_seed, STALLED_STREAM),
        "host -> guest"
    );
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "tapsplice peaked at {peak} KiB while the guest reader stalled"
    );
    eprintln!("peak RSS with a stalled guest reader: {peak} KiB");
}
