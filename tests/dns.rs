//! DNS at N+3 through the binary: real `dig` (UDP and TCP) and `getent` inside `tapsplice run`,
//! relayed to real dnsmasq resolvers the tests start on unique loopback addresses (127.77.x.y)
//! or inside a veth peer namespace. Root tests.
//!
//! No test lets tapsplice fall back to the host's own /etc/resolv.conf (its resolver is outside
//! this machine): every run names its upstream with `--resolv-conf` (a file of the test's) or
//! `--dns-upstream`.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest as _, Sha256};

const SHORT: Duration = Duration::from_secs(30);
/// What every test here runs besides `ip` and python.
const DNS_TOOLS: &[&str] = &["dnsmasq", "dig", "getent"];

fn host_record(name: &str, ip: &str) -> String {
    format!("--host-record={name},{ip}")
}

/// `dig +short` for an A record of `name` at N+3, over UDP or TCP, as a guest program.
fn dig_short(name: &str, tcp: bool) -> Vec<String> {
    let mut v: Vec<String> = ["dig", "+short", "+time=2", "+tries=2"]
        .map(String::from)
        .to_vec();
    if tcp {
        v.push("+tcp".into());
    }
    v.extend([format!("@{DNS_ADDR}"), name.into(), "A".into()]);
    v
}

/// Runs `dig +short` inside `tapsplice run OPTS` and returns its answer lines.
fn dig_in_run(bin: &std::path::Path, opts: &[&str], name: &str, tcp: bool) -> Vec<String> {
    let out = tapsplice_run_capture(bin, opts, &dig_short(name, tcp), None, SHORT);
    out.assert_success(&format!(
        "dig {} {name} in tapsplice run {opts:?}",
        if tcp { "+tcp" } else { "(UDP)" }
    ));
    out.stdout_str().lines().map(String::from).collect()
}

fn relayed(tcp: bool) {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let name = if tcp {
        "tcp.tapsplice.test"
    } else {
        "udp.tapsplice.test"
    };
    let dns = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.7")]);
    let rc = ResolvConf::naming(dns.addr);
    let answer = dig_in_run(&bin, &[&rc.opt], name, tcp);
    assert_eq!(answer, ["192.0.2.7"], "answer to {name} via N+3");
    // dig may retry once when the machine is slow: at least one query, and at most two.
    let n = dns.queries_for(name);
    assert!(
        (1..=2).contains(&n),
        "the resolver should have seen the query for {name} (once, or twice with dig's retry), \
         saw {n}; its log:\n{}",
        dns.query_log()
    );
}

/// `dig` over UDP at N+3 gets the answer of a loopback resolver named by the resolv.conf.
#[test]
fn dns_udp_query_relayed_to_loopback_resolver() {
    relayed(false);
}

/// `dig +tcp` at N+3 gets the answer of a loopback resolver named by the resolv.conf.
#[test]
fn dns_tcp_query_relayed_to_loopback_resolver() {
    relayed(true);
}

/// A TXT answer of about 3 KiB: too big for UDP (dnsmasq truncates at 1232 bytes), so over UDP
/// the truncated reply must reach dig intact enough to make it retry over TCP, and over TCP the
/// whole answer must arrive. Strings checked exactly (and by SHA-256).
#[test]
fn dns_large_answer_truncated_over_udp_whole_over_tcp() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let name = "big.tapsplice.test";
    let strings: Vec<String> = (0..12)
        .map(|i| {
            (0..4)
                .map(|j| format!("{:x}", Sha256::digest(format!("tapsplice-txt:{i}:{j}"))))
                .collect::<String>()[..250]
                .to_string()
        })
        .collect();
    let want_line = strings
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(" ");
    let want = Digest::of(strings.concat().as_bytes());
    let dns = Dnsmasq::on_loopback(&[format!("--txt-record={name},{}", strings.join(","))]);
    let rc = ResolvConf::naming(dns.addr);
    let script = format!(
        "dig +time=2 +tries=2 @{DNS_ADDR} {name} TXT; echo \"udp-rc=$?\"; \
         echo ===; dig +short +tcp +time=2 +tries=2 @{DNS_ADDR} {name} TXT; echo \"tcp-rc=$?\""
    );
    let out = tapsplice_run_capture(&bin, &[&rc.opt], &sh_script(&script, &[]), None, SHORT);
    out.assert_success("dig TXT in tapsplice run");
    let text = out.stdout_str();
    let (udp_part, tcp_part) = text.split_once("===\n").expect("both parts");
    assert!(
        udp_part.contains("udp-rc=0"),
        "dig over UDP failed:\n{text}"
    );
    assert!(tcp_part.contains("tcp-rc=0"), "dig +tcp failed:\n{text}");
    assert!(
        udp_part.contains("Truncated, retrying in TCP mode"),
        "over UDP the answer should come back truncated (TC) first:\n{udp_part}"
    );
    let tcp_answer = tcp_part.lines().next().unwrap_or_default();
    let got: Vec<String> = tcp_answer
        .split(' ')
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    assert_eq!(
        Digest::of(got.concat().as_bytes()),
        want,
        "TXT strings over TCP differ"
    );
    assert_eq!(tcp_answer, want_line, "TXT answer over TCP differs");
    assert!(
        udp_part.contains(&want_line[..200]),
        "the UDP-then-TCP answer lacks the TXT data:\n{udp_part}"
    );
}

/// Status codes pass through unchanged: a name under a `--local` domain that has no record is
/// NXDOMAIN from the resolver, and NXDOMAIN in the guest.
#[test]
fn dns_nxdomain_passes_through() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let dns = Dnsmasq::on_loopback(&[]);
    let rc = ResolvConf::naming(dns.addr);
    let argv: Vec<String> = [
        "dig",
        "+time=2",
        "+tries=2",
        &format!("@{DNS_ADDR}"),
        "missing.tapsplice.test",
        "A",
    ]
    .map(String::from)
    .to_vec();
    let out = tapsplice_run_capture(&bin, &[&rc.opt], &argv, None, SHORT);
    out.assert_success("dig in tapsplice run");
    assert!(
        out.stdout_str().contains("status: NXDOMAIN"),
        "expected NXDOMAIN:\n{}",
        out.stdout_str()
    );
    assert!(
        dns.queries_for("missing.tapsplice.test") >= 1,
        "{}",
        dns.query_log()
    );
}

/// Many queries at once, from one guest socket and from many, with distinct transaction ids and
/// names: every answer matches its question (a relay must not mix up ids or clients).
#[test]
fn dns_concurrent_queries_answered_correctly() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    const N: usize = 40;
    let records: Vec<String> = (0..N)
        .map(|i| {
            host_record(
                &format!("h{i}.tapsplice.test"),
                &format!("192.0.2.{}", 100 + i),
            )
        })
        .collect();
    let dns = Dnsmasq::on_loopback(&records);
    let rc = ResolvConf::naming(dns.addr);
    let out = tapsplice_run_capture(
        &bin,
        &[&rc.opt],
        &python_script(PY_DNS_CONCURRENT, &[DNS_ADDR.into(), N.to_string()]),
        None,
        SHORT,
    );
    out.assert_success("concurrent DNS client in tapsplice run");
    let r = Json::last_in(&out.stdout_str());
    assert!(r.ok(), "concurrent queries: {r:?}");
    assert_eq!(r.u64("answered"), 2 * N as u64, "{r:?}");
}

/// Guest: sends N queries (h0..h{N-1}.tapsplice.test) from one socket and N more from N sockets,
/// all before reading any answer; checks each answer's id, name and address.
const PY_DNS_CONCURRENT: &str = r#"
import json, select, socket, struct, sys, time
server, n = sys.argv[1], int(sys.argv[2])

def query(qid, name):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"

def parse(m):
    qid, flags, qd, an = struct.unpack("!HHHH", m[:8])
    p = 12
    labels = []
    while m[p]:
        labels.append(m[p + 1:p + 1 + m[p]].decode()); p += 1 + m[p]
    p += 5
    addrs = []
    for _ in range(an):
        if m[p] & 0xc0 == 0xc0:
            p += 2
        else:
            while m[p]:
                p += 1 + m[p]
            p += 1
        ty, _, _, ln = struct.unpack("!HHIH", m[p:p + 10])
        if ty == 1:
            addrs.append(socket.inet_ntoa(m[p + 10:p + 14]))
        p += 10 + ln
    return qid, flags & 0xf, ".".join(labels), addrs

shared = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
own = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
want = {}
for i in range(n):
    qid = 1000 + 7 * i
    shared.sendto(query(qid, "h%d.tapsplice.test" % i), (server, 53))
    want[(shared.fileno(), qid)] = i
for i, s in enumerate(own):
    qid = 30000 + i
    j = n - 1 - i
    s.sendto(query(qid, "h%d.tapsplice.test" % j), (server, 53))
    want[(s.fileno(), qid)] = j
answered, bad = 0, []
deadline = time.monotonic() + 10
socks = [shared] + own
while want and time.monotonic() < deadline:
    r, _, _ = select.select(socks, [], [], 0.5)
    for s in r:
        m, frm = s.recvfrom(4096)
        qid, rcode, name, addrs = parse(m)
        i = want.pop((s.fileno(), qid), None)
        if i is None or frm != (server, 53) or rcode != 0 or name != "h%d.tapsplice.test" % i \
                or addrs != ["192.0.2.%d" % (100 + i)]:
            bad.append({"qid": qid, "name": name, "addrs": addrs, "rcode": rcode, "from": "%s:%d" % frm})
        else:
            answered += 1
print(json.dumps({"ok": not want and not bad, "answered": answered, "missing": len(want), "bad": bad[:5]}))
"#;

/// `tapsplice run` with a resolv.conf naming a loopback resolver: CMD sees an /etc/resolv.conf
/// naming N+3 (so `getent` resolves out of the box), the host's file and the test's file are
/// untouched, and no mount leaks into the caller's mount namespace.
#[test]
fn dns_run_rewrites_loopback_resolv_conf_and_getent_resolves() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let name = "getent.tapsplice.test";
    let dns = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.11")]);
    let rc = ResolvConf::naming(dns.addr);
    let host_before = fs::read("/etc/resolv.conf").expect("read /etc/resolv.conf");
    let mounts_before = resolv_conf_mounts();
    let script = format!("cat /etc/resolv.conf; echo ===; getent hosts {name}; echo \"rc=$?\"");
    let out = tapsplice_run_capture(&bin, &[&rc.opt], &sh_script(&script, &[]), None, SHORT);
    out.assert_success("getent in tapsplice run");
    let text = out.stdout_str();
    let (seen_rc, getent) = text.split_once("===\n").expect("both parts");
    let nameservers: Vec<&str> = seen_rc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    assert_eq!(
        nameservers,
        [DNS_ADDR],
        "CMD's /etc/resolv.conf should name only N+3:\n{seen_rc}"
    );
    let fields: Vec<&str> = getent
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        fields,
        ["192.0.2.11", name],
        "getent hosts {name} in CMD:\n{text}"
    );
    assert!(dns.queries_for(name) >= 1, "{}", dns.query_log());
    assert_eq!(
        fs::read("/etc/resolv.conf").expect("read /etc/resolv.conf"),
        host_before,
        "the host's /etc/resolv.conf changed"
    );
    assert_eq!(
        fs::read_to_string(&rc.path).expect("read test resolv.conf"),
        rc.text,
        "the --resolv-conf file changed"
    );
    assert_eq!(
        resolv_conf_mounts(),
        mounts_before,
        "a resolv.conf mount leaked into the caller's mount namespace"
    );
}

/// A resolver that is not on loopback (in a veth peer namespace): CMD keeps the host's own
/// /etc/resolv.conf (byte for byte), and N+3 relays to that resolver.
#[test]
fn dns_non_loopback_resolver_in_veth_peer() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let name = "peer.tapsplice.test";
    let peer = VethPeer::new();
    let dns = Dnsmasq::start(
        Some(&peer.ns),
        peer.peer_ip,
        53,
        &[host_record(name, "192.0.2.21")],
    );
    let rc = ResolvConf::naming(peer.peer_ip);
    let host_rc = fs::read_to_string("/etc/resolv.conf").expect("read /etc/resolv.conf");
    // CMD only reads its resolv.conf: it must not query the host's resolver.
    let script =
        format!("cat /etc/resolv.conf; echo ===; dig +short +time=2 +tries=2 @{DNS_ADDR} {name} A");
    let out = tapsplice_run_capture(&bin, &[&rc.opt], &sh_script(&script, &[]), None, SHORT);
    out.assert_success("dig in tapsplice run");
    let text = out.stdout_str();
    let (seen_rc, answer) = text.split_once("===\n").expect("both parts");
    assert_eq!(
        seen_rc, host_rc,
        "with a non-loopback resolver CMD should see the host's /etc/resolv.conf unchanged"
    );
    assert_eq!(answer.trim(), "192.0.2.21", "answer via N+3:\n{text}");
    assert!(dns.queries_for(name) >= 1, "{}", dns.query_log());
    drop(dns);
    drop(peer);
}

/// The resolv.conf is re-read when it changes, without a restart: within one `tapsplice run`,
/// N+3 follows an in-place rewrite (resolver A to B) and then an atomic rename (B back to A).
#[test]
fn dns_resolv_conf_change_picked_up_without_restart() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let name = "switch.tapsplice.test";
    let a = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.31")]);
    let b = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.32")]);
    let rc = ResolvConf::naming(a.addr);
    let flags = TempDir::new("tsflags");
    // Query, then for each flag: wait for it (at most 30 s), then query every 0.2 s until the
    // answer is the expected one (at most 10 s), printing the answer and the number of tries.
    let script = r#"
flags=$1 name=$2
q() { dig +short +time=1 +tries=1 @10.0.2.3 "$name" A | tr -d '\n'; }
echo "first=$(q)"
for step in 1 2; do
    eval "want=\${$((step + 2))}"
    i=0
    while [ ! -e "$flags/go$step" ]; do
        i=$((i + 1)); [ $i -gt 600 ] && { echo "no flag go$step after 30 s"; exit 3; }
        sleep 0.05
    done
    tries=0
    while :; do
        tries=$((tries + 1)); a=$(q)
        [ "$a" = "$want" ] && break
        [ $tries -ge 50 ] && break
        sleep 0.2
    done
    echo "step$step=$a tries=$tries"
done
"#;
    let argv = sh_script(
        script,
        &[
            flags.path().display().to_string(),
            name.into(),
            "192.0.2.32".into(),
            "192.0.2.31".into(),
        ],
    );
    let mut run = BackgroundRun::start(&bin, &[&rc.opt], &argv);
    let first = run.wait_line("the first answer", SHORT, |l| l.starts_with("first="));
    assert_eq!(first, "first=192.0.2.31", "before any change: resolver A");

    // In place, as an editor or `echo >` would.
    let t1 = Instant::now();
    fs::write(&rc.path, format!("nameserver {}\n", b.addr)).expect("rewrite resolv.conf");
    fs::write(flags.join("go1"), "").expect("flag go1");
    let step1 = run.wait_line("the answer after the in-place rewrite", SHORT, |l| {
        l.starts_with("step1=")
    });
    eprintln!("in-place rewrite picked up: {step1} ({:?})", t1.elapsed());
    assert!(
        step1.starts_with("step1=192.0.2.32 "),
        "after rewriting the resolv.conf in place to name resolver B, N+3 still answers from \
         elsewhere within 10 s: {step1}"
    );

    // Atomically, as resolvconf or systemd-resolved would: a new file renamed over the old.
    let tmp = rc.dir.join("resolv.conf.new");
    fs::write(&tmp, format!("# switched back\nnameserver {}\n", a.addr)).expect("write new");
    let t2 = Instant::now();
    fs::rename(&tmp, &rc.path).expect("rename over resolv.conf");
    fs::write(flags.join("go2"), "").expect("flag go2");
    let step2 = run.wait_line("the answer after the rename", SHORT, |l| {
        l.starts_with("step2=")
    });
    eprintln!("rename picked up: {step2} ({:?})", t2.elapsed());
    assert!(
        step2.starts_with("step2=192.0.2.31 "),
        "after renaming a new resolv.conf naming resolver A over the old one, N+3 still answers \
         from elsewhere within 10 s: {step2}"
    );
    let (status, stdout) = run.finish(SHORT);
    assert!(
        status.success(),
        "run: {}\n{stdout}\n{}",
        describe_status(status),
        run.stderr()
    );
    assert!(a.queries_for(name) >= 2, "resolver A: {}", a.query_log());
    assert!(b.queries_for(name) >= 1, "resolver B: {}", b.query_log());
}

/// `--dns-upstream` overrides the resolv.conf, with or without a port, over UDP and TCP.
#[test]
fn dns_upstream_option_overrides_resolv_conf() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let name = "upstream.tapsplice.test";
    let in_rc = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.41")]);
    let on_53 = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.42")]);
    let addr = unique_loopback_addr();
    let port = free_udp_tcp_port(addr);
    let on_port = Dnsmasq::start(None, addr, port, &[host_record(name, "192.0.2.43")]);
    let rc = ResolvConf::naming(in_rc.addr);

    let up = format!("--dns-upstream={}", on_53.addr);
    assert_eq!(
        dig_in_run(&bin, &[&rc.opt, &up], name, false),
        ["192.0.2.42"],
        "{up} (UDP)"
    );
    let up = format!("--dns-upstream={}:{port}", on_port.addr);
    assert_eq!(
        dig_in_run(&bin, &[&rc.opt, &up], name, false),
        ["192.0.2.43"],
        "{up} (UDP)"
    );
    assert_eq!(
        dig_in_run(&bin, &[&rc.opt, &up], name, true),
        ["192.0.2.43"],
        "{up} (TCP)"
    );
    assert_eq!(
        in_rc.queries_for(name),
        0,
        "the resolv.conf's resolver was asked despite --dns-upstream: {}",
        in_rc.query_log()
    );
    assert!(on_53.queries_for(name) >= 1, "{}", on_53.query_log());
    assert!(on_port.queries_for(name) >= 2, "{}", on_port.query_log());
}

/// `--disable-host-loopback` (which rootlesskit and Docker always pass) keeps the guest away
/// from the host's loopback, not N+3 from a loopback resolver: DNS still works.
#[test]
fn dns_works_with_disable_host_loopback() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let name = "noloop.tapsplice.test";
    let dns = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.51")]);
    let rc = ResolvConf::naming(dns.addr);
    for tcp in [false, true] {
        assert_eq!(
            dig_in_run(&bin, &["--disable-host-loopback", &rc.opt], name, tcp),
            ["192.0.2.51"],
            "with --disable-host-loopback, tcp={tcp}"
        );
    }
}

/// `--disable-dns`: N+3 gives no answer at all, over UDP and TCP: dig times out (exit 9), not
/// refused or unreachable, and the resolver never sees the query.
#[test]
fn dns_disable_dns_gives_no_answer() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    let name = "disabled.tapsplice.test";
    let dns = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.61")]);
    let rc = ResolvConf::naming(dns.addr);
    let script = format!(
        "for mode in +notcp +tcp; do \
           t0=$(date +%s%N); \
           dig $mode +time=1 +tries=1 @{DNS_ADDR} {name} A 2>&1; rc=$?; \
           t1=$(date +%s%N); \
           echo \"result $mode rc=$rc ms=$(( (t1 - t0) / 1000000 ))\"; \
           echo ===; \
         done"
    );
    let out = tapsplice_run_capture(
        &bin,
        &["--disable-dns", &rc.opt],
        &sh_script(&script, &[]),
        None,
        SHORT,
    );
    out.assert_success("dig in tapsplice run --disable-dns");
    let text = out.stdout_str();
    for (mode, part) in ["+notcp", "+tcp"].iter().zip(text.split("===\n")) {
        let result = part
            .lines()
            .find(|l| l.starts_with("result "))
            .unwrap_or_else(|| panic!("no result for {mode}:\n{text}"));
        assert!(
            result.starts_with(&format!("result {mode} rc=9 ")),
            "dig {mode} should fail with exit 9 (no servers reached): {result}\n{part}"
        );
        let ms: u64 = result
            .rsplit("ms=")
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            ms >= 900,
            "dig {mode} gave up after {ms} ms: an answer (RST, ICMP) came instead of silence:\n{part}"
        );
        assert!(
            part.contains("timed out") && part.contains("no servers could be reached"),
            "dig {mode} should time out:\n{part}"
        );
        for word in ["refused", "reset", "unreachable"] {
            assert!(
                !part.to_lowercase().contains(word),
                "dig {mode} saw {word:?}; --disable-dns must give no answer at all:\n{part}"
            );
        }
    }
    assert_eq!(
        dns.queries_for(name),
        0,
        "the resolver was asked despite --disable-dns: {}",
        dns.query_log()
    );
}

/// Without `--resolv-conf` or `--dns-upstream`, the relay reads /etc/resolv.conf. The test runs
/// tapsplice in a private mount namespace of its own (`unshare --mount`) where /etc/resolv.conf
/// is a bind mount of a file naming a loopback resolver (like systemd-resolved's 127.0.0.53), so
/// the host's real file and resolver stay out of it. Names resolve out of the box in CMD.
#[test]
fn dns_default_reads_etc_resolv_conf() {
    let Some(bin) = prereqs(DNS_TOOLS) else {
        return;
    };
    if !require_tools(&["unshare", "mount"]) {
        return;
    }
    let name = "default.tapsplice.test";
    let dns = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.71")]);
    let rc = ResolvConf::naming(dns.addr);
    let script = format!(
        "cat /etc/resolv.conf; echo ===; getent hosts {name}; \
         dig +short +tcp +time=2 +tries=2 @{DNS_ADDR} {name} A"
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/resolv.conf || exit 99; shift; exec "$@""#)
        .arg("sh")
        .arg(&rc.path)
        .arg(&bin)
        .arg("run")
        .arg("--")
        .args(sh_script(&script, &[]));
    let out = run_capture(
        "tapsplice run in a mount namespace with its own /etc/resolv.conf",
        &mut cmd,
        None,
        SHORT,
    );
    out.assert_success("tapsplice run reading /etc/resolv.conf");
    let text = out.stdout_str();
    let (seen_rc, rest) = text.split_once("===\n").expect("both parts");
    assert!(
        seen_rc
            .lines()
            .any(|l| l.trim() == format!("nameserver {DNS_ADDR}"))
            && !seen_rc.contains(&dns.addr.to_string()),
        "CMD's /etc/resolv.conf should name N+3 instead of the loopback resolver:\n{seen_rc}"
    );
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(
        lines
            .first()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["192.0.2.71", name]),
        "getent in CMD:\n{text}"
    );
    assert_eq!(
        lines.get(1),
        Some(&"192.0.2.71"),
        "dig +tcp in CMD:\n{text}"
    );
    assert!(dns.queries_for(name) >= 2, "{}", dns.query_log());
}

/// Rootless: `tapsplice run` as an ordinary user (its own user and mount namespaces) relays DNS
/// to a loopback resolver and gives CMD a resolv.conf naming N+3; the host's file is untouched.
#[test]
fn dns_rootless_run_resolves_through_loopback_resolver() {
    let Some(env) = RootlessUser::new() else {
        return;
    };
    if prereqs(DNS_TOOLS).is_none() {
        return;
    }
    let name = "rootless.tapsplice.test";
    let dns = Dnsmasq::on_loopback(&[host_record(name, "192.0.2.81")]);
    let rc = ResolvConf::naming(dns.addr);
    let host_before = fs::read("/etc/resolv.conf").expect("read /etc/resolv.conf");
    let script = format!(
        "cat /etc/resolv.conf; echo ===; getent hosts {name}; \
         dig +short +time=2 +tries=2 @{DNS_ADDR} {name} A; \
         dig +short +tcp +time=2 +tries=2 @{DNS_ADDR} {name} A"
    );
    let out = env.tapsplice_run(&[&rc.opt], &sh_script(&script, &[]), SHORT);
    out.assert_success("rootless tapsplice run with DNS");
    let text = out.stdout_str();
    let (seen_rc, rest) = text.split_once("===\n").expect("both parts");
    assert!(
        seen_rc
            .lines()
            .any(|l| l.trim() == format!("nameserver {DNS_ADDR}")),
        "CMD's /etc/resolv.conf should name N+3:\n{seen_rc}"
    );
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(
        lines
            .first()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["192.0.2.81", name]),
        "getent in CMD:\n{text}"
    );
    assert_eq!(
        lines.get(1..3),
        Some(&["192.0.2.81", "192.0.2.81"][..]),
        "dig in CMD:\n{text}"
    );
    assert_eq!(
        fs::read("/etc/resolv.conf").expect("read /etc/resolv.conf"),
        host_before,
        "the host's /etc/resolv.conf changed"
    );
}
