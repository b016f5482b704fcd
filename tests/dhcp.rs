//! The DHCPv4 server, with a real client: busybox `udhcpc` in a namespace whose tap0 tapsplice
//! leaves unconfigured (slirp4netns mode without `-c`, as rootlesskit uses it). The lease must
//! give N+15, router N+2, DNS N+3; the client's script configures the address and route, and
//! traffic then flows from the leased address. Root tests.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

const SHORT: Duration = Duration::from_secs(30);

/// udhcpc's script: prints what it was given, one `udhcpc-event` line per call, and on `bound`
/// configures the interface (address, then default route) with `ip`.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
echo "udhcpc-event=$1 interface=$interface ip=$ip mask=$mask subnet=$subnet router=$router dns=$dns lease=$lease serverid=$serverid broadcast=$broadcast"
case "$1" in
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/$mask" dev "$interface" || exit 1
        for r in $router; do
            ip -4 route replace default via "$r" dev "$interface" || exit 1
            break
        done
        ;;
esac
exit 0
"#;

/// What udhcpc's script was told on `bound`.
#[derive(Debug)]
struct Lease {
    fields: Vec<(String, String)>,
}

impl Lease {
    fn get(&self, k: &str) -> &str {
        self.fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {self:?}"))
    }
}

/// Parses `udhcpc-event=bound k=v ...` (values are single words except `dns` and `router`, which
/// may list several; every value here is a single word or empty).
fn parse_bound(out: &str) -> Lease {
    let line = out
        .lines()
        .find(|l| l.starts_with("udhcpc-event=bound "))
        .unwrap_or_else(|| panic!("udhcpc's script was never called with `bound`:\n{out}"));
    let mut fields = Vec::new();
    let mut key: Option<String> = None;
    for word in line.split(' ') {
        match word.split_once('=') {
            Some((k, v)) if k.chars().all(|c| c.is_ascii_lowercase() || c == '-') => {
                fields.push((k.to_string(), v.to_string()));
                key = Some(k.to_string());
            }
            _ => {
                // A further value of a list (e.g. a second DNS server).
                if let (Some(k), false) = (&key, word.is_empty()) {
                    let last = fields.iter_mut().rev().find(|(kk, _)| kk == k).unwrap();
                    last.1.push(' ');
                    last.1.push_str(word);
                }
            }
        }
    }
    Lease { fields }
}

/// Starts tapsplice without `-c` on a fresh namespace (with `extra` options), brings tap0 up and
/// runs udhcpc there. Returns the namespace, the process and the lease.
fn lease(bin: &std::path::Path, extra: &[&str]) -> (NetnsFixture, SlirpProcess, Lease, TempDir) {
    let ns = NetnsFixture::new();
    let main = SlirpProcess::start(bin, &ns, extra);
    let addrs = ns
        .ip(&["-4", "-o", "addr", "show", "dev", "tap0"])
        .stdout_str();
    assert!(
        addrs.trim().is_empty(),
        "without -c tap0 must be left unconfigured: {addrs}"
    );
    ns.ip(&["link", "set", "tap0", "up"]);
    let dir = TempDir::new("tsdhcp");
    let script = dir.join("udhcpc.script");
    fs::write(&script, UDHCPC_SCRIPT).expect("write udhcpc script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod script");
    let udhcpc = find_tool("udhcpc").expect("udhcpc");
    let args: Vec<String> = [
        "-i",
        "tap0",
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "2",
        "-s",
        &script.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let out = run_capture(
        "udhcpc in the namespace",
        &mut ns.exec(&udhcpc.display().to_string(), &args),
        None,
        SHORT,
    );
    out.assert_success("udhcpc -q -n (no lease?)");
    let lease = parse_bound(&out.stdout_str());
    eprintln!("lease: {lease:?}\nudhcpc stderr:\n{}", out.stderr);
    (ns, main, lease, dir)
}

/// udhcpc gets N+15 with router N+2, DNS N+3, a /24 and a sensible lease; with the address it
/// configured, the guest then reaches the host's loopback through N+2 (data checked both ways)
/// and pings the gateway.
#[test]
fn dhcp_udhcpc_gets_lease_and_routes() {
    let Some(bin) = prereqs(&["udhcpc"]) else {
        return;
    };
    let (ns, mut main, lease, _dir) = lease(&bin, &[]);
    assert_eq!(lease.get("interface"), "tap0");
    assert_eq!(
        lease.get("ip"),
        "10.0.2.15",
        "first address of the pool (N+15)"
    );
    assert_eq!(lease.get("router"), GATEWAY, "router (N+2)");
    assert_eq!(lease.get("dns"), DNS_ADDR, "DNS (N+3)");
    assert_eq!(lease.get("subnet"), "255.255.255.0");
    assert_eq!(lease.get("mask"), "24");
    let secs: u64 = lease.get("lease").parse().expect("lease seconds");
    assert!(
        (60..=7 * 86400).contains(&secs),
        "lease time {secs} s is not sensible"
    );

    let addr = ns
        .ip(&["-4", "-o", "addr", "show", "dev", "tap0"])
        .stdout_str();
    assert!(addr.contains(" 10.0.2.15/24 "), "tap0 after udhcpc: {addr}");
    let route = ns.ip(&["-4", "route", "show", "default"]).stdout_str();
    assert!(
        route.contains("via 10.0.2.2 dev tap0"),
        "default route after udhcpc: {route}"
    );

    // Traffic from the leased address: TCP to the host's loopback, 1 MiB each way.
    let what = "python client from the leased address";
    exchange_via_gateway(what, (81, 82, MIB), |args| {
        run_capture(
            what,
            &mut ns.exec(PYTHON, &args),
            None,
            Duration::from_secs(60),
        )
    });

    let args: Vec<String> = ["-c", "2", "-i", "0.2", "-W", "2", GATEWAY]
        .map(String::from)
        .to_vec();
    let out = run_capture(
        "ping from the leased address",
        &mut ns.exec("ping", &args),
        None,
        SHORT,
    );
    out.assert_success("ping the gateway from the leased address");
    main.assert_running();
}

/// With `--cidr 10.0.135.128/25` the lease follows the network: N+15 = 10.0.135.143, router
/// N+2 = 10.0.135.130, DNS N+3 = 10.0.135.131, mask /25.
#[test]
fn dhcp_follows_cidr() {
    let Some(bin) = prereqs(&["udhcpc"]) else {
        return;
    };
    let (ns, mut main, lease, _dir) = lease(&bin, &["--cidr=10.0.135.128/25"]);
    assert_eq!(lease.get("ip"), "10.0.135.143");
    assert_eq!(lease.get("router"), "10.0.135.130");
    assert_eq!(lease.get("dns"), "10.0.135.131");
    assert_eq!(lease.get("subnet"), "255.255.255.128");
    assert_eq!(lease.get("mask"), "25");
    let route = ns.ip(&["-4", "route", "show", "default"]).stdout_str();
    assert!(
        route.contains("via 10.0.135.130 dev tap0"),
        "default route after udhcpc: {route}"
    );
    main.assert_running();
}
