//! Where DNS queries to N+3 go: the first `nameserver` of the host's resolv.conf (or the
//! upstream named with `--dns-upstream`).
//!
//! The relay runs in the host namespace, so loopback resolvers such as systemd-resolved's
//! 127.0.0.53 work. The file is looked at again when a new DNS flow starts: a `stat` decides
//! whether it changed, so a changed resolv.conf takes effect without a restart and an
//! unchanged one costs no parsing.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::stack::DNS_PORT;

pub struct Resolver {
    path: PathBuf,
    explicit: Option<SocketAddr>,
    /// (inode, size, mtime in ns) of the file when it was last read.
    seen: Option<(u64, u64, i128)>,
    upstream: Option<SocketAddr>,
}

impl Resolver {
    pub fn new(path: PathBuf, explicit: Option<SocketAddr>) -> Self {
        Resolver {
            path,
            explicit,
            seen: None,
            upstream: None,
        }
    }

    /// The upstream DNS server now, if there is one.
    pub fn upstream(&mut self) -> Option<SocketAddr> {
        if self.explicit.is_some() {
            return self.explicit;
        }
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            (
                m.ino(),
                m.size(),
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            )
        });
        if stamp != self.seen {
            self.seen = stamp;
            self.upstream = std::fs::read_to_string(&self.path)
                .ok()
                .and_then(|text| first_nameserver(&text));
            match self.upstream {
                Some(addr) => tracing::debug!(%addr, path = %self.path.display(), "DNS upstream"),
                None => {
                    tracing::warn!(path = %self.path.display(), "no nameserver found: DNS at N+3 will not answer")
                }
            }
        }
        self.upstream
    }
}

/// The first `nameserver` line of a resolv.conf, as an address on port 53.
pub fn first_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "nameserver" {
            return None;
        }
        // A scoped IPv6 address ("fe80::1%eth0") cannot be used from here; skip it.
        let ip: IpAddr = words.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, DNS_PORT))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nameserver_wins_and_comments_are_ignored() {
        let text = "# generated\nsearch example\nnameserver 127.0.0.53\nnameserver 192.0.2.1\n";
        assert_eq!(
            first_nameserver(text),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            first_nameserver("nameserver ::1\n"),
            Some("[::1]:53".parse().unwrap())
        );
        assert_eq!(first_nameserver("options ndots:1\n"), None);
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("tapsplice-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        let mut resolver = Resolver::new(path.clone(), None);
        assert_eq!(resolver.upstream(), Some("127.0.0.1:53".parse().unwrap()));
        std::fs::write(&path, "nameserver 127.0.0.2\nnameserver 127.0.0.3\n").unwrap();
        assert_eq!(resolver.upstream(), Some("127.0.0.2:53".parse().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
