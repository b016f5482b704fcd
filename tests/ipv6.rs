//! IPv6 through the binary (`-6`), with real namespaces and the guest kernel's own SLAAC: router
//! advertisements give the guest an fd00::/64 address and a default route via fe80::2; TCP, UDP
//! and ping6 reach a veth peer namespace with a ULA address; fd00::2 is the host's ::1 (and
//! nothing with `--disable-host-loopback`); fd00::3 relays DNS; slirp4netns mode with `-6 -c`
//! configures the namespace and answers router solicitations later on. Root tests.
//!
//! On this kind of machine the host's own uplink may use fd00::/64 too (here eth0 is fd00::2/64
//! with a default route via fd00::1). A guest packet to fd00::2 or fd00::3 that tapsplice failed
//! to intercept would go out through a host socket: to the host's own address (harmless), or
//! to fd00::3 on the uplink (not harmless, and it could even answer). So the tests that ping
//! fd00::2/fd00::3 or query fd00::3 run tapsplice itself inside a namespace of their own
//! ("isolated host", only `lo` up, with its own resolver): there a missed interception fails
//! instead of leaving the machine or being answered by someone else.
//!
//! Every guest script first waits (15 s deadline) for SLAAC to finish: a global fd00:: address
//! that is not tentative and the default route via fe80::2.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use common::*;

const SHORT: Duration = Duration::from_secs(30);
const BULK: Duration = Duration::from_secs(90);

/// `tapsplice run -6 OPTS... -- sh -c PRELUDE+body ...` in the host netns, captured; the guest
/// script is expected to exit 0.
fn run6(bin: &Path, opts: &[&str], body: &str, args: &[String], deadline: Duration) -> String {
    let mut all = vec!["-6"];
    all.extend_from_slice(opts);
    let out = tapsplice_run_capture(bin, &all, &guest_sh(body, args), None, deadline);
    out.assert_success(&format!("guest script in tapsplice run {all:?}"));
    out.stdout_str()
}

/// The same inside the isolated host namespace `host` (tapsplice itself runs there).
fn run6_isolated(
    bin: &Path,
    host: &NetnsFixture,
    opts: &[&str],
    body: &str,
    args: &[String],
) -> String {
    let mut argv = vec![s("run"), s("-6")];
    argv.extend(opts.iter().map(|o| o.to_string()));
    argv.push(s("--"));
    argv.extend(guest_sh(body, args));
    let out = run_capture(
        &format!("tapsplice run -6 {opts:?} in the isolated host namespace"),
        &mut host.exec(&bin.to_string_lossy(), &argv),
        None,
        SHORT,
    );
    out.assert_success("guest script in tapsplice run (isolated host)");
    out.stdout_str()
}

/// The guest's SLAAC address from the `slaac` report: must be in fd00::/64 with prefix 64.
fn slaac_addr(out: &str) -> Ipv6Addr {
    let j = json_of_mode(out, "slaac");
    let text = j.str("addr");
    let (addr, len) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("no prefix length in {text:?}"));
    let addr: Ipv6Addr = addr.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(len, "64", "SLAAC prefix length: {text}");
    assert_eq!(
        addr.segments()[..4],
        [0xfd00, 0, 0, 0],
        "SLAAC address {addr} not in fd00::/64"
    );
    assert_ne!(
        addr.segments()[4..],
        [0, 0, 0, 0],
        "SLAAC address {addr} has no interface identifier"
    );
    addr
}

/// A python server of [`PY_NET`] in the veth peer; returns it with the port it printed.
fn peer_server(peer: &DualStackPeer, mode: &str, args: &[String]) -> (LineChild, u16) {
    py_net_server(&format!("{mode} in the peer"), Some(&peer.ns), mode, args)
}

/// A `udp_server` of [`PY_NET`] on the host's [::1]; returns it with its port.
fn udp_server_on_ipv6_loopback() -> (LineChild, u16) {
    py_net_server(
        "udp_server on [::1]",
        None,
        "udp_server",
        &[s("::1"), s(20)],
    )
}

// ---------------------------------------------------------------------------------------------
// SLAAC and the router's own addresses.

/// The guest kernel configures itself from the router advertisements: a dynamic fd00::/64
/// address, the on-link prefix and a default route learned from the RA (`proto ra`) via fe80::2.
/// fd00::2 and fd00::3 answer ping6 (tapsplice itself: in the isolated host namespace nothing
/// else could).
#[test]
fn slaac_address_default_route_and_router_answers_ping6() {
    let Some(bin) = prereqs(&["ping"]) else {
        return;
    };
    let host = NetnsFixture::new();
    let out = run6_isolated(
        &bin,
        &host,
        &[],
        "wait_slaac
         echo '=== addr'; ip -6 -o addr show dev tap0
         echo '=== route'; ip -6 route show dev tap0
         echo '=== ping gw'; ping -6 -n -c 3 -i 0.2 -W 2 fd00::2 || echo ping-gw-failed
         echo '=== ping dns'; ping -6 -n -c 3 -i 0.2 -W 2 fd00::3 || echo ping-dns-failed",
        &[],
    );
    let addr = slaac_addr(&out);
    let section = |name: &str| -> String {
        out.split(&format!("=== {name}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} section:\n{out}"))
            .split("\n===")
            .next()
            .unwrap()
            .to_string()
    };
    let addrs = section("addr");
    let line = addrs
        .lines()
        .find(|l| l.contains(&format!(" inet6 {addr}/64 ")))
        .unwrap_or_else(|| panic!("{addr} not listed on tap0:\n{addrs}"));
    assert!(
        line.contains("scope global") && line.contains("dynamic"),
        "the fd00:: address should be a global address from SLAAC (dynamic): {line}"
    );
    assert!(
        !line.contains("tentative") && !line.contains("dadfailed"),
        "{line}"
    );
    assert!(
        addrs.lines().any(|l| l.contains(" inet6 fe80::")),
        "no link-local address on tap0:\n{addrs}"
    );
    let routes = section("route");
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("default via fe80::2 ") && l.contains("proto ra")),
        "no default route via fe80::2 learned from a router advertisement:\n{routes}"
    );
    assert!(
        routes.lines().any(|l| l.starts_with("fd00::/64 ")),
        "no on-link route for fd00::/64:\n{routes}"
    );
    assert_ping_transcript(&section("ping gw"), GATEWAY6, 3, 64);
    assert_ping_transcript(&section("ping dns"), DNS6, 3, 64);
}

// ---------------------------------------------------------------------------------------------
// A veth peer with an IPv6 address.

/// TCP over IPv6 to a peer namespace, 16 MiB each way, length and SHA-256 at both ends; the peer
/// sees the connection come from the host end of the veth (a host socket carried it).
#[test]
fn tcp_16mib_both_ways_to_veth_peer() {
    let Some(bin) = prereqs(&[]) else { return };
    let len = 16 * MIB;
    let (up_seed, down_seed) = (601, 602);
    let peer = DualStackPeer::new(&[1], &[1]);
    let (mut server, port) = peer_server(
        &peer,
        "tcp_server",
        &[s(peer.peer6), s(len), s(down_seed), s(1)],
    );
    let out = run6(
        &bin,
        &[],
        r#"wait_slaac; py tcp_client "$1" "$2" "$3" "$4" 10"#,
        &[s(peer.peer6), s(port), s(len), s(up_seed)],
        BULK,
    );
    let client = json_of_mode(&out, "tcp_client");
    let srv = server.wait_json("the connection's report", SHORT, |j| j.has("ok"));
    assert_exchange(
        "peer",
        &client.digests(),
        &srv.digests(),
        (up_seed, down_seed, len),
    );
    let guest_local: Ipv6Addr = client.str("local").parse().expect("local address");
    assert_eq!(
        guest_local,
        slaac_addr(&out),
        "the guest should connect from its SLAAC address"
    );
    let seen: IpAddr = srv.str("peer").parse().expect("peer address");
    assert_eq!(
        seen,
        IpAddr::V6(peer.host6[0]),
        "the peer should see the host end of the veth as the client"
    );
    drop(server);
    drop(peer);
}

/// UDP over IPv6 to a peer namespace: every datagram echoed byte for byte, from the peer's
/// address and port, sizes up to the MTU (1500 - 40 - 8 = 1452); the peer logs each one.
#[test]
fn udp_echo_to_veth_peer() {
    let Some(bin) = prereqs(&[]) else { return };
    let sizes = [1usize, 100, 512, 1000, 1400, 1452, 7, 1452];
    let seed = 611;
    let peer = DualStackPeer::new(&[1], &[1]);
    let (mut server, port) = peer_server(&peer, "udp_server", &[s(peer.peer6), s(20)]);
    let out = run6(
        &bin,
        &[],
        r#"wait_slaac; py udp_echo "$1" "$2" "$3" "$4" 5"#,
        &[s(peer.peer6), s(port), s(seed), join_sizes(&sizes)],
        SHORT,
    );
    let r = json_of_mode(&out, "udp_echo");
    assert!(r.ok(), "UDP echo over IPv6 failed: {r:?}");
    assert_eq!(r.u64("count"), sizes.len() as u64, "{r:?}");
    let want = payload_digest(seed, &sizes);
    let (sent, recv) = r.digests();
    assert_eq!(sent, want, "guest sent other datagrams");
    assert_eq!(recv, want, "echoes differ from what was sent");
    let at_peer = assert_udp_server_got(
        &mut server,
        "the peer",
        IpAddr::V6(peer.host6[0]),
        (seed, &sizes),
        SHORT,
    );
    assert_eq!(at_peer, want);
    drop(server);
    drop(peer);
}

/// `Icmp6InEchos` and `Icmp6OutEchoReplies` of a namespace (its /proc/net/snmp6).
fn icmp6_echo_counters(ns: &NetnsFixture) -> (u64, u64) {
    let c = run_capture(
        "cat /proc/net/snmp6 in the peer",
        &mut ns.exec("cat", &[s("/proc/net/snmp6")]),
        None,
        SHORT,
    );
    c.assert_success("cat /proc/net/snmp6");
    let text = c.stdout_str();
    let get = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(k)).then(|| w.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {k} in /proc/net/snmp6:\n{text}"))
    };
    (get("Icmp6InEchos"), get("Icmp6OutEchoReplies"))
}

/// `ping -6 -c 3 -i 0.2` to the peer: replies with icmp_seq 1, 2, 3 from the peer's address, and
/// the peer's own counters show the three echoes (relayed, not answered by tapsplice).
#[test]
fn ping6_to_veth_peer() {
    let Some(bin) = prereqs(&["ping"]) else {
        return;
    };
    let peer = DualStackPeer::new(&[1], &[1]);
    let before = icmp6_echo_counters(&peer.ns);
    let out = run6(
        &bin,
        &[],
        r#"wait_slaac; ping -6 -n -c 3 -i 0.2 -W 2 "$1""#,
        &[s(peer.peer6)],
        SHORT,
    );
    assert_ping_transcript(&out, &peer.peer6.to_string(), 3, 64);
    let after = icmp6_echo_counters(&peer.ns);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (3, 3),
        "the peer should have received 3 echo requests and sent 3 replies \
         (Icmp6InEchos, Icmp6OutEchoReplies before {before:?}, after {after:?})"
    );
    drop(peer);
}

// ---------------------------------------------------------------------------------------------
// fd00::2: the host's ::1.

/// TCP to [fd00::2]:P reaches a host server on [::1]:P (4 MiB each way, checked at both ends);
/// UDP to [fd00::2]:Q reaches a host UDP server on [::1]:Q, which sees the datagrams come from
/// ::1.
#[test]
fn gateway_fd00_2_reaches_host_ipv6_loopback() {
    let Some(bin) = prereqs(&[]) else { return };
    let len = 4 * MIB;
    let (up_seed, down_seed, udp_seed) = (621, 622, 623);
    let server = TestServer::start_on("[::1]:0".parse().unwrap(), down_seed, len);
    let (mut udp, udp_port) = udp_server_on_ipv6_loopback();
    let sizes = [10usize, 1000, 1452];
    let out = run6(
        &bin,
        &[],
        r#"wait_slaac
           py tcp_client fd00::2 "$1" "$2" "$3" 10
           py udp_echo fd00::2 "$4" "$5" "$6" 5"#,
        &[
            s(server.port()),
            s(len),
            s(up_seed),
            s(udp_port),
            s(udp_seed),
            join_sizes(&sizes),
        ],
        BULK,
    );
    server.assert_one_exchange(
        "host [::1]",
        &json_of_mode(&out, "tcp_client").digests(),
        (up_seed, down_seed, len),
        SHORT,
    );

    let r = json_of_mode(&out, "udp_echo");
    assert!(r.ok(), "UDP echo via fd00::2 failed: {r:?}");
    let (sent, recv) = r.digests();
    assert_eq!(sent, recv, "echoes differ from what was sent: {r:?}");
    assert_udp_server_got(
        &mut udp,
        "the [::1] server",
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        (udp_seed, &sizes),
        SHORT,
    );
}

/// UDP to a closed port of fd00::2 gives ECONNREFUSED (ICMPv6 port unreachable passed on);
/// TCP to a port on which only 127.0.0.1 listens is refused too: fd00::2 is ::1, not 127.0.0.1.
#[test]
fn gateway_fd00_2_closed_ports_are_refused() {
    let Some(bin) = prereqs(&[]) else { return };
    let udp_port = closed_udp_port(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let v4_only = TestServer::start(631, 100);
    let out = run6(
        &bin,
        &[],
        r#"wait_slaac
           py udp_error fd00::2 "$1" 3
           py tcp_client fd00::2 "$2" 100 632 3"#,
        &[s(udp_port), s(v4_only.port())],
        SHORT,
    );
    let r = json_of_mode(&out, "udp_error");
    assert_eq!(r.str("result"), "error", "UDP to a closed port: {r:?}");
    assert_eq!(
        r.i64("errno"),
        libc::ECONNREFUSED as i64,
        "expected ECONNREFUSED: {r:?}"
    );
    json_of_mode(&out, "tcp_client").assert_connect_error(
        "TCP to [fd00::2] with only a 127.0.0.1 server",
        libc::ECONNREFUSED,
    );
    assert_eq!(
        v4_only.accepted(),
        0,
        "the 127.0.0.1 server got a connection"
    );
}

/// With `--disable-host-loopback`, TCP to [fd00::2] fails at once with ENETUNREACH although a
/// server listens on [::1], and a UDP datagram gets ICMPv6 no-route (ENETUNREACH) and never
/// reaches the [::1] server.
#[test]
fn disable_host_loopback_fd00_2_enetunreach() {
    let Some(bin) = prereqs(&[]) else { return };
    let server = TestServer::start_on("[::1]:0".parse().unwrap(), 641, 100);
    let (mut udp, udp_port) = udp_server_on_ipv6_loopback();
    let out = run6(
        &bin,
        &["--disable-host-loopback"],
        r#"wait_slaac
           py tcp_client fd00::2 "$1" 100 642 5
           py udp_error fd00::2 "$2" 3 1"#,
        &[s(server.port()), s(udp_port)],
        SHORT,
    );
    let t = json_of_mode(&out, "tcp_client");
    t.assert_connect_error(
        "TCP to [fd00::2] despite --disable-host-loopback",
        libc::ENETUNREACH,
    );
    assert!(
        t.i64("elapsed_ms") < 1000,
        "ENETUNREACH should come at once, not after retries: {t:?}"
    );
    // A net unreachable is a "soft" error: the kernel reports it on a UDP socket only with
    // IPV6_RECVERR, which the probe sets.
    let u = json_of_mode(&out, "udp_error");
    assert_eq!(
        (u.str("result"), u.i64("errno")),
        ("error", libc::ENETUNREACH as i64),
        "UDP to [fd00::2] with --disable-host-loopback: {u:?}"
    );
    assert_eq!(
        (u.i64("ee_origin"), u.i64("ee_type"), u.i64("ee_code")),
        (3, 1, 0),
        "expected ICMPv6 (origin 3) destination unreachable (type 1), no route (code 0): {u:?}"
    );
    assert_eq!(server.accepted(), 0, "the [::1] server got a connection");
    assert!(
        udp.json_lines().iter().all(|j| !j.has("from")),
        "the [::1] UDP server got a datagram"
    );
}

// ---------------------------------------------------------------------------------------------
// fd00::3: DNS.

/// dnsmasq inside the isolated host namespace on `listen` port 53, answering only
/// `dual.tapsplice.test` (A 192.0.2.7, AAAA 2001:db8::7; documentation addresses, never
/// contacted). Returns once it answers `dig` in that namespace.
fn isolated_dnsmasq(host: &NetnsFixture, listen: IpAddr) -> Dnsmasq {
    let records = [s("--host-record=dual.tapsplice.test,192.0.2.7,2001:db8::7")];
    Dnsmasq::start_probed(Some(host), listen, 53, &records, || {
        let c = run_capture(
            "dig readiness probe",
            &mut host.exec(
                "dig",
                &[
                    s("+short"),
                    s("+time=1"),
                    s("+tries=1"),
                    format!("@{listen}"),
                    s("dual.tapsplice.test"),
                    s("A"),
                ],
            ),
            None,
            SHORT,
        );
        c.status.success() && c.stdout_str().trim() == "192.0.2.7"
    })
}

/// How many queries of `qtype` for `dual.tapsplice.test` `dnsmasq` logged.
fn logged_queries(dnsmasq: &Dnsmasq, qtype: &str) -> usize {
    dnsmasq.queries_of(qtype, "dual.tapsplice.test")
}

const DIG_SCRIPT: &str = r#"wait_slaac
dig +short +time=2 +tries=1 @"$1" dual.tapsplice.test AAAA | sed 's/^/udp-aaaa /'
dig +short +tcp +time=2 +tries=1 @"$1" dual.tapsplice.test AAAA | sed 's/^/tcp-aaaa /'
dig +short +time=2 +tries=1 @"$1" dual.tapsplice.test A | sed 's/^/udp-a /'
"#;

/// Runs [`DIG_SCRIPT`] against `server` in `tapsplice run -6 UPSTREAM` in the isolated host
/// namespace and checks the answers.
fn dig_isolated(bin: &Path, host: &NetnsFixture, upstream: &str, server: &str) {
    let out = run6_isolated(bin, host, &[upstream], DIG_SCRIPT, &[s(server)]);
    assert_dig_answers(&out);
}

fn assert_dig_answers(out: &str) {
    for (tag, want) in [
        ("udp-aaaa", "2001:db8::7"),
        ("tcp-aaaa", "2001:db8::7"),
        ("udp-a", "192.0.2.7"),
    ] {
        let got: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{tag} ")))
            .collect();
        assert_eq!(got, [want], "answers of {tag}:\n{out}");
    }
}

/// `dig @fd00::3` (AAAA over UDP and TCP, A over UDP) is relayed to a resolver on 127.0.0.1
/// (`--dns-upstream`), which logs each query.
#[test]
fn dns_at_fd00_3_relayed_to_ipv4_loopback_resolver() {
    let Some(bin) = prereqs(&["dig", "dnsmasq"]) else {
        return;
    };
    let host = NetnsFixture::new();
    let dnsmasq = isolated_dnsmasq(&host, Ipv4Addr::LOCALHOST.into());
    dig_isolated(&bin, &host, "--dns-upstream=127.0.0.1", DNS6);
    assert!(
        logged_queries(&dnsmasq, "AAAA") >= 2,
        "resolver log lacks the AAAA queries"
    );
    assert!(
        logged_queries(&dnsmasq, "A") >= 1,
        "resolver log lacks the A query"
    );
    drop(dnsmasq);
}

/// With the resolver on [::1] (`--dns-upstream=[::1]:53`), fd00::3 and 10.0.2.3 both relay to it.
#[test]
fn dns_relayed_to_ipv6_loopback_resolver() {
    let Some(bin) = prereqs(&["dig", "dnsmasq"]) else {
        return;
    };
    let host = NetnsFixture::new();
    let dnsmasq = isolated_dnsmasq(&host, Ipv6Addr::LOCALHOST.into());
    for server in [DNS6, DNS_ADDR] {
        dig_isolated(&bin, &host, "--dns-upstream=[::1]:53", server);
    }
    assert!(
        logged_queries(&dnsmasq, "AAAA") >= 4,
        "resolver log lacks AAAA queries"
    );
    drop(dnsmasq);
}

// ---------------------------------------------------------------------------------------------
// slirp4netns mode.

/// `ip -6 -o addr show dev tap0 scope global` in `ns`: a non-tentative fd00:: address, if any.
fn ns_slaac_addr(ns: &NetnsFixture) -> Option<Ipv6Addr> {
    let out = ns
        .ip(&["-6", "-o", "addr", "show", "dev", "tap0", "scope", "global"])
        .stdout_str();
    out.lines()
        .filter(|l| !l.contains("tentative"))
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split_once('/'))
        .filter(|(_, len)| *len == "64")
        .filter_map(|(a, _)| a.parse::<Ipv6Addr>().ok())
        .find(|a| a.segments()[..4] == [0xfd00, 0, 0, 0])
}

fn ns_has_default_via_router(ns: &NetnsFixture) -> bool {
    ns.ip(&["-6", "route", "show", "default"])
        .stdout_str()
        .contains("via fe80::2 dev tap0")
}

/// `tapsplice -6 -c ... /run/netns/NS tap0`: the namespace gets its fd00::/64 address and route
/// by SLAAC, and a client in it reaches the host's [::1] through [fd00::2] (1 MiB each way,
/// checked). Then the link goes down (the kernel drops its SLAAC address) and up again: the
/// kernel's router solicitation must be answered (the next unsolicited advertisement is ten
/// minutes away), and the address and route come back.
#[test]
fn slirp4netns_mode_configures_ipv6_and_answers_router_solicitation() {
    let Some(bin) = prereqs(&[]) else { return };
    let ns = NetnsFixture::new();
    let mut main = SlirpProcess::start(&bin, &ns, &["-6", "-c"]);
    let addr = wait_for_value(
        Duration::from_secs(15),
        "a non-tentative fd00::/64 address and a default route via fe80::2 in the namespace",
        || ns_slaac_addr(&ns).filter(|_| ns_has_default_via_router(&ns)),
    );

    let len = MIB;
    let (up_seed, down_seed) = (651, 652);
    let server = TestServer::start_on("[::1]:0".parse().unwrap(), down_seed, len);
    let out = run_capture(
        "tcp_client to [fd00::2] in the namespace",
        &mut ns.exec(
            PYTHON,
            &py_net_args(
                "tcp_client",
                &[s(GATEWAY6), s(server.port()), s(len), s(up_seed), s(10)],
            ),
        ),
        None,
        SHORT,
    );
    out.assert_success("tcp_client in the namespace");
    let report = Json::last_in(&out.stdout_str());
    assert_eq!(
        report.str("local").parse::<Ipv6Addr>().ok(),
        Some(addr),
        "the client should use the SLAAC address"
    );
    server.assert_one_exchange(
        "host [::1]",
        &report.digests(),
        (up_seed, down_seed, len),
        SHORT,
    );

    ns.ip(&["link", "set", "tap0", "down"]);
    wait_for(
        Duration::from_secs(5),
        "the SLAAC address to go with the link",
        || ns_slaac_addr(&ns).is_none(),
    );
    ns.ip(&["link", "set", "tap0", "up"]);
    let again = wait_for_value(
        Duration::from_secs(15),
        "the fd00::/64 address and default route to come back after link down/up \
         (router solicitation answered)",
        || ns_slaac_addr(&ns).filter(|_| ns_has_default_via_router(&ns)),
    );
    assert_eq!(again, addr, "same interface identifier, same address");
    main.assert_running();
    let route = ns.ip(&["-6", "route", "show", "default"]).stdout_str();
    assert!(route.contains("proto ra"), "default route: {route}");
    drop(main);
}
