//! `tapsplice run -p [ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]`: the forwards to make at start.
//!
//! The syntax is Docker's and rootlesskit's: ADDR defaults to 0.0.0.0 and may be IPv6 (with or
//! without brackets: `[::1]:8080:80`, `::1:8080:80`); each port may be a range `A-B`, in which
//! case both sides must be ranges of the same length (host port A+i goes to guest port C+i).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;

use super::{HostFwdSpec, Proto};

/// One `-p` argument, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    pub proto: Proto,
    pub host_addr: IpAddr,
    pub host_ports: RangeInclusive<u16>,
    pub guest_ports: RangeInclusive<u16>,
}

impl PublishSpec {
    /// The forwards this spec stands for, to guest address `guest`.
    pub fn forwards(&self, guest: Ipv4Addr) -> Vec<HostFwdSpec> {
        self.host_ports
            .clone()
            .zip(self.guest_ports.clone())
            .map(|(host, guest_port)| HostFwdSpec {
                proto: self.proto,
                host: SocketAddr::new(self.host_addr, host),
                guest: SocketAddrV4::new(guest, guest_port),
            })
            .collect()
    }
}

/// Parses one `-p` value; the error says what is wrong with it.
pub fn parse_publish(text: &str) -> Result<PublishSpec, String> {
    let bad = |why: &str| format!("invalid port forward {text:?}: {why}");
    let (body, proto) = match text.rsplit_once('/') {
        Some((body, "tcp")) => (body, Proto::Tcp),
        Some((body, "udp")) => (body, Proto::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (text, Proto::Tcp),
    };
    let mut parts = body.rsplitn(3, ':');
    let guest = parts.next().unwrap_or_default();
    let host = parts
        .next()
        .ok_or_else(|| bad("expected [ADDR:]HOSTPORT:GUESTPORT"))?;
    let host_addr = match parts.next() {
        None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(addr) => {
            let bare = addr
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(addr);
            bare.parse::<IpAddr>()
                .map_err(|_| bad(&format!("{addr:?} is not an IP address")))?
        }
    };
    let host_ports = port_range(host).ok_or_else(|| bad(&format!("bad host port {host:?}")))?;
    let guest_ports = port_range(guest).ok_or_else(|| bad(&format!("bad guest port {guest:?}")))?;
    if host_ports.len() != guest_ports.len() {
        return Err(bad("the host and guest port ranges differ in length"));
    }
    Ok(PublishSpec {
        proto,
        host_addr,
        host_ports,
        guest_ports,
    })
}

/// `N` or `A-B` with 1 <= A <= B <= 65535.
fn port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let one = |t: &str| {
        t.parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && t.bytes().all(|b| b.is_ascii_digit()))
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            (a <= b).then_some(a..=b)
        }
        None => one(text).map(|p| p..=p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ports_default_to_tcp_on_all_addresses() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(p.proto, Proto::Tcp);
        assert_eq!(p.host_addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!((p.host_ports, p.guest_ports), (8080..=8080, 80..=80));
    }

    #[test]
    fn address_protocol_and_ranges() {
        let p = parse_publish("127.0.0.1:8000-8002:9000-9002/udp").unwrap();
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.host_addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        let fwds = p.forwards(Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(fwds.len(), 3);
        assert_eq!(fwds[2].host, "127.0.0.1:8002".parse().unwrap());
        assert_eq!(fwds[2].guest, "10.0.2.100:9002".parse().unwrap());
    }

    #[test]
    fn ipv6_with_or_without_brackets() {
        for text in ["[::1]:8080:80", "::1:8080:80"] {
            let p = parse_publish(text).unwrap();
            assert_eq!(p.host_addr, "::1".parse::<IpAddr>().unwrap(), "{text}");
            assert_eq!(p.host_ports, 8080..=8080);
        }
        assert_eq!(
            parse_publish("[::]:53:53/udp").unwrap().host_addr,
            "::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn mistakes_are_refused() {
        for bad in [
            "8080",
            "8080:0",
            "0:80",
            "8080:80/sctp",
            "x:8080:80",
            "8000-8002:80",
            "8002-8000:80-82",
            "65536:80",
            "+80:80",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }
}
