//! Port forwards through the binary, with real namespaces, the kernel's TCP/UDP in the guest and
//! real clients on the host: both paths (stack and splice), the peer address the guest sees, IPv6
//! and dual-stack listeners, UDP, resets, descriptor hygiene over many connections, `run -p`, and
//! rootlesskit's `slirp4netns` port driver.
//!
//! Most tests run the binary in slirp4netns mode (`-c -r 3 -a SOCK`, see `fwd_common::Instance`)
//! on a namespace made by `ip netns add`, with a server inside it (`ip netns exec`), and add the
//! forwards through the API socket as rootlesskit does.

mod common;
mod fwd_common;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fwd_common::*;
use nix::sys::signal::Signal;

/// The address a client on the host's loopback has in the guest, per path.
const SEEN_VIA_STACK: &str = GATEWAY;
const SEEN_VIA_SPLICE: &str = GUEST_IP;

/// `len` bytes each way between a host client on `connect` (an address of the host) and a
/// server in the guest, through a forward on `host_addr`; checks both ends and returns the
/// peer address the server saw.
fn bulk(inst: &Instance, host_addr: &str, connect: &str, len: u64) -> String {
    let (up_seed, down_seed) = (101, 102);
    let server = inst.guest(
        "tcp server in the guest",
        PYTHON,
        &py_tcp_server("0.0.0.0", 0, 1, len, down_seed),
    );
    let guest_port = server.port();
    let host_port = inst.add_tcp(host_addr, guest_port);
    let addr: SocketAddr = format!("{connect}:{host_port}").parse().expect("address");
    let ex = exchange(addr, len, up_seed, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("client through the forward on {addr}: {e}"));
    let report = server.next(SHORT);
    let (srv_recv, srv_sent) = server_digests(&report);
    let (up, down) = (pattern_digest(up_seed, len), pattern_digest(down_seed, len));
    assert_eq!(ex.sent, up, "the client did not send the expected stream");
    assert_eq!(srv_recv, up, "host -> guest bytes differ");
    assert_eq!(
        srv_sent, down,
        "the server did not send the expected stream"
    );
    assert_eq!(ex.received, down, "guest -> host bytes differ");
    eprintln!(
        "{len} bytes each way via {addr} in {:?} ({:.2} Gbit/s both ways together)",
        ex.elapsed,
        (2 * len * 8) as f64 / ex.elapsed.as_secs_f64() / 1e9
    );
    report.str("peer").to_string()
}

#[test]
fn stack_path_carries_256mib_each_way_and_shows_the_gateway() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &["--forward-path=stack"]);
    let peer = bulk(&inst, "127.0.0.1", "127.0.0.1", 256 * MIB);
    assert_eq!(peer, SEEN_VIA_STACK, "a loopback client appears as N+2");
}

#[test]
fn stack_path_carries_256mib_each_way_at_mtu_65520() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &["--forward-path=stack", "--mtu=65520"]);
    let peer = bulk(&inst, "127.0.0.1", "127.0.0.1", 256 * MIB);
    assert_eq!(peer, SEEN_VIA_STACK);
}

#[test]
fn splice_path_carries_256mib_each_way_and_shows_the_guest_itself() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &[]);
    let peer = bulk(&inst, "127.0.0.1", "127.0.0.1", 256 * MIB);
    assert_eq!(
        peer, SEEN_VIA_SPLICE,
        "a spliced connection is local to the guest's namespace"
    );
}

#[test]
fn guest_sees_the_real_address_of_a_client_in_another_namespace() {
    let Some(bin) = prereqs(&[]) else { return };
    let peer = VethPeer::new();
    let inst = Instance::start(&bin, &[]);
    let len = 16 * MIB;
    let (up_seed, down_seed) = (111, 112);
    let server = inst.guest(
        "tcp server in the guest",
        PYTHON,
        &py_tcp_server("0.0.0.0", 0, 1, len, down_seed),
    );
    let host_port = inst.add_tcp("0.0.0.0", server.port());
    let out = run_capture(
        "python client in the peer namespace",
        &mut peer.ns.exec(
            PYTHON,
            &py_client(&peer.host_ip.to_string(), host_port, len, up_seed, 10),
        ),
        None,
        Duration::from_secs(120),
    );
    out.assert_success("python client in the peer namespace");
    let (client_sent, client_recv) = Json::last_in(&out.stdout_str()).digests();
    let report = server.next(SHORT);
    let (srv_recv, srv_sent) = server_digests(&report);
    assert_eq!(client_sent, pattern_digest(up_seed, len));
    assert_eq!(srv_recv, client_sent, "peer -> guest bytes differ");
    assert_eq!(srv_sent, pattern_digest(down_seed, len));
    assert_eq!(client_recv, srv_sent, "guest -> peer bytes differ");
    assert_eq!(
        report.str("peer"),
        peer.peer_ip.to_string(),
        "the guest must see the client's own address"
    );
    drop(server);
    drop(inst);
    drop(peer);
}

#[test]
fn ipv6_loopback_forward_carries_data_on_both_paths() {
    let Some(bin) = prereqs(&[]) else { return };
    for (opts, seen) in [
        (&[][..], SEEN_VIA_SPLICE),
        (&["--forward-path=stack"][..], SEEN_VIA_STACK),
    ] {
        let inst = Instance::start(&bin, opts);
        let peer = bulk(&inst, "::1", "[::1]", 8 * MIB);
        assert_eq!(peer, seen, "with {opts:?}");
    }
}

#[test]
fn dual_stack_listener_serves_ipv4_and_ipv6_clients() {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, &[]);
    let len = MIB;
    let server = inst.guest(
        "tcp server in the guest",
        PYTHON,
        &py_tcp_server("0.0.0.0", 0, 2, len, 121),
    );
    let host_port = inst.add_tcp("::", server.port());
    for connect in ["127.0.0.1", "[::1]"] {
        let addr: SocketAddr = format!("{connect}:{host_port}").parse().unwrap();
        let ex = exchange(addr, len, 122, SHORT)
            .unwrap_or_else(|e| panic!("client via {addr} to a [::] forward: {e}"));
        let (recv, sent) = server_digests(&server.next(SHORT));
        assert_eq!(ex.sent, recv, "via {addr}");
        assert_eq!(ex.received, sent, "via {addr}");
        assert_eq!(sent, pattern_digest(121, len));
    }
    let list = inst.request(r#"{"execute":"list_hostfwd"}"#);
    assert!(list.contains(r#""host_addr":"::""#), "{list}");
}

/// Sends `payload` on `sock` until the same bytes come back (a lost datagram is resent, at
/// most 5 times).
fn echo(sock: &UdpSocket, payload: &[u8]) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 70_000];
    for _ in 0..5 {
        sock.send(payload).expect("send datagram");
        match sock.recv(&mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!(
        "no echo for a {}-byte datagram after 5 tries",
        payload.len()
    );
}

/// UDP through forwards on 127.0.0.1 and [::]: datagrams of `sizes` echoed exactly, two
/// clients kept apart, the guest sees loopback clients as N+2.
fn udp_forwards(opts: &[&str], sizes: &[usize]) {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, opts);
    let mut server = inst.guest("udp echo in the guest", PYTHON, &py_udp_echo("0.0.0.0", 0));
    let guest_port = server.port();
    let v4_port = free_port("127.0.0.1");
    inst.add("udp", "127.0.0.1", v4_port, guest_port);
    let dual_port = free_port("::");
    inst.add("udp", "::", dual_port, guest_port);

    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.connect(("127.0.0.1", v4_port)).unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    b.connect(("127.0.0.1", v4_port)).unwrap();
    let c = UdpSocket::bind("[::1]:0").unwrap();
    c.connect(format!("[::1]:{dual_port}")).unwrap();
    for (i, &size) in sizes.iter().enumerate() {
        for (name, sock) in [("a", &a), ("b", &b), ("c", &c)] {
            let payload = pattern_bytes(130 + i as u64, size as u64);
            let tagged: Vec<u8> = name.bytes().chain(payload).collect();
            assert!(
                echo(sock, &tagged) == tagged,
                "client {name}: a {size}-byte datagram came back different"
            );
        }
    }
    let first = server.next(SHORT);
    assert_eq!(
        first.str("peer"),
        GATEWAY,
        "a loopback client appears as N+2"
    );
    a.send(b"quit").unwrap();
    let status = server.child.wait_deadline(SHORT);
    assert!(status.success(), "udp echo: {}", describe_status(status));
}

#[test]
fn udp_forwards_carry_datagrams_both_ways() {
    // Guest answers up to its MTU come back whole; host datagrams larger than the MTU reach the
    // guest in IPv4 fragments (see `udp_forwards_carry_large_datagrams_at_mtu_65520`).
    udp_forwards(&[], &[1, 100, 1400, 1471]);
}

#[test]
fn udp_forwards_carry_large_datagrams_at_mtu_65520() {
    udp_forwards(&["--mtu=65520"], &[1, 9000, 30_000, 65_000]);
}

/// The client is accepted, then reset, when the guest has nothing on the port.
fn refused_by_the_guest(opts: &[&str]) {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, opts);
    // Nothing listens on guest port 9 (discard) in a fresh namespace.
    let host_port = inst.add_tcp("127.0.0.1", 9);
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", host_port)).expect("the host listener accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    let got = read_retrying(&mut s, &mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected a reset, got {got:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the reset took {:?}",
        start.elapsed()
    );
}

#[test]
fn guest_refusal_resets_the_client_on_the_stack_path() {
    refused_by_the_guest(&["--forward-path=stack"]);
}

#[test]
fn guest_refusal_resets_the_client_on_the_splice_path() {
    refused_by_the_guest(&[]);
}

/// The guest closes first: the client reads the guest's stream to EOF, then sends its own,
/// which reaches the guest whole.
fn guest_closes_first(opts: &[&str]) {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, opts);
    let (down_len, up_len, down_seed, up_seed) = (8 * MIB, 8 * MIB + 3, 181, 182);
    let server = inst.guest(
        "send-first server in the guest",
        PYTHON,
        &py_mode(
            "send_first",
            &[
                "0.0.0.0".into(),
                "0".into(),
                down_len.to_string(),
                down_seed.to_string(),
            ],
        ),
    );
    let host_port = inst.add_tcp("127.0.0.1", server.port());
    let mut s = TcpStream::connect(("127.0.0.1", host_port)).expect("connect");
    s.set_read_timeout(Some(SHORT)).unwrap();
    s.set_write_timeout(Some(SHORT)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the guest's stream, then EOF");
    assert_eq!(
        Digest::of(&got),
        pattern_digest(down_seed, down_len),
        "guest -> host"
    );
    let mut sent = Hasher::default();
    for_each_chunk(up_seed, up_len, |c| {
        std::io::Write::write_all(&mut s, c)?;
        sent.update(c);
        Ok(())
    })
    .expect("send after the guest's FIN");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let report = server.next(SHORT);
    let (recv, _) = server_digests(&report);
    assert_eq!(recv, sent.finish(), "host -> guest after the guest's FIN");
}

#[test]
fn guest_closing_first_keeps_the_other_direction_on_the_stack_path() {
    guest_closes_first(&["--forward-path=stack"]);
}

#[test]
fn guest_closing_first_keeps_the_other_direction_on_the_splice_path() {
    guest_closes_first(&[]);
}

/// A reset on either side reaches the other as a reset.
fn resets_pass_both_ways(opts: &[&str]) {
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, opts);
    // The guest resets: the client's read fails with ECONNRESET.
    let server = inst.guest(
        "resetting server in the guest",
        PYTHON,
        &py_mode("rst", &["0.0.0.0".into(), "0".into()]),
    );
    let host_port = inst.add_tcp("127.0.0.1", server.port());
    let mut s = TcpStream::connect(("127.0.0.1", host_port)).expect("connect");
    s.set_read_timeout(Some(SHORT)).unwrap();
    std::io::Write::write_all(&mut s, &[7u8; 1000]).unwrap();
    assert!(server.next(SHORT).ok());
    let mut buf = [0u8; 64];
    let got = read_retrying(&mut s, &mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "after the guest's RST: {got:?}"
    );
    // The client resets: the guest's read fails with ECONNRESET.
    let server = inst.guest(
        "acknowledging server in the guest",
        PYTHON,
        &py_mode("ack_then_read", &["0.0.0.0".into(), "0".into()]),
    );
    let host_port = inst.add_tcp("127.0.0.1", server.port());
    let mut s = TcpStream::connect(("127.0.0.1", host_port)).expect("connect");
    s.set_read_timeout(Some(SHORT)).unwrap();
    std::io::Write::write_all(&mut s, &[7u8; 1000]).unwrap();
    let mut k = [0u8; 1];
    s.read_exact(&mut k).expect("the guest's acknowledgement");
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let report = server.next(SHORT);
    assert!(!report.ok(), "the guest saw a clean end: {report:?}");
    assert_eq!(
        report.i64("errno"),
        i64::from(libc::ECONNRESET),
        "{report:?}"
    );
}

#[test]
fn resets_pass_both_ways_on_the_stack_path() {
    resets_pass_both_ways(&["--forward-path=stack"]);
}

#[test]
fn resets_pass_both_ways_on_the_splice_path() {
    resets_pass_both_ways(&[]);
}

/// Peak resident memory of a process in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A guest that does not read holds the client back: the client can queue only a bounded
/// amount (buffers along the way), tapsplice's memory stays small, and once the guest reads,
/// every byte arrives.
fn back_pressure(opts: &[&str]) {
    use std::io::Write;
    /// What the client may get queued against a stalled reader: socket buffers on the host
    /// and in the guest, smoltcp's 512 KiB or a 64 KiB pipe.
    const MAX_QUEUED: u64 = 24 * MIB;
    const MAX_RSS_KIB: u64 = 16 * 1024;
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, opts);
    let dir = TempDir::new("tsgate");
    let gate = dir.join("open");
    let server = inst.guest(
        "gated server in the guest",
        PYTHON,
        &py_mode(
            "gated",
            &[
                "0.0.0.0".into(),
                "0".into(),
                gate.to_string_lossy().into_owned(),
            ],
        ),
    );
    let host_port = inst.add_tcp("127.0.0.1", server.port());
    let len = 128 * MIB;
    let data = pattern_bytes(211, len);
    let mut s = TcpStream::connect(("127.0.0.1", host_port)).expect("connect");
    server.next(SHORT); // accepted
    s.set_nonblocking(true).unwrap();
    let mut written = 0usize;
    let mut last_progress = Instant::now();
    let start = Instant::now();
    // Write until nothing more is taken for a second.
    while last_progress.elapsed() < Duration::from_secs(1) {
        assert!(
            start.elapsed() < SHORT,
            "the client never stopped being able to write"
        );
        match s.write(&data[written..]) {
            Ok(n) => {
                written += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("write while the guest stalls: {e}"),
        }
    }
    assert!(
        (written as u64) < MAX_QUEUED,
        "{written} bytes taken while the guest read nothing"
    );
    let rss = peak_rss_kib(inst.child.pid());
    std::fs::write(&gate, b"").unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(&data[written..])
        .expect("the rest, once the guest reads");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (recv, _) = server_digests(&server.next(Duration::from_secs(120)));
    assert_eq!(recv, Digest::of(&data), "bytes at the guest");
    let rss = rss.max(peak_rss_kib(inst.child.pid()));
    assert!(rss < MAX_RSS_KIB, "tapsplice peaked at {rss} KiB");
    eprintln!("{opts:?}: {written} bytes queued against a stalled guest; peak RSS {rss} KiB");
}

#[test]
fn back_pressure_holds_the_client_on_the_stack_path() {
    back_pressure(&["--forward-path=stack"]);
}

#[test]
fn back_pressure_holds_the_client_on_the_splice_path() {
    back_pressure(&[]);
}

/// The binary's child processes (the splice path's helper).
fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// One small exchange through `port`; the peer address the guest server reported.
fn peer_of_one_connection(server: &GuestProc, port: u16) -> String {
    let ex = exchange(format!("127.0.0.1:{port}").parse().unwrap(), 10, 201, SHORT)
        .expect("exchange through the forward");
    let report = server.next(SHORT);
    let (recv, sent) = server_digests(&report);
    assert_eq!((ex.sent, ex.received), (recv, sent));
    report.str("peer").to_string()
}

#[test]
fn splice_falls_back_to_the_stack_when_the_helper_dies_or_hangs() {
    let Some(bin) = prereqs(&[]) else { return };
    for signal in [Signal::SIGKILL, Signal::SIGSTOP] {
        let inst = Instance::start(&bin, &[]);
        let server = inst.guest(
            "tcp server in the guest",
            PYTHON,
            &py_tcp_server("0.0.0.0", 0, 0, 100, 202),
        );
        let port = inst.add_tcp("127.0.0.1", server.port());
        assert_eq!(peer_of_one_connection(&server, port), SEEN_VIA_SPLICE);
        let helpers = children(inst.child.pid());
        assert_eq!(helpers.len(), 1, "one helper process: {helpers:?}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(helpers[0]), signal).unwrap();
        // Sockets made before may still be used; after at most a pool's worth, and (for a
        // hung helper) its timeout, connections take the stack path.
        let mut peers = Vec::new();
        for _ in 0..8 {
            peers.push(peer_of_one_connection(&server, port));
        }
        assert_eq!(
            peers.last().map(String::as_str),
            Some(SEEN_VIA_STACK),
            "after {signal}: {peers:?}"
        );
        wait_for(SHORT, "the helper to be reaped", || {
            children(inst.child.pid()).is_empty()
        });
    }
}

/// 1,000 forwarded connections one after another: every byte checked, and the descriptor
/// count back at its baseline afterwards.
fn thousand_connections(opts: &[&str]) {
    const CONNS: u32 = 1000;
    const FD_SLACK: usize = 2;
    let Some(bin) = prereqs(&[]) else { return };
    let inst = Instance::start(&bin, opts);
    let (len, up_seed, down_seed) = (1000u64, 141, 142);
    let server = inst.guest(
        "tcp server in the guest",
        PYTHON,
        &py_tcp_server("0.0.0.0", 0, 0, len, down_seed),
    );
    let host_port = inst.add_tcp("127.0.0.1", server.port());
    let addr: SocketAddr = format!("127.0.0.1:{host_port}").parse().unwrap();
    let (up, down) = (pattern_digest(up_seed, len), pattern_digest(down_seed, len));
    // One connection first, so lazily made descriptors (the helper's socket) are counted.
    exchange(addr, len, up_seed, SHORT).expect("first connection");
    server.next(SHORT);
    let baseline = inst.child.fd_count();
    let start = Instant::now();
    for i in 0..CONNS {
        let ex =
            exchange(addr, len, up_seed, SHORT).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(ex.sent, up, "connection {i}");
        assert_eq!(
            ex.received, down,
            "connection {i}: guest -> host bytes differ"
        );
    }
    let took = start.elapsed();
    for i in 0..CONNS {
        let report = server.next(SHORT);
        let (recv, _) = server_digests(&report);
        assert_eq!(recv, up, "connection {i} at the guest server");
    }
    wait_for(
        Duration::from_secs(30),
        &format!("descriptors back to the baseline {baseline} (+{FD_SLACK})"),
        || inst.child.fd_count() <= baseline + FD_SLACK,
    );
    eprintln!(
        "{CONNS} connections with {opts:?} in {took:?}; fds {baseline} -> {}",
        inst.child.fd_count()
    );
}

#[test]
fn thousand_connections_leave_no_descriptors_on_the_stack_path() {
    thousand_connections(&["--forward-path=stack"]);
}

#[test]
fn thousand_connections_leave_no_descriptors_on_the_splice_path() {
    thousand_connections(&[]);
}

/// Two consecutive free TCP ports on 127.0.0.1.
fn free_port_pair() -> u16 {
    for _ in 0..64 {
        let p = free_port("127.0.0.1");
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}

#[test]
fn run_publishes_port_ranges_and_udp() {
    let Some(bin) = prereqs(&[]) else { return };
    let hp = free_port_pair();
    let up = free_port("127.0.0.1");
    let len = 64 * 1024;
    // Two TCP servers (guest ports 8000 and 8001, one connection each) and a UDP echo on 5353.
    let script = r#"python3 -c "$0" tcp 0.0.0.0 8000 1 "$1" 151 &
python3 -c "$0" tcp 0.0.0.0 8001 1 "$1" 152 &
python3 -c "$0" udp 0.0.0.0 5353 &
wait"#;
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg("-p")
        .arg(format!("127.0.0.1:{}-{}:8000-8001", hp, hp + 1))
        .arg("--publish")
        .arg(format!("127.0.0.1:{up}:5353/udp"))
        .args(["--", "sh", "-c", script, FWD_PY, &len.to_string()])
        .env("PATH", "/usr/bin:/bin");
    let mut run = GuestProc::spawn("tapsplice run -p", cmd);
    for _ in 0..3 {
        run.next(SHORT); // the three {"port":...} lines
    }
    for (i, port) in [hp, hp + 1].into_iter().enumerate() {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let ex = exchange(addr, 1000, 150, SHORT)
            .unwrap_or_else(|e| panic!("client to the -p forward {addr}: {e}"));
        assert_eq!(
            ex.received,
            pattern_digest(151 + i as u64, len),
            "via {addr}"
        );
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(("127.0.0.1", up)).unwrap();
    assert_eq!(echo(&sock, b"ping over -p"), b"ping over -p");
    sock.send(b"quit").unwrap();
    let status = run.child.wait_deadline(SHORT);
    assert!(
        status.success(),
        "tapsplice run: {}\n{}",
        describe_status(status),
        run.child.log()
    );
}

#[test]
fn run_rejects_a_port_in_use_before_starting_the_command() {
    let Some(bin) = prereqs(&[]) else { return };
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = TempDir::new("tsrunp");
    let marker = dir.join("ran");
    let out = run_capture(
        "tapsplice run -p with a port in use",
        Command::new(&bin)
            .arg("run")
            .arg("-p")
            .arg(format!("127.0.0.1:{port}:80"))
            .args(["--", "touch"])
            .arg(&marker),
        None,
        SHORT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "-p 127.0.0.1:{port}:80/tcp: cannot listen on 127.0.0.1:{port}/tcp: Address already in use"
        )
    );
    assert!(!Path::new(&marker).exists(), "the command ran");
}

// ---------------------------------------------------------------------------------------------
// rootlesskit's slirp4netns port driver.

/// The port rootlesskit's `-p` publishes (its flag syntax needs a fixed port).
const RK_PORT: u16 = 18080;

#[test]
fn rootlesskit_port_driver_publishes_a_port_and_removes_it_on_exit() {
    let Some(env) = RootlessEnv::new(&["rootlesskit", "newuidmap", "newgidmap", "curl"]) else {
        return;
    };
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", RK_PORT)) {
        panic!(
            "this test needs 127.0.0.1:{RK_PORT} free (rootlesskit's -p takes a fixed port): {e}"
        );
    }
    let site = env.dir.join("site");
    std::fs::create_dir(&site).unwrap();
    let body = pattern_bytes(161, 300_000);
    std::fs::write(site.join("index.bin"), &body).unwrap();
    let state = env.run_dir().join("state");
    let mut cmd = env.as_test_user(&find_tool("rootlesskit").expect("rootlesskit"));
    cmd.arg("--net=slirp4netns")
        .arg(format!("--slirp4netns-binary={}", env.bin.display()))
        .arg("--port-driver=slirp4netns")
        .arg(format!("-p=127.0.0.1:{RK_PORT}:8080/tcp"))
        .arg(format!("--state-dir={}", state.display()))
        .args([PYTHON, "-m", "http.server", "8080", "--bind", "0.0.0.0"])
        .arg("--directory")
        .arg(&site)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let mut rk = Child::spawn_logged("rootlesskit", &mut cmd, env.dir.join("rk.log"));
    let url = format!("http://127.0.0.1:{RK_PORT}/index.bin");
    let fetched = wait_for_value(
        Duration::from_secs(60),
        &format!("curl {url} through rootlesskit's forward"),
        || {
            assert!(
                rk.try_status().is_none(),
                "rootlesskit exited early:\n{}",
                rk.log()
            );
            let out = run_capture(
                "curl",
                Command::new("curl").args([
                    "-sS",
                    "--fail",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "10",
                    &url,
                ]),
                None,
                SHORT,
            );
            out.status.success().then_some(out.stdout)
        },
    );
    assert_eq!(
        Digest::of(&fetched),
        Digest::of(&body),
        "body through the forward"
    );
    rk.signal(Signal::SIGTERM);
    let status = rk.wait_deadline(Duration::from_secs(30));
    eprintln!("rootlesskit ended: {}", describe_status(status));
    wait_for(
        Duration::from_secs(10),
        &format!("127.0.0.1:{RK_PORT} to refuse connections after rootlesskit exited"),
        || TcpStream::connect(("127.0.0.1", RK_PORT)).is_err(),
    );
}
