//! DNS fixtures: unique loopback addresses, a minimal DNS query, dnsmasq resolvers, resolv.conf
//! files.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

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
    pub addr: IpAddr,
    pub port: u16,
    child: Child,
    dir: TempDir,
}

impl Dnsmasq {
    /// On a fresh 127.77.x.y, port 53 (so a resolv.conf can name it).
    pub fn on_loopback(records: &[String]) -> Dnsmasq {
        Dnsmasq::start(None, unique_loopback_addr(), 53, records)
    }

    /// On `addr:port`, inside `ns` when given (an address the host reaches). Returns once it
    /// answers a query from the host.
    pub fn start(
        ns: Option<&NetnsFixture>,
        addr: impl Into<IpAddr>,
        port: u16,
        records: &[String],
    ) -> Dnsmasq {
        let addr = addr.into();
        let server = SocketAddr::from((addr, port));
        Dnsmasq::start_probed(ns, addr, port, records, || {
            dns_query_a(
                server,
                "ready-probe.tapsplice.test",
                Duration::from_millis(200),
            )
            .is_some()
        })
    }

    /// Like [`Dnsmasq::start`], ready once `probe` says it answers (for an address the host
    /// cannot reach, e.g. a namespace's own loopback). Waits 15 s at most.
    pub fn start_probed(
        ns: Option<&NetnsFixture>,
        addr: IpAddr,
        port: u16,
        records: &[String],
        mut probe: impl FnMut() -> bool,
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
                probe()
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

    /// How many queries of type `qtype` (e.g. `AAAA`) for exactly `name` it has logged.
    pub fn queries_of(&self, qtype: &str, name: &str) -> usize {
        let needle = format!("query[{qtype}] {name} from ");
        self.query_log()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// A resolv.conf naming one nameserver, in a temp dir of its own, for `--resolv-conf`.
pub struct ResolvConf {
    pub dir: TempDir,
    pub path: PathBuf,
    /// What it was written with: `nameserver SERVER` and a newline.
    pub text: String,
    /// `--resolv-conf=PATH`.
    pub opt: String,
}

impl ResolvConf {
    pub fn naming(server: impl std::fmt::Display) -> ResolvConf {
        let dir = TempDir::new("tsdns");
        let path = dir.join("resolv.conf");
        let text = format!("nameserver {server}\n");
        fs::write(&path, &text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let opt = format!("--resolv-conf={}", path.display());
        ResolvConf {
            dir,
            path,
            text,
            opt,
        }
    }
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
