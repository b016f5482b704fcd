//! Everything that talks to the kernel directly: TAP devices, namespaces, interface
//! configuration, process plumbing. All of the crate's `unsafe` lives here, in small
//! functions whose `// SAFETY:` comments say why each call holds; the rest of the crate
//! sees safe functions that return [`SysError`].

#![allow(unsafe_code)]

pub mod ifconfig;
pub mod netns;
pub mod nshelper;
pub mod process;
pub mod socket;
pub mod splice;
pub mod tap;
pub mod tcp_info;

use std::io;

/// What went wrong in a system call, with enough context for a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A system call failed; `what` names the operation or path in the user's terms.
    /// Printed as `perror` would print it, which is what slirp4netns users see.
    #[error("{what}: {}", strerror(cause))]
    Io { what: String, cause: io::Error },
    /// The helper that works inside the target namespaces reported a failure.
    #[error("{0}")]
    Helper(String),
}

impl SysError {
    pub(crate) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        SysError::Io {
            what: what.into(),
            cause: source.into(),
        }
    }

    pub(crate) fn errno(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Self::io(what, io::Error::from(errno))
    }
}

pub type Result<T> = std::result::Result<T, SysError>;

/// The C library's text for an I/O error (`strerror`), without Rust's "(os error N)".
pub fn strerror(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}
