//! Fixtures shared by the namespace and real-client tests.
//!
//! Everything a test makes (namespaces, veth pairs, child processes, temp dirs, servers) is owned
//! by a guard that removes it in `Drop`, so a failed assertion still cleans up. Names carry the
//! process id and a counter, so tests run in parallel. Servers bind port 0. Every wait has a
//! deadline and says what it waited for. Traffic goes only to loopback and to namespaces made here.
//!
//! Data checks use one deterministic byte stream, generated identically in Rust and in the Python
//! helper that runs inside namespaces (see [`PY_NET`]): block `k` of a stream with seed `s` is
//! the 1 MiB pattern block of `s` with its first 8 bytes replaced by `k` (little endian); the
//! pattern block is `sha256("tapsplice:{s}:{i}")` for `i` in `0..32768`, concatenated. A stream of
//! length `n` is the first `n` bytes of blocks `0, 1, 2, ...`.

#![allow(dead_code)]

mod data;
mod dns;
mod guest;
mod netns;
mod prereqs;
mod process;
mod python;
mod servers;
mod tapsplice;

// Each test binary uses only some of these.
#[allow(unused_imports)]
pub use {
    data::*, dns::*, guest::*, netns::*, prereqs::*, process::*, python::*, servers::*,
    tapsplice::*,
};

/// Debian's interpreter: the same for root, `ip netns exec` and the unprivileged test user
/// (a developer's pyenv shim on PATH would not be).
pub const PYTHON: &str = "/usr/bin/python3";
/// The unprivileged user `scripts/test.sh` creates for rootless tests.
pub const TEST_USER: &str = "tapsplice-test";
/// Gateway of the default CIDR 10.0.2.0/24: the host's 127.0.0.1 as seen from the guest.
pub const GATEWAY: &str = "10.0.2.2";
/// Size of one pattern block.
pub const BLOCK: usize = 1 << 20;
pub const MIB: u64 = 1 << 20;
/// DNS address of the default CIDR (N+3).
pub const DNS_ADDR: &str = "10.0.2.3";
/// The guest address that `-c` and `tapsplice run` configure (N+100).
pub const GUEST_ADDR: &str = "10.0.2.100";
/// The IPv6 gateway (`-6`): the host's ::1 as seen from the guest.
pub const GATEWAY6: &str = "fd00::2";
/// The IPv6 DNS address (`-6`).
pub const DNS6: &str = "fd00::3";
