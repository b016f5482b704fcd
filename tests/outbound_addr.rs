//! `--outbound-addr=IPv4|IFNAME` and `--outbound-addr6=IPv6|IFNAME` through the binary: the host
//! sockets that carry a guest's TCP, UDP and ping towards a remote host are bound to that source
//! address. The remote host is a veth peer namespace whose servers report the source address
//! they see (TCP and UDP servers, and a raw ICMP socket for echo requests); the host end of the
//! veth has two addresses, and the kernel's own choice of source (`ip route get`) is checked to
//! be the other one, so a test passes only when the option took effect. Loopback destinations
//! (N+2, fd00::2) are never bound. Bad values fail like slirp4netns. Root tests, except the
//! command-line one.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::*;

const SHORT: Duration = Duration::from_secs(30);
/// TCP bytes each way in the binding tests (checked at both ends).
const TCP_LEN: u64 = 2 * MIB;
/// UDP datagram sizes in the binding tests, and the seed of their payloads.
const UDP_SIZES: &str = "1,200,1200,1400";
const UDP_SEED: u64 = 77;

/// slirp4netns's error line for a bad `--outbound-addr` (exit status 1).
const V4_ERROR: &str = "outbound-addr has to be valid ipv4 address or interface name.";
/// slirp4netns 1.2.0's for a bad `--outbound-addr6` (sic), which tapsplice keeps to the byte.
const V6_ERROR: &str = "outbound-addr has to be valid ipv4 address or iterface name.";

/// The servers a binding test talks to (in the peer, or on the host's loopback): TCP (one
/// connection), UDP echo and, for ping, an ICMP watcher. Each reports the source it sees.
struct PeerServers {
    tcp: LineChild,
    tcp_port: u16,
    udp: LineChild,
    udp_port: u16,
    icmp: Option<LineChild>,
}

impl PeerServers {
    fn start(peer: &DualStackPeer, ip: IpAddr, down_seed: u64, icmp: bool) -> PeerServers {
        let mut servers = PeerServers::start_in(Some(&peer.ns), ip, down_seed);
        servers.icmp = icmp.then(|| {
            let family = if ip.is_ipv6() { "6" } else { "4" };
            let mut w = py_net_child(
                "icmp_watch in the peer",
                Some(&peer.ns),
                "icmp_watch",
                &[s(family), s(20)],
            );
            w.wait_json("the raw socket to be ready", SHORT, |j| j.has("ready"));
            w
        });
        servers
    }

    /// The TCP and UDP servers on `ip`, in `ns` (the peer's) or on the host when None.
    fn start_in(ns: Option<&NetnsFixture>, ip: IpAddr, down_seed: u64) -> PeerServers {
        let place = if ns.is_some() { " in the peer" } else { "" };
        let (tcp, tcp_port) = py_net_server(
            &format!("tcp_server on {ip}{place}"),
            ns,
            "tcp_server",
            &[s(ip), s(TCP_LEN), s(down_seed), s(1)],
        );
        let (udp, udp_port) = py_net_server(
            &format!("udp_server on {ip}{place}"),
            ns,
            "udp_server",
            &[s(ip), s(20)],
        );
        PeerServers {
            tcp,
            tcp_port,
            udp,
            udp_port,
            icmp: None,
        }
    }

    /// Checks the guest's reports in `out` and what the servers saw: every byte, and every
    /// connection, datagram and echo request from `want_src`.
    fn check(&mut self, out: &str, prefix: &str, want_src: IpAddr, up_seed: u64, down_seed: u64) {
        let client = json_of_mode_prefixed(out, prefix, "tcp_client");
        let srv = self
            .tcp
            .wait_json("the TCP connection's report", SHORT, |j| j.has("ok"));
        assert_exchange(
            "peer",
            &client.digests(),
            &srv.digests(),
            (up_seed, down_seed, TCP_LEN),
        );
        assert_eq!(
            srv.str("peer").parse::<IpAddr>().ok(),
            Some(want_src),
            "source address of the TCP connection at the peer: {srv:?}"
        );

        let echo = json_of_mode_prefixed(out, prefix, "udp_echo");
        assert!(echo.ok(), "UDP echo failed: {echo:?}");
        let (sent, recv) = echo.digests();
        assert_eq!(sent, recv, "UDP echoes differ from what was sent: {echo:?}");
        let sizes: Vec<usize> = UDP_SIZES.split(',').map(|x| x.parse().unwrap()).collect();
        let at_peer = assert_udp_server_got(
            &mut self.udp,
            "the peer",
            want_src,
            (UDP_SEED, &sizes),
            SHORT,
        );
        assert_eq!(at_peer, sent, "datagrams at the peer vs sent by the guest");

        if let Some(icmp) = &mut self.icmp {
            let reqs = icmp.wait_json_n("3 echo requests", 3, SHORT, |j| j.has("seq"));
            for r in &reqs {
                assert_eq!(
                    r.str("from").parse::<IpAddr>().ok(),
                    Some(want_src),
                    "source address of an echo request at the peer: {r:?}"
                );
            }
        }
    }
}

/// Like [`json_of_mode`], among the lines after the line `=== {prefix}` (up to the next `===`).
fn json_of_mode_prefixed(out: &str, prefix: &str, mode: &str) -> Json {
    let part = out
        .split(&format!("=== {prefix}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no `=== {prefix}` section in the output:\n{out}"))
        .split("\n===")
        .next()
        .unwrap();
    json_of_mode(part, mode)
}

/// The guest part of a binding test towards `dest`: TCP exchange, UDP echo and (when `ping`)
/// `ping -c 3`, after a `=== {prefix}` marker line. Arguments: `$1` dest, `$2` TCP port, `$3`
/// TCP up seed, `$4` UDP port (and `$5` the prefix), as built by [`guest_args`].
const GUEST_PART: &str = r#"
echo "=== $5"
py tcp_client "$1" "$2" "$TCP_LEN" "$3" 10
py udp_echo "$1" "$4" "$UDP_SEED" "$UDP_SIZES" 5
if [ "$PING" = 1 ]; then ping -n -c 3 -i 0.2 -W 2 "$1" || echo "ping failed"; fi
"#;

fn guest_body(ipv6: bool, ping: bool, parts: usize) -> String {
    let mut body = format!(
        "TCP_LEN={TCP_LEN}; UDP_SEED={UDP_SEED}; UDP_SIZES={UDP_SIZES}; PING={}\npart() {{ {GUEST_PART} }}\n",
        u8::from(ping)
    );
    if ipv6 {
        body.push_str("wait_slaac\n");
    }
    for _ in 0..parts {
        // Each part takes its five arguments, then they are shifted away.
        body.push_str("part \"$@\"; shift 5\n");
    }
    body
}

fn guest_args(dest: IpAddr, servers: &PeerServers, up_seed: u64, prefix: &str) -> Vec<String> {
    vec![
        s(dest),
        s(servers.tcp_port),
        s(up_seed),
        s(servers.udp_port),
        s(prefix),
    ]
}

/// `tapsplice run OPTS -- guest script`, which must succeed; returns its stdout.
fn run(bin: &Path, opts: &[&str], body: &str, args: &[String]) -> String {
    let out = tapsplice_run_capture(bin, opts, &guest_sh(body, args), None, SHORT);
    out.assert_success(&format!("guest script in tapsplice run {opts:?}"));
    out.stdout_str()
}

fn ping_ok(out: &str, prefix: &str, target: IpAddr) {
    let part = out
        .split(&format!("=== {prefix}\n"))
        .nth(1)
        .and_then(|p| p.split("\n===").next())
        .unwrap_or_default();
    assert_ping_transcript(part, &target.to_string(), 3, 64);
}

/// Makes `src` the source the host's routing picks towards the peer's prefix of its family (the
/// `src` of the on-link route; IPv6 would otherwise take the newest address), and checks it.
fn prefer_source(peer: &DualStackPeer, src: IpAddr) {
    let (fam, prefix, metric, dest) = match src {
        IpAddr::V4(_) => ("-4", peer.prefix4.as_str(), "0", IpAddr::V4(peer.peer4)),
        IpAddr::V6(_) => ("-6", peer.prefix6.as_str(), "256", IpAddr::V6(peer.peer6)),
    };
    sh_ok(
        "ip",
        &[
            fam,
            "route",
            "replace",
            prefix,
            "dev",
            peer.host_if(),
            "proto",
            "kernel",
            "scope",
            "link",
            "metric",
            metric,
            "src",
            &src.to_string(),
        ],
    );
    assert_eq!(
        DualStackPeer::host_route_src(dest),
        src,
        "precondition: the host's own choice of source towards {dest}"
    );
}

/// `--outbound-addr=10.202.X.5`: TCP, UDP and ping to the peer come from .5, not from .1 that
/// the host's routing would pick.
#[test]
fn outbound_addr_ipv4_binds_tcp_udp_and_ping() {
    let Some(bin) = prereqs(&["ping"]) else {
        return;
    };
    let peer = DualStackPeer::new(&[1, 5], &[]);
    let (default_src, bound) = (peer.host4[0], peer.host4[1]);
    let dest = IpAddr::V4(peer.peer4);
    prefer_source(&peer, IpAddr::V4(default_src));
    let mut servers = PeerServers::start(&peer, dest, 702, true);
    let opt = format!("--outbound-addr={bound}");
    let out = run(
        &bin,
        &[&opt],
        &guest_body(false, true, 1),
        &guest_args(dest, &servers, 701, "v4"),
    );
    servers.check(&out, "v4", IpAddr::V4(bound), 701, 702);
    ping_ok(&out, "v4", dest);
    drop(servers);
    drop(peer);
}

/// `-6 --outbound-addr6=fd42:X:Y::5`: TCP, UDP and ping6 to the peer come from ::5.
#[test]
fn outbound_addr6_binds_tcp_udp_and_ping6() {
    let Some(bin) = prereqs(&["ping"]) else {
        return;
    };
    let peer = DualStackPeer::new(&[1], &[1, 5]);
    let (default_src, bound) = (peer.host6[0], peer.host6[1]);
    let dest = IpAddr::V6(peer.peer6);
    prefer_source(&peer, IpAddr::V6(default_src));
    let mut servers = PeerServers::start(&peer, dest, 712, true);
    let opt = format!("--outbound-addr6={bound}");
    let out = run(
        &bin,
        &["-6", &opt],
        &guest_body(true, true, 1),
        &guest_args(dest, &servers, 711, "v6"),
    );
    servers.check(&out, "v6", IpAddr::V6(bound), 711, 712);
    ping_ok(&out, "v6", dest);
    drop(servers);
    drop(peer);
}

/// The first address `ip -o addr show dev IF` lists for the family (what getifaddrs returns
/// first, the same netlink dump), global scope only.
fn first_listed(ifname: &str, v6: bool) -> IpAddr {
    let fam = if v6 { "-6" } else { "-4" };
    let out = sh_ok(
        "ip",
        &[fam, "-o", "addr", "show", "dev", ifname, "scope", "global"],
    )
    .stdout_str();
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next())
        .find_map(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {fam} address listed on {ifname}:\n{out}"))
}

/// `--outbound-addr=IFNAME` and `--outbound-addr6=IFNAME` (the host end of the veth) use the
/// interface's first address of each family. The host end has two addresses of each family and
/// its route prefers the other one as source, so the kernel's default would differ.
#[test]
fn outbound_addr_interface_name_uses_its_first_address() {
    let Some(bin) = prereqs(&[]) else { return };
    let peer = DualStackPeer::new(&[5, 1], &[5, 1]);
    let ifname = peer.host_if().to_string();
    let mut want = Vec::new();
    for (v6, dest) in [
        (false, IpAddr::V4(peer.peer4)),
        (true, IpAddr::V6(peer.peer6)),
    ] {
        let first = first_listed(&ifname, v6);
        let other: IpAddr = if v6 {
            let o = peer
                .host6
                .iter()
                .find(|a| IpAddr::V6(**a) != first)
                .unwrap();
            IpAddr::V6(*o)
        } else {
            let o = peer
                .host4
                .iter()
                .find(|a| IpAddr::V4(**a) != first)
                .unwrap();
            IpAddr::V4(*o)
        };
        assert_ne!(first, other);
        prefer_source(&peer, other);
        want.push((dest, first));
    }
    let mut v4 = PeerServers::start(&peer, want[0].0, 722, false);
    let mut v6 = PeerServers::start(&peer, want[1].0, 732, false);
    let mut args = guest_args(want[0].0, &v4, 721, "v4");
    args.extend(guest_args(want[1].0, &v6, 731, "v6"));
    let o4 = format!("--outbound-addr={ifname}");
    let o6 = format!("--outbound-addr6={ifname}");
    let out = run(&bin, &["-6", &o4, &o6], &guest_body(true, false, 2), &args);
    v4.check(&out, "v4", want[0].1, 721, 722);
    v6.check(&out, "v6", want[1].1, 731, 732);
    drop((v4, v6));
    drop(peer);
}

/// With both options set, the gateway still reaches the host's loopback (10.0.2.2 -> 127.0.0.1,
/// fd00::2 -> ::1) over TCP and UDP, unbound: the loopback servers see 127.0.0.1 and ::1 as the
/// source, not the outbound addresses.
#[test]
fn outbound_addr_not_used_towards_loopback() {
    let Some(bin) = prereqs(&[]) else { return };
    let peer = DualStackPeer::new(&[1, 5], &[1, 5]);
    let (bound4, bound6) = (peer.host4[1], peer.host6[1]);
    let mut args = Vec::new();
    let mut servers = Vec::new();
    for (i, (listen, dest)) in [("127.0.0.1", GATEWAY), ("::1", GATEWAY6)]
        .iter()
        .enumerate()
    {
        let listen: IpAddr = listen.parse().unwrap();
        let srv = PeerServers::start_in(None, listen, 742 + 10 * i as u64);
        let dest: IpAddr = dest.parse().unwrap();
        let prefix = if i == 0 { "v4" } else { "v6" };
        args.extend(guest_args(dest, &srv, 741 + 10 * i as u64, prefix));
        servers.push((srv, listen, prefix, i as u64));
    }
    let o4 = format!("--outbound-addr={bound4}");
    let o6 = format!("--outbound-addr6={bound6}");
    let out = run(&bin, &["-6", &o4, &o6], &guest_body(true, false, 2), &args);
    for (srv, loopback, prefix, i) in &mut servers {
        srv.check(&out, prefix, *loopback, 741 + 10 * *i, 742 + 10 * *i);
    }
    drop(servers);
    drop(peer);
}

/// A value that is neither an address of the family nor an interface fails like slirp4netns:
/// its exact line on stderr, exit 1, CMD never started.
#[test]
fn bad_outbound_addr_values_fail_with_exit_1() {
    let Some(bin) = tapsplice_bin() else { return };
    if !require_run_mode(&bin) {
        return;
    }
    for (opt, line) in [
        ("--outbound-addr=nosuchif", V4_ERROR),
        ("--outbound-addr=fd42::1", V4_ERROR),
        ("--outbound-addr=10.0.0.256", V4_ERROR),
        ("--outbound-addr6=nosuchif", V6_ERROR),
        ("--outbound-addr6=10.0.0.1", V6_ERROR),
    ] {
        let argv: Vec<String> = ["/bin/sh", "-c", "echo CMD-ran"].map(String::from).to_vec();
        let out = tapsplice_run_capture(&bin, &[opt], &argv, None, SHORT);
        assert_eq!(
            out.status.code(),
            Some(1),
            "tapsplice run {opt}: {}; stderr:\n{}",
            describe_status(out.status),
            out.stderr
        );
        assert!(
            out.stderr.lines().any(|l| l == line),
            "tapsplice run {opt}: stderr should have the line {line:?}:\n{}",
            out.stderr
        );
        assert!(
            !out.stdout_str().contains("CMD-ran"),
            "tapsplice run {opt} started CMD"
        );
    }
}

/// The same in slirp4netns mode on a real namespace: exit 1 with the line, and no tap0 left.
/// (Passes with `TAPSPLICE_BIN=/usr/bin/slirp4netns` too: slirp4netns 1.2.0 reports a bad
/// `--outbound-addr6` with a copy of the IPv4 text, "outbound-addr has to be valid ipv4 address
/// or iterface name.", which no client parses; either text is accepted for IPv6.)
#[test]
fn bad_outbound_addr_in_slirp4netns_mode() {
    let Some(bin) = prereqs(&[]) else { return };
    let ns = NetnsFixture::new();
    for (opt, lines) in [
        ("--outbound-addr=nosuchif", &[V4_ERROR][..]),
        ("--outbound-addr6=nosuchif", &[V6_ERROR][..]),
    ] {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["-c", "-6", opt, "--netns-type=path", &ns.path(), "tap0"]);
        let out = run_capture(&format!("{} {opt}", bin.display()), &mut cmd, None, SHORT);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{opt}: {}; stderr:\n{}",
            describe_status(out.status),
            out.stderr
        );
        assert!(
            out.stderr.lines().any(|l| lines.contains(&l)),
            "{opt}: stderr should have one of the lines {lines:?}:\n{}",
            out.stderr
        );
        assert!(!ns.has_link("tap0"), "tap0 left behind after {opt}");
    }
}
