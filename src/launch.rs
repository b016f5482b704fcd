//! Starting an instance: find or make the namespaces, open the TAP inside them, hand the
//! rest to the event loop, and turn its outcome into an exit status.
//!
//! Both modes open the TAP the same way, from a helper that joins the target namespaces
//! (see `sys::netns`), before the event loop blocks signals: the helper and the `run`
//! child must start with ordinary signal handling.

use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use nix::unistd::Uid;

use crate::cli::{AttachOptions, RunOptions, Target};
use crate::config::NetConfig;
use crate::event_loop::{EventLoop, Outcome};
use crate::flow::first_nameserver;
use crate::forward::ForwardSetup;
use crate::sys::ifconfig::IfControl;
use crate::sys::netns::{NsTarget, open_in_namespaces};
use crate::sys::process::{IsolatedChild, inherited_fd, raise_fd_limit, set_cloexec};
use crate::sys::tap::open_tap;

/// Logs go to stderr; quiet (warnings only) unless `--debug` or `RUST_LOG` asks for more.
pub fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ if debug => EnvFilter::new("tapsplice=debug"),
        _ => EnvFilter::new("warn"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// slirp4netns mode: serve the namespace named on the command line.
pub fn attach(opts: &AttachOptions) -> Result<u8> {
    // Claim the inherited descriptors before we open anything that could reuse a number.
    let ready = opts.ready_fd.map(inherited_fd);
    let exit = opts.exit_fd.map(inherited_fd);
    for fd in ready.iter().chain(exit.iter()).flatten() {
        set_cloexec(fd);
    }
    let target = match &opts.target {
        Target::Pid(pid) => {
            let mut target = NsTarget::of_pid(*pid);
            if let Some(user) = &opts.userns_path {
                target.user = Some(user.clone());
            }
            target
        }
        Target::Path(path) => NsTarget {
            net: path.clone(),
            user: opts.userns_path.clone(),
        },
    };
    let tap = open_tap_in(&target, &opts.tap_name, opts.configure.then_some(&opts.net))?;
    raise_fd_limit();
    let mut event_loop =
        EventLoop::new(opts.net.clone(), tap, exit, None).context("set up the event loop")?;
    // Ready means the API socket listens (slirp4netns binds it before writing the ready fd);
    // its errors are printed as slirp4netns prints them, without context.
    event_loop.start_forwarding(&ForwardSetup {
        path: opts.forward_path,
        api_socket: opts.api_socket.clone(),
        publish: Vec::new(),
        target: Some(target.clone()),
        metrics: opts.metrics,
        pcap: opts.pcap.clone(),
    })?;
    if let Some(Some(ready)) = ready {
        // Any byte means ready to rootlesskit and Podman; slirp4netns writes "1".
        let _ = nix::unistd::write(&ready, b"1");
    }
    tracing::info!(tap = %opts.tap_name, "ready");
    let outcome = event_loop.run().context("event loop")?;
    tracing::info!(?outcome, "exiting");
    Ok(match outcome {
        Outcome::Signal(_) | Outcome::ExitFd => 0,
        Outcome::ChildExited(status) => status as u8,
    })
}

/// `tapsplice run`: a fresh network namespace (and user namespace when not root) with
/// the command inside it.
pub fn run(opts: &RunOptions) -> Result<u8> {
    let own_userns = !Uid::effective().is_root();
    let resolv_conf = ContainerResolvConf::for_config(&opts.net)?;
    let mut child = IsolatedChild::spawn(&opts.command, own_userns, resolv_conf.path())
        .context("create namespaces")?;
    // After the fork: the command keeps the limits it was started with.
    raise_fd_limit();
    let target = NsTarget::of_pid(child.pid());
    let tap = match open_tap_in(&target, "tap0", Some(&opts.net)) {
        Ok(tap) => tap,
        Err(err) => {
            child.signal(Signal::SIGKILL);
            child.reap();
            return Err(err);
        }
    };
    let mut event_loop = EventLoop::new(opts.net.clone(), tap, None, Some(child))
        .context("set up the event loop")?;
    let publish = opts
        .publish
        .iter()
        .flat_map(|p| p.forwards(opts.net.guest()))
        .collect();
    // The forwards listen before the command starts. On failure the child, never started,
    // is killed with the event loop.
    event_loop.start_forwarding(&ForwardSetup {
        path: opts.forward_path,
        api_socket: opts.api_socket.clone(),
        publish,
        target: Some(target.clone()),
        metrics: opts.metrics,
        pcap: opts.pcap.clone(),
    })?;
    event_loop.start_child().context("start the command")?;
    let outcome = event_loop.run().context("event loop")?;
    Ok(match outcome {
        Outcome::ChildExited(status) => status as u8,
        Outcome::Signal(sig) => 128 + sig as u8,
        Outcome::ExitFd => 0,
    })
}

/// The resolv.conf `tapsplice run` gives its command, when the host's cannot serve it: the
/// host's names a loopback resolver (unreachable from the container's own loopback), or DNS
/// goes to an upstream named on the command line. It points at N+3. Removed on drop.
struct ContainerResolvConf(Option<std::path::PathBuf>);

impl ContainerResolvConf {
    fn for_config(net: &NetConfig) -> Result<Self> {
        let host_ok = std::fs::read_to_string(&net.resolv_conf)
            .ok()
            .and_then(|text| first_nameserver(&text))
            .is_some_and(|ns| !ns.ip().is_loopback());
        if net.disable_dns || (host_ok && net.dns_upstream.is_none()) {
            return Ok(ContainerResolvConf(None));
        }
        let path =
            std::env::temp_dir().join(format!("tapsplice-resolv-{}.conf", std::process::id()));
        std::fs::write(&path, format!("nameserver {}\n", net.dns()))
            .with_context(|| format!("write {}", path.display()))?;
        Ok(ContainerResolvConf(Some(path)))
    }

    fn path(&self) -> Option<&std::path::Path> {
        self.0.as_deref()
    }
}

impl Drop for ContainerResolvConf {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens TAP `name` inside the target namespaces and, with `configure`, sets it up as
/// `slirp4netns --configure` does.
fn open_tap_in(target: &NsTarget, name: &str, configure: Option<&NetConfig>) -> Result<OwnedFd> {
    // No context added: the first line is what slirp4netns prints (`perror(path)` style),
    // e.g. "/proc/4194305/ns/net: No such file or directory".
    let tap = open_in_namespaces(target, || {
        let tap = open_tap(name)?;
        if let Some(net) = configure {
            configure_interface(name, net)?;
        }
        Ok(tap)
    })?;
    Ok(tap)
}

/// `lo` and the TAP up, MTU, MAC, guest address N+100, default route via N+2.
fn configure_interface(name: &str, net: &NetConfig) -> crate::sys::Result<()> {
    let ctl = IfControl::new()?;
    ctl.link_up("lo")?;
    ctl.set_mtu(name, net.mtu as u32)?;
    if let Some(mac) = net.guest_mac {
        ctl.set_mac(name, mac)?;
    }
    ctl.set_ipv4(name, net.guest(), net.netmask())?;
    ctl.link_up(name)?;
    ctl.add_default_route(net.gateway())
}
