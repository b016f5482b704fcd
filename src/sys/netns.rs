//! Doing work inside another process's user and network namespace, from a short-lived child.
//!
//! tapsplice itself stays in the host network namespace: its host sockets must be ordinary
//! host sockets. Only the TAP device (and, with `--configure`, the interface settings) must
//! be made inside the container's namespace. Joining a user namespace with `setns(2)` is only
//! allowed in a single-threaded process, so, as slirp4netns does, we fork a helper that joins
//! the user namespace (unless it is already ours) and then the network namespace, does the
//! work, and passes the resulting file descriptor back over a `SOCK_SEQPACKET` pair with
//! `SCM_RIGHTS`. Failures come back as text, so the parent can print one clear line.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork};

use super::{Result, SysError};

/// The namespaces to work in: a network namespace, and the user namespace that owns it.
#[derive(Debug, Clone)]
pub struct NsTarget {
    pub net: PathBuf,
    /// `None` when the caller already has the privilege it needs (e.g. root and a netns made
    /// by `ip netns add`).
    pub user: Option<PathBuf>,
}

impl NsTarget {
    /// The namespaces of a running process, as `slirp4netns PID` uses them.
    pub fn of_pid(pid: i32) -> Self {
        NsTarget {
            net: PathBuf::from(format!("/proc/{pid}/ns/net")),
            user: Some(PathBuf::from(format!("/proc/{pid}/ns/user"))),
        }
    }
}

fn open_ns(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| SysError::io(path.display().to_string(), e))
}

/// True when `ns` is the user namespace this process is already in (joining it again is
/// `EINVAL`, and happens under `nsenter -U` or when rootlesskit runs us inside it).
fn is_own_userns(ns: &File) -> Result<bool> {
    let own = std::fs::metadata("/proc/self/ns/user")
        .map_err(|e| SysError::io("stat /proc/self/ns/user", e))?;
    let target = ns
        .metadata()
        .map_err(|e| SysError::io("stat user namespace", e))?;
    Ok(own.dev() == target.dev() && own.ino() == target.ino())
}

/// The target's namespace files, opened in the parent (so a missing one is reported there).
pub(super) struct OpenNamespaces {
    net: File,
    /// `None` when no user namespace is to be joined, or it is already ours.
    user: Option<File>,
}

impl OpenNamespaces {
    pub(super) fn open(target: &NsTarget) -> Result<Self> {
        let net = open_ns(&target.net)?;
        let user = match &target.user {
            Some(path) => {
                let file = open_ns(path)?;
                if is_own_userns(&file)? {
                    None
                } else {
                    Some(file)
                }
            }
            None => None,
        };
        Ok(OpenNamespaces { net, user })
    }

    /// Joins the user namespace (first: it grants the rights for the rest), then the network
    /// namespace. Only legal in a single-threaded process, i.e. a forked helper.
    pub(super) fn enter(&self) -> Result<()> {
        if let Some(user) = &self.user {
            setns(user, CloneFlags::CLONE_NEWUSER)
                .map_err(|e| SysError::errno("join user namespace", e))?;
        }
        setns(&self.net, CloneFlags::CLONE_NEWNET)
            .map_err(|e| SysError::errno("join network namespace", e))
    }
}

/// A connected `SOCK_SEQPACKET` pair for talking to a forked helper (close-on-exec).
pub(super) fn helper_channel() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SysError::errno("socketpair", e))
}

/// Runs `work` inside the target namespaces in a forked helper and returns the fd it made.
///
/// Must be called while this process is single-threaded (the helper is a fork of it).
pub fn open_in_namespaces(
    target: &NsTarget,
    work: impl FnOnce() -> Result<OwnedFd>,
) -> Result<OwnedFd> {
    let namespaces = OpenNamespaces::open(target)?;
    let (parent_end, child_end) = helper_channel()?;

    // SAFETY: the caller guarantees this process is single-threaded, so the child owns a
    // consistent copy of the whole address space (no lock can be held by another thread).
    match unsafe { fork() }.map_err(|e| SysError::errno("fork namespace helper", e))? {
        ForkResult::Child => {
            drop(parent_end);
            let outcome = namespaces.enter().and_then(|()| work());
            let sent = match outcome {
                Ok(fd) => send_fd(child_end.as_raw_fd(), &fd),
                Err(err) => send_text(child_end.as_raw_fd(), &err.to_string()),
            };
            super::process::exit_now(if sent.is_ok() { 0 } else { 1 });
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let reply = receive(parent_end.as_raw_fd());
            let _ = waitpid(child, None);
            reply
        }
    }
}

/// Sends `fd` to the other end of a helper channel (SCM_RIGHTS), with the text "ok".
pub(super) fn send_fd(sock: RawFd, fd: &OwnedFd) -> nix::Result<usize> {
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        sock,
        &[IoSlice::new(b"ok")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
}

/// Sends one text message (an error, or a status) on a helper channel.
pub(super) fn send_text(sock: RawFd, text: &str) -> nix::Result<usize> {
    sendmsg::<()>(
        sock,
        &[IoSlice::new(text.as_bytes())],
        &[],
        MsgFlags::empty(),
        None,
    )
}

fn receive(sock: RawFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (len, received) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| SysError::errno("receive from namespace helper", e))?;
        let mut received = None;
        for c in msg
            .cmsgs()
            .map_err(|e| SysError::errno("namespace helper message", e))?
        {
            if let ControlMessageOwned::ScmRights(fds) = c {
                received = fds.first().copied();
            }
        }
        (msg.bytes, received)
    };
    match received {
        // SAFETY: the kernel just installed this descriptor in our table for us (SCM_RIGHTS);
        // nothing else owns it.
        Some(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        None if len == 0 => Err(SysError::Helper(
            "namespace helper exited without an answer".into(),
        )),
        None => Err(SysError::Helper(
            String::from_utf8_lossy(&buf[..len]).into_owned(),
        )),
    }
}
