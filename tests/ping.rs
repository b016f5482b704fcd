//! ICMP echo through the binary: iputils `ping` inside `tapsplice run` to N+2, N+3 (answered by
//! the stack) and to a veth peer namespace (relayed through a host ICMP socket: the peer's own
//! ICMP counters must show the echoes). Root tests; as root tapsplice may use a raw socket or a
//! ping socket, either is fine here.

mod common;

use std::time::Duration;

use common::*;

const SHORT: Duration = Duration::from_secs(30);

/// `ping -c COUNT -i 0.2 -W 2 EXTRA... TARGET` as a guest program.
fn ping_argv(target: &str, count: u32, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
    ]
    .map(String::from)
    .to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v.push(target.into());
    v
}

fn ping_in_run(
    bin: &std::path::Path,
    opts: &[&str],
    target: &str,
    count: u32,
    extra: &[&str],
) -> String {
    let out = tapsplice_run_capture(bin, opts, &ping_argv(target, count, extra), None, SHORT);
    out.assert_success(&format!("ping {target} in tapsplice run {opts:?}"));
    out.stdout_str()
}

/// N+2 and N+3 answer ping themselves.
#[test]
fn ping_gateway_and_dns_address() {
    let Some(bin) = bin_prereqs(&["ip", "ping"]) else {
        return;
    };
    for target in [GATEWAY, DNS_ADDR] {
        let out = ping_in_run(&bin, &[], target, 3, &[]);
        assert_ping_transcript(&out, target, 3, 64);
    }
}

/// `--disable-host-loopback` keeps the guest from the host's loopback, not from pinging N+2.
#[test]
fn ping_gateway_with_disable_host_loopback() {
    let Some(bin) = bin_prereqs(&["ip", "ping"]) else {
        return;
    };
    let out = ping_in_run(&bin, &["--disable-host-loopback"], GATEWAY, 3, &[]);
    assert_ping_transcript(&out, GATEWAY, 3, 64);
}

/// Icmp counters (`InEchos`, `OutEchoReps`) of the namespace, from its /proc/net/snmp.
fn icmp_echo_counters(ns: &NetnsFixture) -> (u64, u64) {
    let c = run_capture(
        "cat /proc/net/snmp in the peer",
        &mut ns.exec("cat", &["/proc/net/snmp".to_string()]),
        None,
        SHORT,
    );
    c.assert_success("cat /proc/net/snmp");
    let text = c.stdout_str();
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (
        icmp.next().expect("Icmp names"),
        icmp.next().expect("Icmp values"),
    );
    let get = |k: &str| -> u64 {
        let i = names
            .split_whitespace()
            .position(|n| n == k)
            .unwrap_or_else(|| panic!("no {k} in {names}"));
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    (get("InEchos"), get("OutEchoReps"))
}

fn ping_peer(extra: &[&str], bytes: u32) {
    let Some(bin) = bin_prereqs(&["ip", "ping"]) else {
        return;
    };
    let peer = VethPeer::new();
    let target = peer.peer_ip.to_string();
    let before = icmp_echo_counters(&peer.ns);
    let out = ping_in_run(&bin, &[], &target, 3, extra);
    assert_ping_transcript(&out, &target, 3, bytes);
    let after = icmp_echo_counters(&peer.ns);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (3, 3),
        "the peer namespace should have received 3 echo requests and sent 3 replies \
         (InEchos, OutEchoReps before {before:?}, after {after:?})"
    );
    drop(peer);
}

/// `ping -c 3` to a veth peer: relayed, with sequence numbers 1, 2, 3 and the peer's address.
#[test]
fn ping_veth_peer() {
    ping_peer(&[], 64);
}

/// Full-size echoes at MTU 1500 (1472 bytes of payload, don't fragment), data checked by ping.
#[test]
fn ping_veth_peer_full_size_payload() {
    ping_peer(&["-s", "1472", "-M", "do"], 1480);
}

/// Two pings to the peer at once (two ICMP identifiers): each gets its own replies, all of them.
#[test]
fn ping_two_concurrent_to_veth_peer() {
    let Some(bin) = bin_prereqs(&["ip", "ping"]) else {
        return;
    };
    let peer = VethPeer::new();
    let target = peer.peer_ip.to_string();
    let dir = TempDir::new("tsping");
    let script = "ping -n -c 5 -i 0.2 -W 2 \"$2\" >\"$1/a\" 2>&1 & a=$!; \
                  ping -n -c 5 -i 0.2 -W 2 -s 100 \"$2\" >\"$1/b\" 2>&1 & b=$!; \
                  wait $a; ra=$?; wait $b; rb=$?; \
                  cat \"$1/a\"; echo \"rc-a=$ra\"; echo ===; cat \"$1/b\"; echo \"rc-b=$rb\"";
    let out = tapsplice_run_capture(
        &bin,
        &[],
        &sh_script(script, &[dir.path().display().to_string(), target.clone()]),
        None,
        SHORT,
    );
    out.assert_success("two pings in tapsplice run");
    let text = out.stdout_str();
    let (a, b) = text.split_once("===\n").expect("both transcripts");
    assert!(a.contains("rc-a=0"), "first ping failed:\n{a}");
    assert!(b.contains("rc-b=0"), "second ping failed:\n{b}");
    assert_ping_transcript(a, &target, 5, 64);
    assert_ping_transcript(b, &target, 5, 108);
    drop(peer);
}

/// Rootless, the case ping matters most for: `tapsplice run` as an ordinary user. Without
/// `net.ipv4.ping_group_range` covering the user's group (and without CAP_NET_RAW), N+2 still
/// answers from the stack, a remote host does not, and the log says why once. With the range
/// covering the group, the remote host answers through an unprivileged ping socket.
#[test]
fn ping_rootless_run_needs_ping_group_range_for_remote_hosts() {
    let Some(env) = RootlessUser::new() else {
        return;
    };
    if !require_tools(&["ping"]) {
        return;
    }
    let peer = VethPeer::new();
    let target = peer.peer_ip.to_string();
    let gid = env.user.gid.as_raw();
    let range_path = "/proc/sys/net/ipv4/ping_group_range";
    let range = std::fs::read_to_string(range_path).expect("read ping_group_range");
    let covers = |r: &str| {
        let v: Vec<u32> = r
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        v.len() == 2 && v[0] <= gid && gid <= v[1]
    };
    {
        // Phase 1: the group outside the range (as on a default Debian host: "1 0").
        let _guard = covers(&range).then(|| SysctlGuard::set(range_path, "1 0"));
        let out = env.tapsplice_run(&[], &ping_argv(GATEWAY, 3, &[]), SHORT);
        out.assert_success("rootless ping to the gateway");
        assert_ping_transcript(&out.stdout_str(), GATEWAY, 3, 64);

        let out = env.tapsplice_run(&[], &ping_argv(&target, 3, &[]), SHORT);
        assert!(
            !out.status.success() && !out.stdout_str().contains(" bytes from "),
            "rootless ping to a remote host without ping_group_range should get no reply:\n{}",
            out.stdout_str()
        );
        let said = out.stderr.matches("ping_group_range").count();
        assert_eq!(
            said, 1,
            "the log should say once that ping needs net.ipv4.ping_group_range; stderr:\n{}",
            out.stderr
        );
    }
    {
        // Phase 2: the range covers the user's group.
        let _guard = SysctlGuard::set(range_path, &format!("{gid} {gid}"));
        let before = icmp_echo_counters(&peer.ns);
        let out = env.tapsplice_run(&[], &ping_argv(&target, 3, &[]), SHORT);
        out.assert_success("rootless ping to the veth peer with ping_group_range");
        assert_ping_transcript(&out.stdout_str(), &target, 3, 64);
        let after = icmp_echo_counters(&peer.ns);
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (3, 3),
            "the peer's echo counters (before {before:?}, after {after:?})"
        );
    }
    assert_eq!(
        std::fs::read_to_string(range_path).expect("read ping_group_range"),
        range,
        "ping_group_range not restored"
    );
    drop(peer);
}
