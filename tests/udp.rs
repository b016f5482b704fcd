//! UDP NAT through the binary, with real namespaces and the kernel's UDP in the guest: echo to a
//! server on the host's loopback (as N+2) and to a server in a veth peer namespace, datagrams up
//! to the MTU both ways (and larger ones dropped), ICMP errors back to the guest, separate flows
//! per guest port, idle expiry (`--udp-timeout`), and a measured burst. Root tests.
//!
//! Every datagram is checked: the guest compares each echo with what it sent (and its source
//! address), and both ends report length and SHA-256 of everything sent and received.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const SHORT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(120);

/// Seed of the datagrams a server sends when asked with `SEND:<size>`.
const DOWN_SEED: u64 = 7;

/// Digest of datagrams `0..sizes.len()` of `seed` back to back.
fn sequence_digest(seed: u64, sizes: &[usize]) -> Digest {
    let mut h = Hasher::default();
    for (i, &s) in sizes.iter().enumerate() {
        h.update(&py_net_payload(seed, i as u64, s));
    }
    h.finish()
}

fn join_sizes(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The UDP helper run inside namespaces: `python3 -c PY_UDP MODE ARGS...`, one JSON object per
/// line on stdout.
///
/// - `echo HOST PORT SEED SIZES [TIMEOUT]`: one unconnected socket; for each size (comma list)
///   sends datagram `i` and waits for its echo, which must be byte-identical and come from
///   HOST:PORT. `{"ok":true,"count","sent_len","sent_sha","recv_len","recv_sha","local_port"}`
///   or `{"ok":false,"stage":"send"|"recv"|"check","index","size",...}`.
/// - `oversize HOST PORT SEED UP_BIG UP_OK DOWN_BIG DOWN_OK`: sends UP_BIG then UP_OK bytes and
///   reports every datagram that comes back within 1.5 s after the UP_OK echo; then asks the
///   server (`SEND:n`) for DOWN_BIG then DOWN_OK bytes and reports what arrives.
/// - `burst HOST PORT SEED COUNT SIZE WINDOW`: COUNT datagrams with at most WINDOW unanswered;
///   stops after 3 s without progress. Reports received, lost, bad, elapsed and rate.
/// - `error HOST PORT RECVERR TIMEOUT`: a connected socket (with IP_RECVERR when RECVERR is 1)
///   sends one datagram and reads: `{"result":"error","errno",...,"ee_type","ee_code",
///   "offender"}`, `{"result":"timeout"}` or `{"result":"data"}`.
/// - `multi HOST PORTS NSOCK ROUNDS SEED`: NSOCK sockets; each round every socket sends one
///   datagram to each port (comma list) and then each socket reads its echoes, which must be its
///   own, each from the port it went to (in any order). Reports the local ports.
/// - `fanout HOST PORT COUNT`: COUNT sockets, each sends one datagram and reads its echo; all
///   stay open until the end.
/// - `timeline HOST PORT DURATION ACTIONS`: ACTIONS is JSON `[[t, sock, text], ...]`; sends each
///   text from the named socket at t seconds, prints every datagram received until DURATION as
///   `{"sock","recv","from","t_ms"}` and finally `{"done":true,"ports":{...}}`.
/// - `server BIND_IP COUNT IDLE`: (for a veth peer) binds BIND_IP:0, prints `{"port"}`, echoes
///   COUNT datagrams (or until IDLE s pass without one), prints digests and the sources seen.
const PY_UDP: &str = r#"
import errno, hashlib, json, select, socket, struct, sys, time

def out(o):
    sys.stdout.write(json.dumps(o, separators=(",", ":")) + "\n")
    sys.stdout.flush()

def ms(t0):
    return int((time.monotonic() - t0) * 1000)

def payload(seed, i, size):
    h = hashlib.sha256(b"tapsplice-udp:%d:%d" % (int(seed), int(i))).digest()
    return (h * (size // 32 + 1))[:size]

def udp_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root): past rmem_max
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return s

def fmt(a):
    return "%s:%d" % a

def echo(host, port, seed, sizes, timeout="5"):
    dest = (host, int(port))
    s = udp_socket()
    s.settimeout(float(timeout))
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sl = rl = n = 0
    t0 = time.monotonic()
    for i, size in enumerate(int(x) for x in sizes.split(",")):
        p = payload(seed, i, size)
        try:
            s.sendto(p, dest)
        except OSError as e:
            return out({"ok": False, "stage": "send", "index": i, "size": size, "errno": e.errno, "error": str(e)})
        hs.update(p); sl += len(p)
        try:
            data, frm = s.recvfrom(1 << 17)
        except socket.timeout:
            return out({"ok": False, "stage": "recv", "index": i, "size": size, "errno": -1, "error": "timed out"})
        except OSError as e:
            return out({"ok": False, "stage": "recv", "index": i, "size": size, "errno": e.errno, "error": str(e)})
        hr.update(data); rl += len(data); n += 1
        if frm != dest or data != p:
            return out({"ok": False, "stage": "check", "index": i, "size": size, "from": fmt(frm), "got_len": len(data), "equal": data == p})
    out({"ok": True, "count": n, "sent_len": sl, "sent_sha": hs.hexdigest(), "recv_len": rl,
         "recv_sha": hr.hexdigest(), "local_port": s.getsockname()[1], "elapsed_ms": ms(t0)})

def drain(s, quiet):
    got = []
    s.settimeout(quiet)
    while True:
        try:
            data, frm = s.recvfrom(1 << 17)
        except socket.timeout:
            return got
        got.append((data, frm))

def oversize(host, port, seed, up_big, up_ok, down_big, down_ok):
    dest = (host, int(port))
    up_big, up_ok, down_big, down_ok = int(up_big), int(up_ok), int(down_big), int(down_ok)
    s = udp_socket()
    r = {"ok": True}
    big, ok = payload(seed, 0, up_big), payload(seed, 1, up_ok)
    s.sendto(big, dest)
    s.sendto(ok, dest)
    got = drain(s, 1.5)
    r["up"] = [{"len": len(d), "is_ok": d == ok, "is_big": d == big, "from": fmt(f)} for d, f in got]
    s.sendto(b"SEND:%d" % down_big, dest)
    s.sendto(b"SEND:%d" % down_ok, dest)
    got = drain(s, 1.5)
    dbig, dok = payload(7, down_big, down_big), payload(7, down_ok, down_ok)
    r["down"] = [{"len": len(d), "is_ok": d == dok, "is_big": d == dbig, "from": fmt(f)} for d, f in got]
    out(r)

def burst(host, port, seed, count, size, window):
    dest = (host, int(port))
    count, size, window = int(count), int(size), int(window)
    s = udp_socket()
    s.setblocking(False)
    pending = {}
    got = [False] * count
    nxt = received = bad = 0
    hs = hashlib.sha256()
    t0 = last = time.monotonic()
    while received < count:
        while nxt < count and len(pending) < window:
            p = payload(seed, nxt, size)
            try:
                s.sendto(p, dest)
            except BlockingIOError:
                break
            hs.update(p)
            pending[p] = nxt
            nxt += 1
        r, _, _ = select.select([s], [], [], 0.2)
        now = time.monotonic()
        if r:
            while True:
                try:
                    data, frm = s.recvfrom(1 << 17)
                except BlockingIOError:
                    break
                i = pending.pop(data, None)
                if i is None or frm != dest:
                    bad += 1
                    continue
                got[i] = True
                received += 1
                last = now
        elif now - last > 3.0:
            break
    # Up to the last datagram back: the 3 s waited for lost ones do not count.
    elapsed = last - t0
    hr = hashlib.sha256()
    for i in range(count):
        if got[i]:
            hr.update(payload(seed, i, size))
    out({"ok": received == count and bad == 0, "count": count, "sent": nxt, "received": received,
         "lost": nxt - received, "bad": bad, "sent_len": nxt * size, "sent_sha": hs.hexdigest(),
         "recv_len": received * size, "recv_sha": hr.hexdigest(), "elapsed_ms": int(elapsed * 1000),
         "pps": int(received / elapsed) if elapsed > 0 else 0})

def error(host, port, recverr, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if recverr == "1":
        s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
    s.connect((host, int(port)))
    s.settimeout(float(timeout))
    t0 = time.monotonic()
    s.send(b"tapsplice-error-probe")
    try:
        data = s.recv(2048)
        return out({"result": "data", "len": len(data), "elapsed_ms": ms(t0)})
    except socket.timeout:
        return out({"result": "timeout", "elapsed_ms": ms(t0)})
    except OSError as e:
        r = {"result": "error", "errno": e.errno, "error": str(e), "elapsed_ms": ms(t0)}
    if recverr == "1":
        try:
            _, anc, _, _ = s.recvmsg(2048, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            for level, typ, data in anc:
                if level == socket.IPPROTO_IP and typ == 11 and len(data) >= 16:
                    ee_errno, origin, etype, code, _, info, _ = struct.unpack("=IBBBBII", data[:16])
                    r.update({"ee_errno": ee_errno, "ee_origin": origin, "ee_type": etype, "ee_code": code})
                    if len(data) >= 24:
                        r["offender"] = socket.inet_ntoa(data[20:24])
        except OSError as e:
            r["errqueue_error"] = str(e)
    out(r)

def multi(host, ports, nsock, rounds, seed):
    dests = [(host, int(p)) for p in ports.split(",")]
    socks = [udp_socket() for _ in range(int(nsock))]
    for s in socks:
        s.settimeout(5.0)
    n = 0
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sl = rl = 0
    for r in range(int(rounds)):
        sent = []
        for k, s in enumerate(socks):
            for d in dests:
                p = payload(seed, n, 64 + n % 900)
                n += 1
                s.sendto(p, d)
                hs.update(p); sl += len(p)
                sent.append((k, d, p))
        # Each socket must get exactly its own echoes, each from the server it went to; the
        # two servers answer independently, so in any order.
        for k, s in enumerate(socks):
            want = {(d, p) for kk, d, p in sent if kk == k}
            while want:
                try:
                    data, frm = s.recvfrom(1 << 16)
                except OSError as e:
                    return out({"ok": False, "stage": "recv", "round": r, "sock": k, "error": str(e) or "timed out"})
                if (frm, data) not in want:
                    return out({"ok": False, "stage": "check", "round": r, "sock": k, "from": fmt(frm),
                                "len": len(data), "expected_from": sorted(fmt(d) for d, _ in want)})
                want.remove((frm, data))
                hr.update(data); rl += len(data)
    out({"ok": True, "datagrams": n, "sent_len": sl, "sent_sha": hs.hexdigest(), "recv_len": rl,
         "recv_sha": hr.hexdigest(), "local_ports": [s.getsockname()[1] for s in socks]})

def fanout(host, port, count):
    dest = (host, int(port))
    socks = []
    for i in range(int(count)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5.0)
        p = payload(99, i, 100)
        s.sendto(p, dest)
        try:
            data, frm = s.recvfrom(2048)
        except OSError as e:
            return out({"ok": False, "index": i, "error": str(e) or "timed out"})
        if data != p or frm != dest:
            return out({"ok": False, "index": i, "error": "wrong echo"})
        socks.append(s)
    out({"ok": True, "count": len(socks)})

def timeline(host, port, duration, actions):
    dest = (host, int(port))
    acts = sorted(json.loads(actions), key=lambda a: a[0])
    socks = {}
    for _, name, _ in acts:
        if name not in socks:
            socks[name] = udp_socket()
            socks[name].setblocking(False)
    by_fd = {s.fileno(): name for name, s in socks.items()}
    t0 = time.monotonic()
    end = t0 + float(duration)
    ai = 0
    while True:
        now = time.monotonic()
        while ai < len(acts) and now - t0 >= acts[ai][0]:
            _, name, text = acts[ai]
            socks[name].sendto(text.encode(), dest)
            out({"sent": text, "sock": name, "t_ms": ms(t0)})
            ai += 1
        if now >= end:
            break
        nxt = end if ai >= len(acts) else min(end, t0 + acts[ai][0])
        r, _, _ = select.select(list(socks.values()), [], [], max(0.0, nxt - now))
        for s in r:
            name = by_fd[s.fileno()]
            try:
                data, frm = s.recvfrom(1 << 16)
            except OSError as e:
                out({"sock": name, "errno": e.errno, "error": str(e), "t_ms": ms(t0)})
                continue
            out({"sock": name, "recv": data.decode("latin-1"), "from": fmt(frm), "t_ms": ms(t0)})
    out({"done": True, "ports": {k: v.getsockname()[1] for k, v in socks.items()}})

def server(bind_ip, count, idle):
    s = udp_socket()
    s.bind((bind_ip, 0))
    out({"port": s.getsockname()[1]})
    s.settimeout(float(idle))
    hs, hr = hashlib.sha256(), hashlib.sha256()
    sl = rl = n = 0
    sources = []
    while n < int(count):
        try:
            data, frm = s.recvfrom(1 << 17)
        except socket.timeout:
            break
        hr.update(data); rl += len(data); n += 1
        if frm[0] not in sources:
            sources.append(frm[0])
        s.sendto(data, frm)
        hs.update(data); sl += len(data)
    out({"ok": True, "count": n, "recv_len": rl, "recv_sha": hr.hexdigest(), "sent_len": sl,
         "sent_sha": hs.hexdigest(), "sources": sources})

{"echo": echo, "oversize": oversize, "burst": burst, "error": error, "multi": multi,
 "fanout": fanout, "timeline": timeline, "server": server}[sys.argv[1]](*sys.argv[2:])
"#;

/// `[PYTHON, "-c", PY_UDP, MODE, ARGS...]`: a whole argv, for `tapsplice run`.
fn py_udp(mode: &str, args: &[String]) -> Vec<String> {
    with_python(py_udp_args(mode, args))
}

/// The arguments after [`PYTHON`], for [`NetnsFixture::exec`].
fn py_udp_args(mode: &str, args: &[String]) -> Vec<String> {
    let mut v = vec![mode.to_string()];
    v.extend(args.iter().cloned());
    python_script(PY_UDP, &v)[1..].to_vec()
}

// ---------------------------------------------------------------------------------------------
// Host-side UDP server.

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Echo every datagram to its sender; `SEND:<n>` asks for datagram `n` of [`DOWN_SEED`],
    /// `n` bytes, instead.
    Echo,
    /// Record only; the test thread answers (or not) with [`UdpServer::send_to`].
    Sink,
}

/// One datagram the server received.
#[derive(Clone, Debug)]
struct Got {
    from: SocketAddr,
    data: Vec<u8>,
    at: Instant,
}

/// A UDP server on 127.0.0.1:0 that records every datagram. Stopped on drop.
struct UdpServer {
    sock: UdpSocket,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpServer {
    fn start(mode: Mode) -> UdpServer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
        // Room for every datagram a burst test has in flight (past rmem_max: we are root), so
        // that a loss measured is not this server's.
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sock, got, stop) = (sock.try_clone().expect("clone"), got.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 17];
                while !stop.load(Ordering::SeqCst) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let data = buf[..n].to_vec();
                    if mode == Mode::Echo {
                        let reply = match data
                            .strip_prefix(b"SEND:")
                            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<usize>().ok())
                        {
                            Some(size) => py_net_payload(DOWN_SEED, size as u64, size),
                            None => data.clone(),
                        };
                        let _ = sock.send_to(&reply, from);
                    }
                    got.lock().unwrap().push(Got {
                        from,
                        data,
                        at: Instant::now(),
                    });
                }
            })
        };
        UdpServer {
            sock,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        self.sock.local_addr().expect("local_addr").port()
    }

    fn received(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Digest of everything received, in order.
    fn received_digest(&self) -> Digest {
        let mut h = Hasher::default();
        for g in self.received() {
            h.update(&g.data);
        }
        h.finish()
    }

    /// Waits for a datagram equal to `text`; returns it.
    fn wait_for_text(&self, text: &str, deadline: Duration) -> Got {
        wait_for_value(
            deadline,
            &format!("datagram {text:?} at the host server"),
            || {
                self.received()
                    .into_iter()
                    .find(|g| g.data == text.as_bytes())
            },
        )
    }

    fn send_to(&self, data: &[u8], to: SocketAddr) {
        self.sock
            .send_to(data, to)
            .unwrap_or_else(|e| panic!("send to {to}: {e}"));
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Echo through N+2 to the host's loopback.

/// Sizes for MTU 1500: the empty datagram, small ones, common ones, and the largest (1472).
const SIZES_1500: &[usize] = &[
    0, 1, 2, 17, 64, 100, 512, 548, 1000, 1024, 1280, 1400, 1471, 1472, 1472, 3, 1472,
];
/// Sizes for MTU 65520, up to the largest (65492).
const SIZES_65520: &[usize] = &[
    1, 1472, 1473, 4096, 8972, 9000, 16384, 32768, 65000, 65491, 65492, 100, 65492,
];

fn echo_via_gateway(opts: &[&str], sizes: &[usize], seed: u64) {
    let Some(bin) = prereqs(&[]) else { return };
    let server = UdpServer::start(Mode::Echo);
    let argv = py_udp(
        "echo",
        &[
            GATEWAY.into(),
            server.port().to_string(),
            seed.to_string(),
            join_sizes(sizes),
        ],
    );
    let out = tapsplice_run_capture(&bin, opts, &argv, None, SHORT);
    out.assert_success("UDP echo client in tapsplice run");
    let r = Json::last_in(&out.stdout_str());
    let (sent, recv) = r.digests();
    let want = sequence_digest(seed, sizes);
    assert_eq!(sent, want, "guest did not send the expected datagrams");
    assert_eq!(recv, want, "echoes received by the guest differ");
    assert_eq!(
        server.received_digest(),
        want,
        "datagrams received by the host server differ"
    );
    let got = server.received();
    assert_eq!(got.len(), sizes.len(), "datagram count at the host server");
    for (i, (g, &size)) in got.iter().zip(sizes).enumerate() {
        assert_eq!(g.data.len(), size, "datagram {i} size at the host server");
        assert!(
            g.from.ip().is_loopback(),
            "the host server saw datagram {i} from {}",
            g.from
        );
    }
    // One guest socket to one destination is one flow: one host source address.
    let sources: std::collections::BTreeSet<_> = got.iter().map(|g| g.from).collect();
    assert_eq!(
        sources.len(),
        1,
        "one guest socket used several host sockets: {sources:?}"
    );
    eprintln!("{} datagrams echoed with {opts:?}: {r:?}", sizes.len());
}

#[test]
fn udp_echo_host_loopback_via_gateway_mtu_1500() {
    echo_via_gateway(&[], SIZES_1500, 101);
}

#[test]
fn udp_echo_host_loopback_via_gateway_mtu_65520() {
    echo_via_gateway(&["--mtu", "65520"], SIZES_65520, 102);
}

// ---------------------------------------------------------------------------------------------
// Echo to a veth peer.

#[test]
fn udp_echo_veth_peer() {
    let Some(bin) = prereqs(&[]) else { return };
    let seed = 111;
    let peer = VethPeer::new();
    let peer_ip = peer.peer_ip.to_string();
    let logs = TempDir::new("tsudp");
    let mut cmd = peer.ns.exec(
        PYTHON,
        &py_udp_args(
            "server",
            &[peer_ip.clone(), SIZES_1500.len().to_string(), "60".into()],
        ),
    );
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut server = Child::spawn_logged(
        "UDP echo server in the peer namespace",
        &mut cmd,
        logs.join("server.log"),
    );
    let lines = line_reader(server.inner().stdout.take().expect("stdout pipe"));
    let port_line = lines
        .recv_timeout(SHORT)
        .unwrap_or_else(|_| panic!("peer server did not print its port: {}", server.log()));
    let port = Json::parse(&port_line).u64("port").to_string();

    let argv = py_udp(
        "echo",
        &[
            peer_ip.clone(),
            port,
            seed.to_string(),
            join_sizes(SIZES_1500),
        ],
    );
    let out = tapsplice_run_capture(&bin, &[], &argv, None, SHORT);
    out.assert_success("UDP echo client in tapsplice run");
    let (sent, recv) = Json::last_in(&out.stdout_str()).digests();
    let want = sequence_digest(seed, SIZES_1500);
    assert_eq!(sent, want);
    assert_eq!(
        recv, want,
        "echoes from the peer received by the guest differ"
    );

    let status = server.wait_deadline(SHORT);
    assert!(
        status.success(),
        "peer server: {}\n{}",
        describe_status(status),
        server.log()
    );
    let report = Json::parse(&lines.recv_timeout(SHORT).expect("peer server result line"));
    let (srv_sent, srv_recv) = (
        Digest {
            len: report.u64("sent_len"),
            sha: report.str("sent_sha").into(),
        },
        Digest {
            len: report.u64("recv_len"),
            sha: report.str("recv_sha").into(),
        },
    );
    assert_eq!(srv_recv, want, "datagrams received by the peer differ");
    assert_eq!(srv_sent, want);
    // Through the host: the peer sees the host end of the veth pair as the source.
    let sources = report.strs("sources");
    assert_eq!(
        sources,
        vec![peer.host_ip.to_string()],
        "sources seen by the peer"
    );
    drop(server);
    drop(peer);
}

/// Lines of a child's stdout, through a channel.
fn line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------------
// slirp4netns mode (only the slirp4netns contract: passes with TAPSPLICE_BIN=/usr/bin/slirp4netns).

/// `-c` on a namespace made by `ip netns add`: UDP echo through N+2 to the host's loopback.
#[test]
fn udp_main_mode_echo_via_gateway() {
    let Some(bin) = prereqs(&[]) else { return };
    let seed = 151;
    let ns = NetnsFixture::new();
    let mut main = SlirpProcess::start(&bin, &ns, &["-c"]);
    let server = UdpServer::start(Mode::Echo);
    let out = run_capture(
        "UDP echo client in the namespace",
        &mut ns.exec(
            PYTHON,
            &py_udp_args(
                "echo",
                &[
                    GATEWAY.into(),
                    server.port().to_string(),
                    seed.to_string(),
                    join_sizes(SIZES_1500),
                ],
            ),
        ),
        None,
        SHORT,
    );
    out.assert_success("UDP echo client in the namespace");
    let (sent, recv) = Json::last_in(&out.stdout_str()).digests();
    let want = sequence_digest(seed, SIZES_1500);
    assert_eq!(sent, want);
    assert_eq!(recv, want, "echoes received by the guest differ");
    assert_eq!(
        server.received_digest(),
        want,
        "datagrams at the host server differ"
    );
    main.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Size limits: past the MTU, datagrams are dropped in both directions and the flow goes on.

fn oversize_dropped(opts: &[&str], ok: usize) {
    let Some(bin) = prereqs(&[]) else { return };
    let big = ok + 1;
    let seed = 121;
    let server = UdpServer::start(Mode::Echo);
    let argv = py_udp(
        "oversize",
        &[
            GATEWAY.into(),
            server.port().to_string(),
            seed.to_string(),
            big.to_string(),
            ok.to_string(),
            big.to_string(),
            ok.to_string(),
        ],
    );
    let out = tapsplice_run_capture(&bin, opts, &argv, None, SHORT);
    out.assert_success("oversize client in tapsplice run");
    let r = Json::last_in(&out.stdout_str());
    let summary = |dir: &str| -> Vec<(u64, bool, bool)> {
        r.value()[dir]
            .as_array()
            .unwrap_or_else(|| panic!("no {dir:?} in {r:?}"))
            .iter()
            .map(|d| {
                (
                    d["len"].as_u64().unwrap(),
                    d["is_ok"].as_bool().unwrap(),
                    d["is_big"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let got = server.received();
    let sizes_at_server: Vec<usize> = got.iter().map(|g| g.data.len()).collect();
    assert!(
        !sizes_at_server.contains(&big),
        "a {big}-byte datagram (over the MTU) reached the host server: sizes {sizes_at_server:?}"
    );
    assert_eq!(
        got.first().map(|g| g.data.clone()),
        Some(py_net_payload(seed, 1, ok)),
        "the {ok}-byte datagram after the oversized one did not reach the host server intact \
         (sizes seen {sizes_at_server:?})"
    );
    assert_eq!(
        summary("up"),
        vec![(ok as u64, true, false)],
        "guest -> host: expected only the echo of the {ok}-byte datagram ({r:?})"
    );
    assert_eq!(
        summary("down"),
        vec![(ok as u64, true, false)],
        "host -> guest: expected only the {ok}-byte datagram, the {big}-byte one dropped ({r:?})"
    );
}

#[test]
fn udp_over_mtu_dropped_both_ways_mtu_1500() {
    oversize_dropped(&[], 1472);
}

#[test]
fn udp_over_mtu_dropped_both_ways_mtu_65520() {
    oversize_dropped(&["--mtu", "65520"], 65492);
}

// ---------------------------------------------------------------------------------------------
// Rate: a window of datagrams in flight, counted and checked.

#[test]
fn udp_burst_no_loss_at_moderate_rate() {
    let Some(bin) = prereqs(&[]) else { return };
    let (seed, count, size, window) = (131u64, 5000u64, 1000usize, 32);
    let server = UdpServer::start(Mode::Echo);
    let argv = py_udp(
        "burst",
        &[
            GATEWAY.into(),
            server.port().to_string(),
            seed.to_string(),
            count.to_string(),
            size.to_string(),
            window.to_string(),
        ],
    );
    let out = tapsplice_run_capture(&bin, &[], &argv, None, LONG);
    out.assert_success("UDP burst client in tapsplice run");
    let r = Json::last_in(&out.stdout_str());
    eprintln!(
        "UDP burst: {} of {} datagrams of {size} bytes back ({} lost, {} bad) in {} ms, {} datagrams/s each way, window {window}",
        r.u64("received"),
        r.u64("count"),
        r.u64("lost"),
        r.u64("bad"),
        r.u64("elapsed_ms"),
        r.u64("pps")
    );
    assert_eq!(r.u64("bad"), 0, "unexpected or corrupted datagrams: {r:?}");
    assert_eq!(
        r.u64("lost"),
        0,
        "datagrams lost at a window of {window}: {r:?}"
    );
    let (sent, recv) = r.digests();
    let want = {
        let mut h = Hasher::default();
        for i in 0..count {
            h.update(&py_net_payload(seed, i, size));
        }
        h.finish()
    };
    assert_eq!(sent, want);
    assert_eq!(recv, want, "echoes received by the guest differ");
    let at_server = server.received();
    assert_eq!(
        at_server.len() as u64,
        count,
        "datagrams at the host server"
    );
    let mut h = Hasher::default();
    let mut datas: Vec<&Vec<u8>> = at_server.iter().map(|g| &g.data).collect();
    // The server's order may differ from the send order only if something reordered; check the
    // content as a multiset.
    let mut want_all: Vec<Vec<u8>> = (0..count).map(|i| py_net_payload(seed, i, size)).collect();
    datas.sort();
    want_all.sort();
    for d in &datas {
        h.update(d);
    }
    let mut hw = Hasher::default();
    for d in &want_all {
        hw.update(d);
    }
    assert_eq!(
        h.finish(),
        hw.finish(),
        "datagrams at the host server differ"
    );
}

/// The same with 256 datagrams in flight: measured and printed, not asserted beyond integrity
/// (loss at this rate depends on socket buffers and the machine's load).
#[test]
fn udp_burst_wide_window_measured() {
    let Some(bin) = prereqs(&[]) else { return };
    let (seed, count, size, window) = (132u64, 20000u64, 1000usize, 256);
    let server = UdpServer::start(Mode::Echo);
    let argv = py_udp(
        "burst",
        &[
            GATEWAY.into(),
            server.port().to_string(),
            seed.to_string(),
            count.to_string(),
            size.to_string(),
            window.to_string(),
        ],
    );
    let out = tapsplice_run_capture(&bin, &[], &argv, None, LONG);
    out.assert_success("UDP burst client in tapsplice run");
    let r = Json::last_in(&out.stdout_str());
    eprintln!(
        "UDP burst (measured only): {} of {} sent datagrams of {size} bytes back ({} lost, {} bad) in {} ms, {} datagrams/s each way, window {window}; host server got {}",
        r.u64("received"),
        r.u64("sent"),
        r.u64("lost"),
        r.u64("bad"),
        r.u64("elapsed_ms"),
        r.u64("pps"),
        server.received().len()
    );
    assert_eq!(r.u64("bad"), 0, "unexpected or corrupted datagrams: {r:?}");
}

// ---------------------------------------------------------------------------------------------
// ICMP errors.

/// Runs the `error` probe in `tapsplice run OPTS` and returns its report.
fn error_probe(bin: &std::path::Path, opts: &[&str], host: &str, port: u16, recverr: bool) -> Json {
    let argv = py_udp(
        "error",
        &[
            host.into(),
            port.to_string(),
            if recverr { "1" } else { "0" }.into(),
            "5".into(),
        ],
    );
    let out = tapsplice_run_capture(bin, opts, &argv, None, SHORT);
    out.assert_success("UDP error probe in tapsplice run");
    Json::last_in(&out.stdout_str())
}

fn assert_refused(r: &Json, what: &str) {
    assert_eq!(
        r.str("result"),
        "error",
        "{what}: expected ECONNREFUSED from an ICMP port unreachable: {r:?}"
    );
    assert_eq!(
        r.i64("errno"),
        libc::ECONNREFUSED as i64,
        "{what}: expected ECONNREFUSED: {r:?}"
    );
    assert!(
        r.u64("elapsed_ms") < 3000,
        "{what}: the refusal took {} ms",
        r.u64("elapsed_ms")
    );
}

#[test]
fn udp_closed_port_on_host_loopback_gives_econnrefused() {
    let Some(bin) = prereqs(&[]) else { return };
    let port = closed_udp_port(Ipv4Addr::LOCALHOST.into());
    // A plain connected socket, as applications use it.
    let r = error_probe(&bin, &[], GATEWAY, port, false);
    assert_refused(&r, "closed port on the host's loopback");
    // With IP_RECVERR the guest can see the ICMP itself: destination unreachable, port (3/3).
    let r = error_probe(&bin, &[], GATEWAY, port, true);
    assert_refused(&r, "closed port on the host's loopback (IP_RECVERR)");
    assert_eq!(
        (r.i64("ee_origin"), r.i64("ee_type"), r.i64("ee_code")),
        (2, 3, 3),
        "expected ICMP (origin 2) type 3 code 3: {r:?}"
    );
}

#[test]
fn udp_closed_port_on_veth_peer_gives_econnrefused() {
    let Some(bin) = prereqs(&[]) else { return };
    let peer = VethPeer::new();
    // A fresh namespace: nothing listens on any UDP port.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let r = error_probe(&bin, &[], &peer.peer_ip.to_string(), port, false);
    assert_refused(&r, "closed port on the veth peer");
    drop(peer);
}

/// `--disable-host-loopback`: a datagram to N+2 gets ICMP net unreachable and never reaches the
/// host's loopback. (The kernel reports a net-unreachable ICMP on a UDP socket only with
/// IP_RECVERR, it being a "soft" error; the probe sets it.)
#[test]
fn udp_disable_host_loopback_net_unreachable() {
    let Some(bin) = prereqs(&[]) else { return };
    let server = UdpServer::start(Mode::Echo);
    let r = error_probe(
        &bin,
        &["--disable-host-loopback"],
        GATEWAY,
        server.port(),
        true,
    );
    assert_eq!(
        r.str("result"),
        "error",
        "expected ENETUNREACH from an ICMP net unreachable: {r:?}"
    );
    assert_eq!(
        r.i64("errno"),
        libc::ENETUNREACH as i64,
        "expected ENETUNREACH: {r:?}"
    );
    assert_eq!(
        (r.i64("ee_origin"), r.i64("ee_type"), r.i64("ee_code")),
        (2, 3, 0),
        "expected ICMP (origin 2) type 3 code 0 (net unreachable): {r:?}"
    );
    assert!(
        server.received().is_empty(),
        "the host's loopback server got datagrams: {:?}",
        server.received()
    );
}

// ---------------------------------------------------------------------------------------------
// Flows.

/// Each guest (address, port) to a destination is a flow of its own: several guest sockets to
/// one server appear there from distinct source ports, and each socket gets only its own
/// replies; one guest socket talking to two servers gets each reply from the right address.
#[test]
fn udp_separate_flows_per_guest_port_and_destination() {
    let Some(bin) = prereqs(&[]) else { return };
    let (nsock, rounds, seed) = (8usize, 5usize, 141u64);
    let a = UdpServer::start(Mode::Echo);
    let b = UdpServer::start(Mode::Echo);
    let argv = py_udp(
        "multi",
        &[
            GATEWAY.into(),
            format!("{},{}", a.port(), b.port()),
            nsock.to_string(),
            rounds.to_string(),
            seed.to_string(),
        ],
    );
    let out = tapsplice_run_capture(&bin, &[], &argv, None, SHORT);
    out.assert_success("multi-flow client in tapsplice run");
    let r = Json::last_in(&out.stdout_str());
    let (sent, recv) = r.digests();
    // Echoes may come back in another order than sent, so compare amounts here; the guest
    // checked each echo's bytes and source.
    assert_eq!(
        sent.len, recv.len,
        "echoed bytes differ from what was sent: {r:?}"
    );
    assert_eq!(r.u64("datagrams"), (nsock * rounds * 2) as u64);
    for (name, srv) in [("A", &a), ("B", &b)] {
        let got = srv.received();
        assert_eq!(got.len(), nsock * rounds, "datagrams at server {name}");
        let sources: std::collections::BTreeSet<_> = got.iter().map(|g| g.from).collect();
        assert_eq!(
            sources.len(),
            nsock,
            "server {name}: {nsock} guest sockets should appear as {nsock} host sources: {sources:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Idle expiry.

/// Runs the timeline client in `tapsplice run OPTS` against a Sink server; the test thread plays
/// the server's part with `script(server, first hello)`. Returns the client's records.
fn timeline(
    opts: &[&str],
    duration_s: f64,
    actions: &str,
    script: impl FnOnce(&UdpServer),
) -> Vec<Json> {
    let bin = prereqs(&[]).expect("prereqs checked by the caller");
    let server = UdpServer::start(Mode::Sink);
    let argv = py_udp(
        "timeline",
        &[
            GATEWAY.into(),
            server.port().to_string(),
            duration_s.to_string(),
            actions.to_string(),
        ],
    );
    let mut run = BackgroundRun::start(&bin, opts, &argv);
    script(&server);
    let (status, stdout) = run.finish(Duration::from_secs_f64(duration_s) + SHORT);
    assert!(
        status.success(),
        "timeline client: {}\nstdout:\n{stdout}\nstderr:\n{}",
        describe_status(status),
        run.stderr()
    );
    let recs = Json::all_in(&stdout);
    assert!(
        recs.last().is_some_and(|r| r.has("done")),
        "timeline client did not finish: {stdout}"
    );
    recs
}

/// Texts socket `sock` received, in order.
fn received_texts(recs: &[Json], sock: &str) -> Vec<String> {
    recs.iter()
        .filter(|r| r.has("recv") && r.str("sock") == sock)
        .map(|r| r.str("recv").to_string())
        .collect()
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// The host server answers a guest socket once, pushes a datagram after 1.5 s idle (arrives),
/// then another after a long idle time `push2_at` s; then the guest sends again and gets an
/// answer on a new flow. Returns what the guest socket received.
fn idle_flow(opts: &[&str], push2_at: f64) -> Vec<String> {
    let actions = r#"[[0, "A", "hello"], [9.0, "A", "again"]]"#;
    let recs = timeline(opts, 11.0, actions, |srv| {
        let hello = srv.wait_for_text("hello", SHORT);
        let t0 = hello.at;
        srv.send_to(b"reply", hello.from);
        sleep_until(t0 + Duration::from_secs_f64(1.5));
        srv.send_to(b"push-1", hello.from);
        sleep_until(t0 + Duration::from_secs_f64(push2_at));
        srv.send_to(b"push-2", hello.from);
        let again = srv.wait_for_text("again", SHORT);
        srv.send_to(b"reply-again", again.from);
        eprintln!(
            "flow source at the server: first {}, after the idle time {}",
            hello.from, again.from
        );
    });
    received_texts(&recs, "A")
}

/// `--udp-timeout=3`: a flow with replies idle for more than 3 s is gone (a datagram from the
/// host to its old address no longer reaches the guest); before that it is kept; the next guest
/// datagram makes a new flow.
#[test]
fn udp_timeout_option_expires_idle_flow() {
    if prereqs(&[]).is_none() {
        return;
    }
    // push-1 at 1.5 s (idle 1.5 s < 3 s), push-2 at 7.5 s (idle 6 s > 3 s).
    let got = idle_flow(&["--udp-timeout=3"], 7.5);
    assert_eq!(
        got,
        ["reply", "push-1", "reply-again"],
        "with --udp-timeout=3: push-1 (idle 1.5 s) must arrive, push-2 (idle 6 s) must not"
    );
}

/// Without the option, a flow that has seen replies survives 6 s of idleness (the default is
/// 120 s): the host's push-2 still reaches the guest.
#[test]
fn udp_default_timeout_keeps_idle_flow() {
    if prereqs(&[]).is_none() {
        return;
    }
    let got = idle_flow(&[], 7.5);
    assert_eq!(
        got,
        ["reply", "push-1", "push-2", "reply-again"],
        "with the default timeout every datagram must arrive"
    );
}

/// Default timeouts, conntrack style: a flow that never saw a reply expires after 30 s, one that
/// did lives on (120 s). At 33 s the host pushes to both; only the answered flow delivers.
#[test]
fn udp_unanswered_flow_expires_after_30s_answered_flow_stays() {
    if prereqs(&[]).is_none() {
        return;
    }
    let actions = r#"[[0, "A", "hello-A"], [0, "B", "hello-B"]]"#;
    let recs = timeline(&[], 36.0, actions, |srv| {
        let a = srv.wait_for_text("hello-A", SHORT);
        let b = srv.wait_for_text("hello-B", SHORT);
        srv.send_to(b"reply-A", a.from);
        sleep_until(a.at + Duration::from_secs(33));
        srv.send_to(b"late-A", a.from);
        srv.send_to(b"late-B", b.from);
    });
    assert_eq!(
        received_texts(&recs, "A"),
        ["reply-A", "late-A"],
        "the answered flow must still deliver after 33 s idle"
    );
    assert_eq!(
        received_texts(&recs, "B"),
        Vec::<String>::new(),
        "the never-answered flow must have expired after 30 s"
    );
}

/// Expired flows give their host sockets back: 300 flows with replies under `--udp-timeout=2`
/// in slirp4netns mode; the process's fd count returns to its baseline.
#[test]
fn udp_expired_flows_release_host_sockets() {
    let Some(bin) = prereqs(&[]) else { return };
    const FLOWS: u32 = 300;
    const FD_SLACK: usize = 4;
    let ns = NetnsFixture::new();
    let mut main = SlirpProcess::start(&bin, &ns, &["-c", "--udp-timeout=2"]);
    let baseline = main.child.fd_count();
    let server = UdpServer::start(Mode::Echo);
    let out = run_capture(
        "UDP fan-out client in the namespace",
        &mut ns.exec(
            PYTHON,
            &py_udp_args(
                "fanout",
                &[GATEWAY.into(), server.port().to_string(), FLOWS.to_string()],
            ),
        ),
        None,
        LONG,
    );
    out.assert_success("UDP fan-out client");
    let r = Json::last_in(&out.stdout_str());
    assert!(r.ok(), "fan-out: {r:?}");
    let after = main.child.fd_count();
    let sources: std::collections::BTreeSet<_> = server.received().iter().map(|g| g.from).collect();
    assert_eq!(
        sources.len(),
        FLOWS as usize,
        "each guest socket should be its own flow"
    );
    let start = Instant::now();
    wait_for(
        Duration::from_secs(20),
        &format!("fd count back to baseline {baseline} (+{FD_SLACK}) after the flows expire"),
        || main.child.fd_count() <= baseline + FD_SLACK,
    );
    main.assert_running();
    eprintln!(
        "fds: baseline {baseline}, after {FLOWS} UDP flows {after}, back in {:?}",
        start.elapsed()
    );
}

/// Rootless: `tapsplice run` as an ordinary user carries UDP both ways through N+2 and passes a
/// port unreachable back.
#[test]
fn udp_rootless_run_echo_and_refused() {
    let Some(env) = RootlessUser::new() else {
        return;
    };
    if prereqs(&[]).is_none() {
        return;
    }
    let seed = 161;
    let server = UdpServer::start(Mode::Echo);
    let argv = py_udp(
        "echo",
        &[
            GATEWAY.into(),
            server.port().to_string(),
            seed.to_string(),
            join_sizes(SIZES_1500),
        ],
    );
    let out = env.tapsplice_run(&[], &argv, SHORT);
    out.assert_success("rootless UDP echo client");
    let (sent, recv) = Json::last_in(&out.stdout_str()).digests();
    let want = sequence_digest(seed, SIZES_1500);
    assert_eq!(sent, want);
    assert_eq!(recv, want, "echoes received by the guest differ");
    assert_eq!(
        server.received_digest(),
        want,
        "datagrams at the host server differ"
    );

    let argv = py_udp(
        "error",
        &[
            GATEWAY.into(),
            closed_udp_port(Ipv4Addr::LOCALHOST.into()).to_string(),
            "0".into(),
            "5".into(),
        ],
    );
    let out = env.tapsplice_run(&[], &argv, SHORT);
    out.assert_success("rootless UDP error probe");
    assert_refused(
        &Json::last_in(&out.stdout_str()),
        "rootless, closed port on the host's loopback",
    );
}
