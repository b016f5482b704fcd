//! Network namespaces and veth peers ("remote" hosts), and sysctls set for one test.

use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// A network namespace made by `ip netns add`, deleted on drop.
pub struct NetnsFixture {
    name: String,
}

impl NetnsFixture {
    pub fn new() -> NetnsFixture {
        let name = unique_name("tsns");
        sh_ok("ip", &["netns", "add", &name]);
        let ns = NetnsFixture { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, for `--netns-type=path`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> Captured {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        sh_ok("ip", &a)
    }

    /// True when the namespace has a link called `ifname`.
    pub fn has_link(&self, ifname: &str) -> bool {
        sh_status("ip", &["-n", &self.name, "link", "show", "dev", ifname])
    }

    /// A command that runs `prog args...` inside the namespace (`ip netns exec`, which execs, so
    /// the PID is the program's).
    pub fn exec(&self, prog: &str, args: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]).args(args);
        c
    }
}

impl Default for NetnsFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetnsFixture {
    fn drop(&mut self) {
        ip_quietly(&["netns", "del", &self.name]);
    }
}

/// `ip ARGS...` for clean-up: output and outcome ignored.
fn ip_quietly(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The host end of a veth pair whose other end is in a test namespace: deleted (and with it the
/// other end) on drop.
struct HostVeth {
    name: String,
}

impl HostVeth {
    /// `ip link add HOST type veth peer name PEER netns NS`, the names being the prefixes with
    /// the process id and `n`. Returns the host end and the peer end's name.
    fn add(ns: &NetnsFixture, host_prefix: &str, peer_prefix: &str, n: u32) -> (HostVeth, String) {
        let tag = format!("{:x}{:x}", std::process::id(), n);
        let (host_if, peer_if) = (format!("{host_prefix}{tag}"), format!("{peer_prefix}{tag}"));
        assert!(host_if.len() <= 15, "interface name {host_if} too long");
        sh_ok(
            "ip",
            &[
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
                "netns",
                ns.name(),
            ],
        );
        (HostVeth { name: host_if }, peer_if)
    }
}

impl Drop for HostVeth {
    fn drop(&mut self) {
        ip_quietly(&["link", "del", &self.name]);
    }
}

/// A "remote" host: a namespace of its own reached from the host netns over a veth pair in
/// 10.201.X.Y/30 (never overlapping 10.0.2.0/24). The host end is deleted on drop, then the
/// namespace. Drop any process running in it before this.
pub struct VethPeer {
    /// Dropped before `ns`.
    host: HostVeth,
    /// Address of the host end.
    pub host_ip: Ipv4Addr,
    /// Address of the peer end, inside [`VethPeer::ns`].
    pub peer_ip: Ipv4Addr,
    pub ns: NetnsFixture,
}

impl VethPeer {
    pub fn new() -> VethPeer {
        let ns = NetnsFixture::new();
        let n = next_id();
        let used = sh_ok("ip", &["-4", "-o", "addr", "show"]).stdout_str();
        let (host_ip, peer_ip) = (0..64u32)
            .map(|attempt| {
                let idx = (std::process::id().wrapping_mul(64) + n * 7 + attempt * 131) % 16384;
                let (a, b) = ((idx / 64) as u8, ((idx % 64) * 4) as u8);
                (
                    Ipv4Addr::new(10, 201, a, b + 1),
                    Ipv4Addr::new(10, 201, a, b + 2),
                )
            })
            .find(|(h, p)| !used.contains(&format!(" {h}/")) && !used.contains(&format!(" {p}/")))
            .expect("no free 10.201.x.y/30 subnet among 64 candidates");
        let (host, peer_if) = HostVeth::add(&ns, "tsh", "tsp", n);
        let peer = VethPeer {
            host,
            host_ip,
            peer_ip,
            ns,
        };
        sh_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                peer.host_if(),
            ],
        );
        sh_ok("ip", &["link", "set", peer.host_if(), "up"]);
        peer.ns
            .ip(&["addr", "add", &format!("{peer_ip}/30"), "dev", &peer_if]);
        peer.ns.ip(&["link", "set", &peer_if, "up"]);
        peer
    }

    pub fn host_if(&self) -> &str {
        &self.host.name
    }
}

impl Default for VethPeer {
    fn default() -> Self {
        Self::new()
    }
}

/// A sysctl (a file under /proc/sys of the test's own network namespace) set for the life of
/// the guard and restored on drop.
pub struct SysctlGuard {
    path: PathBuf,
    old: String,
}

impl SysctlGuard {
    pub fn set(path: &str, value: &str) -> SysctlGuard {
        let path = PathBuf::from(path);
        let old = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
        fs::write(&path, value).unwrap_or_else(|e| panic!("write {value:?} to {path:?}: {e}"));
        SysctlGuard { path, old }
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, self.old.trim());
    }
}

/// A "remote" host for IPv4 and IPv6: a namespace of its own reached from the host netns over a
/// veth pair. The pair gets a /24 in 10.202.0.0/16 and a /64 in fd42::/16 chosen per test (and
/// not in use on the host): the peer end has `.2` and `::2`, the host end one address for each
/// of the host parts given (in that order: the first is the interface's first address). IPv6
/// duplicate address detection is off on both ends, so no address is ever tentative. The host
/// end (and with it the peer end) is deleted on drop, then the namespace.
pub struct DualStackPeer {
    /// Dropped before `ns`.
    host: HostVeth,
    pub peer_if: String,
    /// The host end's IPv4 addresses, in the order they were added.
    pub host4: Vec<Ipv4Addr>,
    pub peer4: Ipv4Addr,
    /// The host end's global IPv6 addresses, in the order they were added.
    pub host6: Vec<std::net::Ipv6Addr>,
    pub peer6: std::net::Ipv6Addr,
    /// `10.202.X.0/24`.
    pub prefix4: String,
    /// `fd42:X:Y::/64`.
    pub prefix6: String,
    pub ns: NetnsFixture,
}

impl DualStackPeer {
    /// `host4` and `host6` are the last octet / last group of the host end's addresses
    /// (e.g. `&[1, 5]`); neither may contain 2 (the peer).
    pub fn new(host4: &[u8], host6: &[u16]) -> DualStackPeer {
        use std::net::Ipv6Addr;
        assert!(
            !host4.contains(&2) && !host6.contains(&2),
            ".2 / ::2 is the peer"
        );
        let ns = NetnsFixture::new();
        let n = next_id();
        let used = format!(
            "{}\n{}",
            sh_ok("ip", &["-o", "addr", "show"]).stdout_str(),
            sh_ok("ip", &["route", "show", "table", "all"]).stdout_str()
        );
        let pid = std::process::id();
        let (a, x, y) = (0..64u32)
            .map(|attempt| {
                let a = ((pid.wrapping_mul(31) + n * 7 + attempt * 53) % 254 + 1) as u8;
                let x = (pid & 0xffff) as u16;
                let y = ((n * 131 + attempt) & 0xffff) as u16;
                (a, x, y)
            })
            .find(|(a, x, y)| {
                !used.contains(&format!("10.202.{a}."))
                    && !used.contains(&format!("fd42:{x:x}:{y:x}:"))
            })
            .expect("no free 10.202.X.0/24 and fd42:X:Y::/64 among 64 candidates");
        let v4 = |last: u8| Ipv4Addr::new(10, 202, a, last);
        let v6 = |last: u16| Ipv6Addr::new(0xfd42, x, y, 0, 0, 0, 0, last);
        let (host, peer_if) = HostVeth::add(&ns, "tsd", "tse", n);
        let peer = DualStackPeer {
            host,
            peer_if,
            host4: host4.iter().map(|&l| v4(l)).collect(),
            peer4: v4(2),
            host6: host6.iter().map(|&l| v6(l)).collect(),
            peer6: v6(2),
            prefix4: format!("10.202.{a}.0/24"),
            prefix6: format!("fd42:{x:x}:{y:x}::/64"),
            ns,
        };
        let dad = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", peer.host_if());
        fs::write(&dad, "0").unwrap_or_else(|e| panic!("write 0 to {dad}: {e}"));
        let c = run_capture(
            "accept_dad=0 in the peer namespace",
            &mut peer.ns.exec(
                "/bin/sh",
                &[
                    "-c".into(),
                    "echo 0 >/proc/sys/net/ipv6/conf/$1/accept_dad".into(),
                    "sh".into(),
                    peer.peer_if.clone(),
                ],
            ),
            None,
            Duration::from_secs(30),
        );
        c.assert_success("accept_dad=0 in the peer namespace");
        for addr in &peer.host4 {
            sh_ok(
                "ip",
                &["addr", "add", &format!("{addr}/24"), "dev", peer.host_if()],
            );
        }
        for addr in &peer.host6 {
            sh_ok(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{addr}/64"),
                    "dev",
                    peer.host_if(),
                    "nodad",
                ],
            );
        }
        sh_ok("ip", &["link", "set", peer.host_if(), "up"]);
        peer.ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", peer.peer4),
            "dev",
            &peer.peer_if,
        ]);
        peer.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", peer.peer6),
            "dev",
            &peer.peer_if,
            "nodad",
        ]);
        peer.ns.ip(&["link", "set", &peer.peer_if, "up"]);
        peer
    }

    pub fn host_if(&self) -> &str {
        &self.host.name
    }

    /// The source address the host's routing picks towards `dest` (`ip route get`).
    pub fn host_route_src(dest: std::net::IpAddr) -> std::net::IpAddr {
        let out = sh_ok("ip", &["-o", "route", "get", &dest.to_string()]).stdout_str();
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "src")
            .and_then(|_| words.next())
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no src in `ip route get {dest}`: {out}"))
    }
}
