//! The network a tapsplice instance serves, derived from the command line.
//!
//! slirp4netns derives every address from one CIDR (default 10.0.2.0/24): N+2 is the
//! gateway (the host, as seen from the container), N+3 the DNS server, N+100 the guest.
//! Clients hard-code these offsets, so they are computed here and nowhere else. The parse
//! errors carry slirp4netns's exact texts because scripts and tests match them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A command-line value that slirp4netns would reject, with its message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not of the form `a.b.c.d/len`.
    #[error("invalid CIDR: {0}")]
    InvalidCidr(String),
    /// The part before the slash is not an IPv4 address.
    #[error("invalid network address: {0}")]
    InvalidNetwork(String),
    /// The prefix leaves fewer than the 7 host bits N+100 needs.
    #[error("prefix length needs to be 1-25")]
    PrefixLength,
    /// Host bits are set. slirp4netns prints this fixed example whatever the input.
    #[error("CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24")]
    NotNetworkAddress,
    /// MTU outside 68..=65521 or not a number.
    #[error("MTU must be a positive integer (< 65522)")]
    Mtu,
    /// Neither an IPv4 address nor the name of an interface with one.
    #[error("outbound-addr has to be valid ipv4 address or interface name.")]
    OutboundAddr,
    /// Neither an IPv6 address nor the name of an interface with one. slirp4netns 1.2.0 prints
    /// this text (sic: the IPv4 wording and "iterface") for `--outbound-addr6`; kept to the byte.
    #[error("outbound-addr has to be valid ipv4 address or iterface name.")]
    OutboundAddr6,
    /// Not `IP` or `IP:PORT` / `[IPv6]:PORT`.
    #[error("dns-upstream has to be an IP address, optionally with :PORT")]
    DnsUpstream,
    /// Not a positive number of seconds.
    #[error("udp-timeout must be a positive number of seconds")]
    UdpTimeout,
    /// Not six colon-separated hex octets, or not a unicast address.
    #[error(
        "\"{0}\" is an invalid MAC address.\nmacaddress has to be a valid MAC address (hex string, 6 bytes, each byte separated by a ':')."
    )]
    Mac(String),
}

pub const DEFAULT_MTU: usize = 1500;
pub const MIN_MTU: usize = 68;
pub const MAX_MTU: usize = 65521;
pub const DEFAULT_CIDR: &str = "10.0.2.0/24";

/// Where the user's network sits and how tapsplice behaves in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// N: the network address of `--cidr`.
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// IP MTU of the TAP device (the Ethernet frame is 14 bytes more).
    pub mtu: usize,
    /// Refuse guest connections to N+2 instead of mapping them to the host's 127.0.0.1.
    pub disable_host_loopback: bool,
    /// MAC for the guest's TAP device when we configure it.
    pub guest_mac: Option<[u8; 6]>,
    /// N+3 does not answer DNS at all.
    pub disable_dns: bool,
    /// Relay DNS here instead of to the first nameserver of `resolv_conf`.
    pub dns_upstream: Option<SocketAddr>,
    /// Where the host's resolver configuration is read from (re-read when it changes).
    pub resolv_conf: PathBuf,
    /// Idle timeout of a UDP flow that has seen replies; one without replies expires after
    /// [`UDP_UNREPLIED_TIMEOUT`] (or this, if shorter).
    pub udp_timeout: Duration,
    /// Source address for IPv4 host sockets (`--outbound-addr`).
    pub outbound_addr: Option<Ipv4Addr>,
    /// Source address for IPv6 host sockets (`--outbound-addr6`).
    pub outbound_addr6: Option<Ipv6Addr>,
    /// Serve IPv6 too (`-6`): prefix fd00::/64, gateway fd00::2, DNS fd00::3.
    pub enable_ipv6: bool,
}

/// The IPv6 prefix of the guest's network (libslirp's), /64, announced for SLAAC.
pub const IPV6_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);
pub const IPV6_PREFIX_LEN: u8 = 64;

/// Idle timeout of a UDP flow that has seen replies (nf_conntrack_udp_timeout_stream).
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(120);
/// Idle timeout of a UDP flow without replies (nf_conntrack_udp_timeout).
pub const UDP_UNREPLIED_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle timeout of a DNS flow to N+3.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle timeout of an ICMP echo flow (nf_conntrack_icmp_timeout).
pub const ECHO_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            network: Ipv4Addr::new(10, 0, 2, 0),
            prefix_len: 24,
            mtu: DEFAULT_MTU,
            disable_host_loopback: false,
            guest_mac: None,
            disable_dns: false,
            dns_upstream: None,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            udp_timeout: DEFAULT_UDP_TIMEOUT,
            outbound_addr: None,
            outbound_addr6: None,
            enable_ipv6: false,
        }
    }
}

impl NetConfig {
    fn offset(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// N+2: the host, as the guest sees it.
    pub fn gateway(&self) -> Ipv4Addr {
        self.offset(2)
    }

    /// N+3: the DNS relay.
    pub fn dns(&self) -> Ipv4Addr {
        self.offset(3)
    }

    /// N+100: the guest's address when configured by `-c` or rootlesskit.
    pub fn guest(&self) -> Ipv4Addr {
        self.offset(100)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix_len)))
    }

    /// The gateway's MAC, built as libslirp builds it: `52:55` followed by the IPv4 address.
    pub fn gateway_mac(&self) -> [u8; 6] {
        let [a, b, c, d] = self.gateway().octets();
        [0x52, 0x55, a, b, c, d]
    }

    /// Whether `addr` is one of the addresses tapsplice itself answers for (N+2, N+3).
    pub fn is_own_address(&self, addr: Ipv4Addr) -> bool {
        addr == self.gateway() || addr == self.dns()
    }

    /// fd00::2: the host, as the guest sees it over IPv6.
    pub fn gateway6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)
    }

    /// fd00::3: the DNS relay over IPv6.
    pub fn dns6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3)
    }

    /// fe80::2: the router's link-local address, source of router advertisements.
    pub fn router_link_local(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2)
    }

    /// Whether tapsplice itself answers for `addr` over IPv6.
    pub fn is_own_address6(&self, addr: Ipv6Addr) -> bool {
        addr == self.gateway6() || addr == self.dns6() || addr == self.router_link_local()
    }

    /// Whether `addr` is the host (N+2 or fd00::2).
    pub fn is_gateway(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(v4) => v4 == self.gateway(),
            IpAddr::V6(v6) => v6 == self.gateway6(),
        }
    }

    /// Whether `addr` is the DNS relay (N+3 or fd00::3).
    pub fn is_dns(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(v4) => v4 == self.dns(),
            IpAddr::V6(v6) => v6 == self.dns6(),
        }
    }
}

/// Parses `--cidr` exactly as slirp4netns does.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let invalid = || ConfigError::InvalidCidr(text.to_string());
    let (addr, len) = text.split_once('/').ok_or_else(invalid)?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let len: u8 = len.parse().map_err(|_| invalid())?;
    if len > 32 {
        return Err(invalid());
    }
    if !(1..=25).contains(&len) {
        return Err(ConfigError::PrefixLength);
    }
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| ConfigError::InvalidNetwork(addr.to_string()))?;
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        return Err(ConfigError::NotNetworkAddress);
    }
    Ok((addr, len))
}

/// Parses `--mtu`: a decimal integer in 68..=65521.
pub fn parse_mtu(text: &str) -> Result<usize, ConfigError> {
    match text.parse::<usize>() {
        Ok(mtu) if (MIN_MTU..=MAX_MTU).contains(&mtu) => Ok(mtu),
        _ => Err(ConfigError::Mtu),
    }
}

/// Parses `--macaddress` (`52:54:00:12:34:56`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || ConfigError::Mac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for octet in mac.iter_mut() {
        let part = parts.next().ok_or_else(bad)?;
        if part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// Parses `--dns-upstream`: `IP`, `IP:PORT` or `[IPv6]:PORT`; the port defaults to 53.
pub fn parse_dns_upstream(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| ConfigError::DnsUpstream)
}

/// Parses `--udp-timeout` (seconds).
pub fn parse_udp_timeout(text: &str) -> Result<Duration, ConfigError> {
    match text.parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(ConfigError::UdpTimeout),
    }
}

/// Parses `--outbound-addr`: an IPv4 address, or an interface whose first IPv4 address is used.
pub fn parse_outbound_addr(text: &str) -> Result<Ipv4Addr, ConfigError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    interface_address(text, |a| match a {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(_) => None,
    })
    .ok_or(ConfigError::OutboundAddr)
}

/// Parses `--outbound-addr6`: an IPv6 address, or an interface whose first global IPv6
/// address is used.
pub fn parse_outbound_addr6(text: &str) -> Result<Ipv6Addr, ConfigError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    interface_address(text, |a| match a {
        std::net::IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some(v6),
        _ => None,
    })
    .ok_or(ConfigError::OutboundAddr6)
}

fn interface_address<T>(name: &str, pick: impl Fn(std::net::IpAddr) -> Option<T>) -> Option<T> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != name {
            return None;
        }
        let addr = ifa.address?;
        let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
            (Some(v4), _) => std::net::IpAddr::V4(v4.ip()),
            (_, Some(v6)) => std::net::IpAddr::V6(v6.ip()),
            _ => return None,
        };
        pick(ip)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addresses_are_slirp4netns_offsets() {
        let cfg = NetConfig::default();
        assert_eq!(cfg.gateway(), Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(cfg.dns(), Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(cfg.guest(), Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(cfg.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(cfg.gateway_mac(), [0x52, 0x55, 10, 0, 2, 2]);
    }

    #[test]
    fn slash_25_puts_the_guest_at_n_plus_100() {
        let (network, prefix_len) = parse_cidr("10.0.135.128/25").unwrap();
        let cfg = NetConfig {
            network,
            prefix_len,
            ..NetConfig::default()
        };
        assert_eq!(cfg.guest(), Ipv4Addr::new(10, 0, 135, 228));
    }

    #[test]
    fn cidr_errors_carry_slirp4netns_texts() {
        for bad in [
            "24",
            "foo",
            "10.0.2.0",
            "10.0.2.0/",
            "10.0.2.0/x",
            "10.0.2.0/33",
        ] {
            assert_eq!(
                parse_cidr(bad).unwrap_err().to_string(),
                format!("invalid CIDR: {bad}")
            );
        }
        assert_eq!(
            parse_cidr("999.0.0.0/24").unwrap_err().to_string(),
            "invalid network address: 999.0.0.0"
        );
        assert_eq!(
            parse_cidr("10.0.2.0/26").unwrap_err().to_string(),
            "prefix length needs to be 1-25"
        );
        assert_eq!(
            parse_cidr("10.0.2.100/26").unwrap_err().to_string(),
            "prefix length needs to be 1-25"
        );
        assert_eq!(
            parse_cidr("10.0.2.100/24").unwrap_err().to_string(),
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"
        );
    }

    #[test]
    fn mtu_range_is_68_to_65521() {
        assert_eq!(parse_mtu("68"), Ok(68));
        assert_eq!(parse_mtu("65521"), Ok(65521));
        for bad in ["67", "65522", "0", "-1", "abc", ""] {
            assert!(parse_mtu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_must_be_six_unicast_octets() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "01:00:5e:00:00:01",
            "zz:54:00:12:34:56",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
