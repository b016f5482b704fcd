//! Port forwarding: host listeners whose connections and datagrams reach a port in the guest,
//! managed through slirp4netns's API socket (`api`) or `tapsplice run -p` (`publish`).
//!
//! Theory of operation. A TCP forward is a listening socket on the host. Each client it
//! accepts takes one of two paths into the guest:
//!
//! - **stack**: a smoltcp socket dials the guest's port through the TAP, from the address the
//!   guest should see: the client's own IPv4 address when the client is not on the host's
//!   loopback (so a server in the container sees who is calling), N+2 when it is (as with
//!   slirp4netns; IPv6 clients and clients inside the guest's own network appear as N+2 too).
//!   The connection is then an ordinary flow of the NAT (`flow::inbound`).
//! - **splice**: for clients on the host's loopback, a socket made inside the container's
//!   network namespace connects to the guest's port there, and `splice(2)` moves the bytes
//!   between the two kernel sockets (`splice`). Much faster; the guest sees its own address
//!   as the peer.
//!
//! `--forward-path=auto` (the default) takes the splice path for loopback clients and the
//! stack path for the others; `stack` and `splice` force one path for every client (`splice`
//! for a non-loopback client hides its address from the guest). Without the namespace helper
//! (it could not start, or died) every connection takes the stack path.
//!
//! A UDP forward is a host UDP socket; each client address gets a flow (`udp`) whose
//! datagrams the stack builds and sends to the guest, and whose answers from the guest go
//! back through the same host socket.
//!
//! Everything here is driven by the one event loop: listeners, UDP sockets, spliced
//! connections, API clients and the helper's channel each own a slot in `sources`, and the
//! slot's index (plus [`FIRST_FORWARD_TOKEN`]) is their mio token. Nothing blocks; API
//! requests are served between frames.

pub mod api;
pub mod publish;
mod report;
mod splice;
mod udp;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use slab::Slab;
use smoltcp::time::{Duration, Instant};

pub use publish::{PublishSpec, parse_publish};
pub use udp::{MAX_UDP_FLOWS, UDP_FLOW_IDLE};

use crate::config::NetConfig;
use crate::flow::FlowTable;
use crate::stack::{FlowKey, Stack, UdpSend};
use crate::stats::latency::{ForwardLatency, LatencySample};
use crate::stats::metrics;
use crate::stats::pcap::Capturer;
use crate::stats::report::{FlowList, ForwardList};
use crate::sys::netns::NsTarget;
use crate::sys::nshelper::{NsSocketFactory, NsSocketKind};
use api::{ApiClient, ApiError, ApiListener, ClientStep, ControlStream, Entry, Request};
use splice::{SpliceConn, SpliceStatus};
use udp::UdpFlows;

/// mio tokens from here on belong to the forwarder (flows use tokens below it).
pub const FIRST_FORWARD_TOKEN: usize = 1 << 24;
/// Most forwards at once; `add_hostfwd` beyond it is an error.
pub const MAX_HOSTFWDS: usize = 1024;
/// Most connections on the splice path at once (six descriptors each); beyond, the stack path.
pub const MAX_SPLICE_CONNS: usize = 4096;
/// Clients waiting for the helper's socket; beyond, the stack path.
pub const MAX_SPLICE_WAITING: usize = 256;
/// A helper that leaves a client waiting this long for a socket is given up on: the waiting
/// clients, and all later ones, take the stack path.
pub const SPLICE_HELPER_TIMEOUT: Duration = Duration::from_secs(2);
/// Sockets made in the guest's namespace ahead of need, so that a spliced connection starts
/// without a round trip to the helper.
pub const SPLICE_SOCKET_POOL: usize = 4;
/// Listen backlog of forward listeners.
const LISTEN_BACKLOG: i32 = 1024;
/// Datagrams read from one UDP forward per wake-up before others get a turn.
const UDP_BATCH: usize = 256;
/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65507;

/// Whether `token` is one of the forwarder's.
pub fn owns(token: Token) -> bool {
    token.0 >= FIRST_FORWARD_TOKEN
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Which path forwarded TCP connections take into the guest (`--forward-path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardPath {
    /// Splice for clients on the host's loopback, the stack for the others.
    #[default]
    Auto,
    /// Always through the userspace stack and the TAP.
    Stack,
    /// Always spliced inside the namespace.
    Splice,
}

impl ForwardPath {
    pub fn parse(text: &str) -> Option<ForwardPath> {
        match text {
            "auto" => Some(ForwardPath::Auto),
            "stack" => Some(ForwardPath::Stack),
            "splice" => Some(ForwardPath::Splice),
            _ => None,
        }
    }
}

/// One forward: host address and port to guest address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwdSpec {
    pub proto: Proto,
    pub host: SocketAddr,
    pub guest: SocketAddrV4,
}

/// What to forward, and how to be watched, from the command line.
#[derive(Debug, Clone, Default)]
pub struct ForwardSetup {
    pub path: ForwardPath,
    pub api_socket: Option<PathBuf>,
    /// Forwards to make at start (`run -p`).
    pub publish: Vec<HostFwdSpec>,
    /// The guest's namespaces, for the splice path's helper.
    pub target: Option<NsTarget>,
    /// Where to serve Prometheus metrics (`--metrics`).
    pub metrics: Option<SocketAddr>,
    /// Capture the TAP's frames to this file from the start (`--pcap`).
    pub pcap: Option<PathBuf>,
}

/// Why forwarding could not start. Printed as is (the API socket's text is slirp4netns's).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The API socket could not be made.
    #[error("{0}")]
    Api(String),
    /// A `-p` forward could not be made.
    #[error("-p {spec}: {why}")]
    Publish { spec: String, why: String },
    /// `--forward-path=splice` without a working helper.
    #[error("--forward-path=splice: {0}")]
    Helper(String),
    /// The metrics endpoint could not listen.
    #[error("--metrics {addr}: {why}")]
    Metrics { addr: SocketAddr, why: String },
    /// The capture file could not be made.
    #[error("--pcap: {0}")]
    Pcap(String),
}

/// What happened to forwarded traffic.
#[derive(Debug, Default, Clone)]
pub struct ForwardCounters {
    /// TCP clients accepted by forward listeners.
    pub accepted: u64,
    /// ... of which went through the stack.
    pub via_stack: u64,
    /// ... of which were spliced.
    pub via_splice: u64,
    /// Meant for splicing but sent through the stack (helper failed or full).
    pub splice_fallback: u64,
    /// Reset at once: no flow could be made, or the guest refused a spliced connection.
    pub refused: u64,
    /// UDP datagrams host -> guest.
    pub udp_in: u64,
    /// UDP datagrams guest -> host.
    pub udp_out: u64,
    /// UDP datagrams dropped (table or queue full, socket full).
    pub udp_dropped: u64,
    pub api_requests: u64,
}

/// Everything the forwarder needs from the event loop for one event.
pub struct Ctx<'a> {
    pub now: Instant,
    pub stack: &'a mut Stack,
    pub flows: &'a mut FlowTable,
    pub registry: &'a Registry,
    /// The pcap writer, for `start_pcap` and `stop_pcap`.
    pub capture: &'a mut Capturer,
}

/// What owns a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    ApiListener,
    MetricsListener,
    /// A connection to the API socket or to the metrics endpoint.
    ApiClient(usize),
    Listener(u64),
    Udp(u64),
    /// Either socket of a spliced connection.
    Splice(usize),
    Helper,
}

enum FwdSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

struct HostFwd {
    spec: HostFwdSpec,
    socket: FwdSocket,
    source: usize,
    stats: HostFwdStats,
}

/// What one forward did since it was added.
#[derive(Default)]
struct HostFwdStats {
    /// TCP clients accepted, or UDP client flows opened.
    connections: u64,
    via_stack: u64,
    via_splice: u64,
    refused: u64,
    latency: ForwardLatency,
}

/// A client accepted for the splice path, waiting for the helper's socket.
struct Waiting {
    client: TcpStream,
    peer: SocketAddr,
    guest: SocketAddrV4,
    /// The forward that accepted it.
    forward: u64,
    /// When it was accepted (and started waiting).
    since: Instant,
}

pub struct Forwarder {
    cfg: NetConfig,
    path: ForwardPath,
    forwards: BTreeMap<u64, HostFwd>,
    next_id: u64,
    sources: Slab<Source>,
    api: Option<(ApiListener, usize)>,
    /// The Prometheus endpoint (`--metrics`).
    metrics: Option<(TcpListener, usize)>,
    api_clients: Slab<(ApiClient, usize)>,
    /// Clients may be waiting in the control sockets' backlogs (the client limit was reached).
    api_accept_due: bool,
    helper: Option<(NsSocketFactory, usize)>,
    /// Unconnected sockets from the helper, ready for use.
    pool: Vec<std::os::fd::OwnedFd>,
    /// Sockets asked of the helper and not received yet.
    requested: usize,
    waiting: VecDeque<Waiting>,
    conns: Slab<SpliceConn>,
    /// Spliced connections that ran out of budget with work left.
    busy_conns: Vec<usize>,
    udp: UdpFlows,
    /// UDP forwards whose socket may still hold datagrams.
    busy_udp: Vec<u64>,
    udp_buf: Vec<u8>,
    /// Latencies measured by spliced connections, not yet in their forward's histograms.
    samples: Vec<LatencySample>,
    /// Payload bytes client -> guest and guest -> client of spliced connections that ended.
    splice_ended_bytes: (u64, u64),
    pub counters: ForwardCounters,
}

impl Forwarder {
    /// A forwarder with nothing to do yet.
    pub fn new(cfg: NetConfig) -> Forwarder {
        Forwarder {
            cfg,
            path: ForwardPath::Auto,
            forwards: BTreeMap::new(),
            next_id: 1,
            sources: Slab::new(),
            api: None,
            metrics: None,
            api_clients: Slab::new(),
            api_accept_due: false,
            helper: None,
            pool: Vec::new(),
            requested: 0,
            waiting: VecDeque::new(),
            conns: Slab::new(),
            busy_conns: Vec::new(),
            udp: UdpFlows::default(),
            busy_udp: Vec::new(),
            udp_buf: Vec::new(),
            samples: Vec::new(),
            splice_ended_bytes: (0, 0),
            counters: ForwardCounters::default(),
        }
    }

    /// Opens the API socket, starts the namespace helper and makes the `-p` forwards (in
    /// that order: a bad API socket path fails before anything else is made).
    ///
    /// Must be called while this process is single-threaded (the helper is forked).
    pub fn start(&mut self, setup: &ForwardSetup, registry: &Registry) -> Result<(), ForwardError> {
        self.path = setup.path;
        if let Some(path) = &setup.api_socket {
            let mut listener = ApiListener::bind(path).map_err(ForwardError::Api)?;
            let source = self.sources.insert(Source::ApiListener);
            registry
                .register(&mut listener.listener, token(source), Interest::READABLE)
                .map_err(|e| ForwardError::Api(format!("api_bindlisten: {e}")))?;
            self.api = Some((listener, source));
        }
        if let Some(addr) = setup.metrics {
            let fail = |e: io::Error| ForwardError::Metrics {
                addr,
                why: crate::sys::strerror(&e),
            };
            let mut listener = TcpListener::bind(addr).map_err(fail)?;
            let source = self.sources.insert(Source::MetricsListener);
            registry
                .register(&mut listener, token(source), Interest::READABLE)
                .map_err(fail)?;
            if let Ok(bound) = listener.local_addr() {
                tracing::info!(%bound, "serving metrics");
            }
            self.metrics = Some((listener, source));
        }
        let wanted = setup.api_socket.is_some() || !setup.publish.is_empty();
        if wanted
            && setup.path != ForwardPath::Stack
            && let Some(target) = &setup.target
        {
            match NsSocketFactory::spawn(target) {
                Ok(helper) => {
                    let source = self.sources.insert(Source::Helper);
                    let fd = helper.channel();
                    let registered = registry.register(
                        &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&fd)),
                        token(source),
                        Interest::READABLE,
                    );
                    match registered {
                        Ok(()) => {
                            self.helper = Some((helper, source));
                            self.refill_pool();
                        }
                        Err(e) => {
                            self.sources.remove(source);
                            self.helper_unavailable(setup.path, &e.to_string())?;
                        }
                    }
                }
                Err(e) => self.helper_unavailable(setup.path, &e.to_string())?,
            }
        }
        for spec in &setup.publish {
            self.add(*spec, registry)
                .map_err(|e| ForwardError::Publish {
                    spec: format!("{}:{}/{}", spec.host, spec.guest.port(), spec.proto.name()),
                    why: match e {
                        ApiError::AddFailed(why) => why,
                        other => other.to_string(),
                    },
                })?;
        }
        Ok(())
    }

    fn helper_unavailable(&self, path: ForwardPath, why: &str) -> Result<(), ForwardError> {
        if path == ForwardPath::Splice {
            return Err(ForwardError::Helper(why.to_string()));
        }
        tracing::warn!("splice path unavailable, forwards use the stack: {why}");
        Ok(())
    }

    /// Adds a forward; its id, or the error reply.
    pub fn add(&mut self, spec: HostFwdSpec, registry: &Registry) -> Result<u64, ApiError> {
        if self.forwards.len() >= MAX_HOSTFWDS {
            return Err(ApiError::AddFailed(format!(
                "too many port forwards (at most {MAX_HOSTFWDS})"
            )));
        }
        let id = self.next_id;
        let bound = match spec.proto {
            Proto::Tcp => bind_tcp(spec.host).map(FwdSocket::Tcp),
            Proto::Udp => bind_udp(spec.host).map(FwdSocket::Udp),
        };
        let mut socket = bound.map_err(|e| ApiError::AddFailed(bind_error(&spec, &e)))?;
        let source = self.sources.insert(match spec.proto {
            Proto::Tcp => Source::Listener(id),
            Proto::Udp => Source::Udp(id),
        });
        let registered = match &mut socket {
            FwdSocket::Tcp(l) => registry.register(l, token(source), Interest::READABLE),
            FwdSocket::Udp(s) => registry.register(s, token(source), Interest::READABLE),
        };
        if let Err(e) = registered {
            self.sources.remove(source);
            return Err(ApiError::AddFailed(e.to_string()));
        }
        self.next_id += 1;
        self.forwards.insert(
            id,
            HostFwd {
                spec,
                socket,
                source,
                stats: HostFwdStats::default(),
            },
        );
        tracing::info!(id, host = %spec.host, guest = %spec.guest, proto = spec.proto.name(), "forward added");
        Ok(id)
    }

    /// Removes a forward: its socket closes; connections it made go on.
    pub fn remove(&mut self, id: i64, registry: &Registry) -> Result<(), ApiError> {
        let id = u64::try_from(id).map_err(|_| ApiError::RemoveBadId)?;
        let mut fwd = self.forwards.remove(&id).ok_or(ApiError::RemoveBadId)?;
        let _ = match &mut fwd.socket {
            FwdSocket::Tcp(l) => registry.deregister(l),
            FwdSocket::Udp(s) => registry.deregister(s),
        };
        self.sources.remove(fwd.source);
        if fwd.spec.proto == Proto::Udp {
            self.udp.remove_forward(id);
            self.busy_udp.retain(|&f| f != id);
        }
        tracing::info!(id, "forward removed");
        Ok(())
    }

    /// The forwards, by id.
    pub fn entries(&self) -> Vec<Entry> {
        self.forwards
            .iter()
            .map(|(&id, fwd)| Entry::new(id, &fwd.spec))
            .collect()
    }

    /// Spliced connections open now.
    pub fn splice_conns(&self) -> usize {
        self.conns.len()
    }

    /// UDP forward flows alive now.
    pub fn udp_flows(&self) -> usize {
        self.udp.len()
    }

    /// Handles readiness of one of the forwarder's sources.
    pub fn on_event(&mut self, cx: &mut Ctx<'_>, token: Token) {
        let Some(&source) = token
            .0
            .checked_sub(FIRST_FORWARD_TOKEN)
            .and_then(|i| self.sources.get(i))
        else {
            return;
        };
        match source {
            Source::ApiListener | Source::MetricsListener => self.accept_api(cx),
            Source::ApiClient(index) => self.drive_api_client(cx, index),
            Source::Listener(id) => self.accept_tcp(cx, id),
            Source::Udp(id) => self.read_udp(cx, id),
            Source::Splice(index) => self.drive_conn(cx, index),
            Source::Helper => self.on_helper(cx),
        }
    }

    /// Whether work is left that no readiness event will announce (a budget ran out).
    pub fn has_pending(&self) -> bool {
        !self.busy_conns.is_empty() || !self.busy_udp.is_empty() || self.api_accept_due
    }

    /// The earliest timer: a UDP flow's expiry or an API client's deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let api = self.api_clients.iter().map(|(_, (c, _))| c.deadline).min();
        let helper = self
            .waiting
            .front()
            .map(|w| w.since + SPLICE_HELPER_TIMEOUT);
        [self.udp.next_deadline(), api, helper]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires due timers and resumes work left over from budgets. Call once per loop turn.
    pub fn on_timers(&mut self, cx: &mut Ctx<'_>) {
        if self
            .waiting
            .front()
            .is_some_and(|w| cx.now >= w.since + SPLICE_HELPER_TIMEOUT)
        {
            self.helper_gone(cx, "it did not answer in time");
        }
        if self.udp.next_deadline().is_some_and(|d| d <= cx.now) {
            let expired = self.udp.expire(cx.now);
            tracing::debug!(expired, "udp forward flows expired");
        }
        let late: Vec<usize> = self
            .api_clients
            .iter()
            .filter(|(_, (c, _))| c.deadline <= cx.now)
            .map(|(i, _)| i)
            .collect();
        for index in late {
            self.remove_api_client(cx.registry, index);
        }
        for index in std::mem::take(&mut self.busy_conns) {
            if self.conns.contains(index) {
                self.drive_conn(cx, index);
            }
        }
        for id in std::mem::take(&mut self.busy_udp) {
            self.read_udp(cx, id);
        }
        if self.api_accept_due {
            self.accept_api(cx);
        }
        self.file_samples(cx.flows);
    }

    /// Adds the latencies measured since the last call to their forwards' histograms.
    fn file_samples(&mut self, flows: &mut FlowTable) {
        for sample in self.samples.drain(..).chain(flows.take_samples()) {
            if let Some(fwd) = self.forwards.get_mut(&sample.forward) {
                fwd.stats.latency.record(sample.kind, sample.micros);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // TCP

    fn accept_tcp(&mut self, cx: &mut Ctx<'_>, id: u64) {
        loop {
            let Some(fwd) = self.forwards.get(&id) else {
                return;
            };
            let FwdSocket::Tcp(listener) = &fwd.socket else {
                return;
            };
            let guest = fwd.spec.guest;
            match listener.accept() {
                Ok((client, peer)) => {
                    self.counters.accepted += 1;
                    if let Some(fwd) = self.forwards.get_mut(&id) {
                        fwd.stats.connections += 1;
                    }
                    self.route(cx, client, peer, guest, id);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of descriptors: the client stays in the backlog until the next
                    // connection wakes the listener.
                    tracing::warn!(id, "accept on forward failed: {e}");
                    return;
                }
            }
        }
    }

    /// Sends a client accepted by forward `forward` down its path.
    fn route(
        &mut self,
        cx: &mut Ctx<'_>,
        client: TcpStream,
        peer: SocketAddr,
        guest: SocketAddrV4,
        forward: u64,
    ) {
        let splice = match self.path {
            ForwardPath::Stack => false,
            ForwardPath::Splice => true,
            ForwardPath::Auto => is_loopback(peer),
        };
        let w = Waiting {
            client,
            peer,
            guest,
            forward,
            since: cx.now,
        };
        if splice && self.helper.is_some() {
            if self.conns.len() + self.waiting.len() >= MAX_SPLICE_CONNS
                || self.waiting.len() >= MAX_SPLICE_WAITING
            {
                self.counters.splice_fallback += 1;
                return self.via_stack(cx, w);
            }
            match self.pool.pop() {
                Some(socket) => self.start_splice(cx, w, socket),
                None => self.waiting.push_back(w),
            }
            self.refill_pool();
            return;
        }
        if splice {
            self.counters.splice_fallback += 1;
        }
        self.via_stack(cx, w);
    }

    /// Asks the helper for sockets until the pool and the waiting clients will be covered.
    fn refill_pool(&mut self) {
        let Some((helper, _)) = &self.helper else {
            return;
        };
        while self.pool.len() + self.requested < SPLICE_SOCKET_POOL + self.waiting.len() {
            if helper.request(NsSocketKind::Tcp4).is_err() {
                // The channel is full or the helper is gone; its replies (or its end)
                // will call again.
                break;
            }
            self.requested += 1;
        }
    }

    /// Sends an accepted client through the stack (it may have waited for the splice path).
    fn via_stack(&mut self, cx: &mut Ctx<'_>, w: Waiting) {
        let Waiting {
            client,
            peer,
            guest,
            forward,
            ..
        } = w;
        let (seen_as, renumber) = guest_view(&self.cfg, peer);
        let opened = cx.flows.open_inbound(
            cx.now,
            cx.stack,
            cx.registry,
            guest,
            seen_as,
            renumber,
            client,
            forward,
        );
        let stats = self.forwards.get_mut(&forward).map(|f| &mut f.stats);
        match opened {
            Ok(key) => {
                self.counters.via_stack += 1;
                if let Some(stats) = stats {
                    stats.via_stack += 1;
                }
                tracing::debug!(%peer, seen_as = %key.remote, %guest, "forwarded via the stack");
            }
            Err(why) => {
                self.counters.refused += 1;
                if let Some(stats) = stats {
                    stats.refused += 1;
                }
                tracing::debug!(%peer, %guest, "forwarded connection refused: {why}");
            }
        }
    }

    fn on_helper(&mut self, cx: &mut Ctx<'_>) {
        loop {
            let Some((helper, _)) = &self.helper else {
                return;
            };
            match helper.receive() {
                Ok(None) => {
                    self.refill_pool();
                    return;
                }
                Ok(Some(reply)) => {
                    self.requested = self.requested.saturating_sub(1);
                    match (reply, self.waiting.pop_front()) {
                        (Ok(socket), Some(w)) => self.start_splice(cx, w, socket),
                        (Ok(socket), None) => self.pool.push(socket),
                        (Err(why), w) => {
                            tracing::warn!("socket helper: {why}");
                            if let Some(w) = w {
                                self.counters.splice_fallback += 1;
                                self.via_stack(cx, w);
                            }
                            // Do not ask again at once: the helper just failed.
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.helper_gone(cx, &e.to_string());
                    return;
                }
            }
        }
    }

    /// Stops using the helper (it is killed); waiting clients take the stack path, and so do
    /// all later ones.
    fn helper_gone(&mut self, cx: &mut Ctx<'_>, why: &str) {
        tracing::warn!("socket helper: {why}; forwards use the stack from now on");
        if let Some((helper, source)) = self.helper.take() {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&helper.channel());
            let _ = cx.registry.deregister(&mut SourceFd(&fd));
            self.sources.remove(source);
        }
        self.requested = 0;
        self.pool.clear();
        while let Some(w) = self.waiting.pop_front() {
            self.counters.splice_fallback += 1;
            self.via_stack(cx, w);
        }
    }

    fn start_splice(&mut self, cx: &mut Ctx<'_>, w: Waiting, socket: std::os::fd::OwnedFd) {
        let Waiting {
            client,
            peer,
            guest,
            forward,
            since,
        } = w;
        let mut conn = match SpliceConn::connect(client, socket, guest, forward, since) {
            Ok(conn) => conn,
            Err((e, client)) => {
                tracing::warn!("splice connection: {e}");
                self.counters.splice_fallback += 1;
                let w = Waiting {
                    client,
                    peer,
                    guest,
                    forward,
                    since,
                };
                self.via_stack(cx, w);
                return;
            }
        };
        let index = self.conns.vacant_entry().key();
        let sources = [
            self.sources.insert(Source::Splice(index)),
            self.sources.insert(Source::Splice(index)),
        ];
        conn.sources = sources;
        let interest = Interest::READABLE | Interest::WRITABLE;
        let registered = cx
            .registry
            .register(&mut conn.client, token(sources[0]), interest)
            .and_then(|()| {
                cx.registry
                    .register(&mut conn.inner, token(sources[1]), interest)
            });
        let stats = self.forwards.get_mut(&forward).map(|f| &mut f.stats);
        if registered.is_err() {
            let _ = cx.registry.deregister(&mut conn.client);
            for s in sources {
                self.sources.remove(s);
            }
            self.counters.refused += 1;
            if let Some(stats) = stats {
                stats.refused += 1;
            }
            return;
        }
        self.conns.insert(conn);
        self.counters.via_splice += 1;
        if let Some(stats) = stats {
            stats.via_splice += 1;
        }
        tracing::debug!(%peer, %guest, "forwarded via splice");
        self.drive_conn(cx, index);
    }

    fn drive_conn(&mut self, cx: &mut Ctx<'_>, index: usize) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        match conn.drive(cx.now, &mut self.samples) {
            SpliceStatus::Alive => {}
            SpliceStatus::MoreWork => {
                if !self.busy_conns.contains(&index) {
                    self.busy_conns.push(index);
                }
            }
            status => {
                let mut conn = self.conns.remove(index);
                if status == SpliceStatus::Refused {
                    self.counters.refused += 1;
                    if let Some(fwd) = self.forwards.get_mut(&conn.forward) {
                        fwd.stats.refused += 1;
                    }
                }
                self.splice_ended_bytes.0 += conn.up.moved;
                self.splice_ended_bytes.1 += conn.down.moved;
                let _ = cx.registry.deregister(&mut conn.client);
                let _ = cx.registry.deregister(&mut conn.inner);
                for s in conn.sources {
                    self.sources.remove(s);
                }
                self.busy_conns.retain(|&i| i != index);
                tracing::debug!(?status, "spliced connection ended");
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // UDP

    fn read_udp(&mut self, cx: &mut Ctx<'_>, id: u64) {
        if self.udp_buf.len() < MAX_UDP_PAYLOAD {
            self.udp_buf.resize(MAX_UDP_PAYLOAD, 0);
        }
        for _ in 0..UDP_BATCH {
            let Some(fwd) = self.forwards.get(&id) else {
                return;
            };
            let FwdSocket::Udp(socket) = &fwd.socket else {
                return;
            };
            let (len, client) = match socket.recv_from(&mut self.udp_buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted, or an ICMP error for an earlier send: keep reading.
                Err(_) => continue,
            };
            let (seen_as, renumber) = guest_view(&self.cfg, client);
            let guest = fwd.spec.guest;
            let known = self.udp.len();
            let Some(peer) = self
                .udp
                .on_client_datagram(cx.now, id, client, guest, seen_as, renumber)
            else {
                self.counters.udp_dropped += 1;
                continue;
            };
            if self.udp.len() > known
                && let Some(fwd) = self.forwards.get_mut(&id)
            {
                fwd.stats.connections += 1;
            }
            match cx
                .stack
                .send_udp_to_guest(cx.now, peer, guest, &self.udp_buf[..len])
            {
                UdpSend::Dropped => self.counters.udp_dropped += 1,
                UdpSend::Sent | UdpSend::Pending => {
                    self.counters.udp_in += 1;
                    self.udp.sent_to_guest(id, client, len);
                }
            }
        }
        if !self.busy_udp.contains(&id) {
            self.busy_udp.push(id);
        }
    }

    /// A UDP datagram from the guest (`src` -> `dst`, held by the stack): if it answers a
    /// forward's client, sends it there and returns true.
    pub fn on_guest_udp(&mut self, now: Instant, stack: &mut Stack, key: FlowKey) -> bool {
        let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (key.guest, key.remote) else {
            return false;
        };
        let Some((id, client)) = self.udp.on_guest_datagram(now, src, dst) else {
            return false;
        };
        let Some(FwdSocket::Udp(socket)) = self.forwards.get(&id).map(|f| &f.socket) else {
            return false;
        };
        match socket.send_to(stack.received_payload(), client) {
            Ok(n) => {
                self.counters.udp_out += 1;
                self.udp.sent_to_client(src, dst, n);
            }
            Err(_) => self.counters.udp_dropped += 1,
        }
        stack.consume_received();
        true
    }

    // -----------------------------------------------------------------------------------------
    // API

    /// Takes the clients waiting on the API socket and the metrics endpoint.
    fn accept_api(&mut self, cx: &mut Ctx<'_>) {
        self.api_accept_due = false;
        self.accept_control(cx, |fwd| {
            let (listener, _) = fwd.api.as_ref()?;
            Some(
                listener
                    .listener
                    .accept()
                    .map(|(s, _)| ControlStream::Api(s)),
            )
        });
        self.accept_control(cx, |fwd| {
            let (listener, _) = fwd.metrics.as_ref()?;
            Some(listener.accept().map(|(s, _)| ControlStream::Metrics(s)))
        });
    }

    /// Accepts from one control socket until it would block or the client limit is reached.
    fn accept_control(
        &mut self,
        cx: &mut Ctx<'_>,
        accept: impl Fn(&Self) -> Option<io::Result<ControlStream>>,
    ) {
        loop {
            if self.api_clients.len() >= api::MAX_API_CLIENTS {
                // The rest wait in the backlog until a client is done.
                return;
            }
            let Some(accepted) = accept(self) else {
                return;
            };
            match accepted {
                Ok(stream) => {
                    let deadline = cx.now + api::API_CLIENT_TIMEOUT.into();
                    let index = self.api_clients.vacant_entry().key();
                    let source = self.sources.insert(Source::ApiClient(index));
                    let mut client = ApiClient::new(stream, deadline);
                    if cx
                        .registry
                        .register(
                            &mut client.stream,
                            token(source),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.sources.remove(source);
                        continue;
                    }
                    self.api_clients.insert((client, source));
                    self.drive_api_client(cx, index);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    tracing::warn!("api socket accept: {e}");
                    return;
                }
            }
        }
    }

    fn drive_api_client(&mut self, cx: &mut Ctx<'_>, index: usize) {
        let Some((client, _)) = self.api_clients.get_mut(index) else {
            return;
        };
        let is_metrics = matches!(client.stream, ControlStream::Metrics(_));
        let step = client.drive();
        let reply = match step {
            ClientStep::Pending => return,
            ClientStep::Done => {
                self.remove_api_client(cx.registry, index);
                return;
            }
            // An incomplete head gets "400 Bad Request".
            ClientStep::TooLarge if is_metrics => metrics::respond(b"", String::new),
            ClientStep::TooLarge => {
                tracing::warn!("api: too large message (>= {} bytes)", api::API_MAX_REQUEST);
                api::error_reply(&ApiError::TooLarge).into_bytes()
            }
            ClientStep::Request(bytes) if is_metrics => metrics::respond(&bytes, || {
                let stats = self.stats_report(cx);
                metrics::render(&stats, &self.forward_reports(cx))
            }),
            ClientStep::Request(bytes) => self.execute(cx, &bytes).into_bytes(),
        };
        let Some((client, _)) = self.api_clients.get_mut(index) else {
            return;
        };
        if client.reply(reply) == ClientStep::Done {
            self.remove_api_client(cx.registry, index);
        }
    }

    fn remove_api_client(&mut self, registry: &Registry, index: usize) {
        let (mut client, source) = self.api_clients.remove(index);
        let _ = registry.deregister(&mut client.stream);
        self.sources.remove(source);
        // A slot is free: clients waiting in the backlog can be taken.
        if self.api.is_some() || self.metrics.is_some() {
            self.api_accept_due = true;
        }
    }

    /// Answers one request.
    fn execute(&mut self, cx: &mut Ctx<'_>, bytes: &[u8]) -> String {
        self.counters.api_requests += 1;
        tracing::debug!(request = %String::from_utf8_lossy(bytes).trim_end(), "api request");
        let result = api::parse_request(bytes, &self.cfg).and_then(|req| match req {
            Request::AddHostFwd(spec) => self.add(spec, cx.registry).map(api::add_reply),
            Request::ListHostFwd => Ok(api::list_reply(&self.entries())),
            Request::RemoveHostFwd(id) => {
                self.remove(id, cx.registry).map(|()| api::remove_reply())
            }
            Request::GetStats => Ok(api::value_reply(&self.stats_report(cx))),
            Request::ListFlows => Ok(api::value_reply(&FlowList {
                flows: self.flow_reports(cx),
            })),
            Request::ListForwards => Ok(api::value_reply(&ForwardList {
                forwards: self.forward_reports(cx),
            })),
            Request::StartPcap(options) => cx
                .capture
                .start(options)
                .map(|report| api::value_reply(&report))
                .map_err(|e| ApiError::PcapFailed(e.to_string())),
            Request::StopPcap => cx
                .capture
                .stop()
                .map(|report| api::value_reply(&report))
                .ok_or(ApiError::PcapNotRunning),
        });
        result.unwrap_or_else(|e| api::error_reply(&e))
    }
}

fn token(source: usize) -> Token {
    Token(FIRST_FORWARD_TOKEN + source)
}

fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The address the guest sees for a client at `peer`, and whether its port may be changed
/// (N+2 is shared by many clients; a real address is the client's own).
fn guest_view(cfg: &NetConfig, peer: SocketAddr) -> (SocketAddrV4, bool) {
    let v4 = match peer {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    };
    match v4 {
        Some(a) if is_routable_peer(cfg, *a.ip()) => (a, false),
        _ => (SocketAddrV4::new(cfg.gateway(), peer.port()), true),
    }
}

/// Whether the guest can be shown `ip` as a peer: it reaches it through its gateway.
fn is_routable_peer(cfg: &NetConfig, ip: Ipv4Addr) -> bool {
    let mask = u32::from(cfg.netmask());
    !ip.is_loopback()
        && !ip.is_unspecified()
        && !ip.is_broadcast()
        && !ip.is_multicast()
        && u32::from(ip) & mask != u32::from(cfg.network)
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        // `::` serves IPv4 clients too (as IPv4-mapped addresses).
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM.nonblocking().cloexec(),
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into()))
}

/// The error text for a forward whose socket could not be bound. A refused privileged port
/// names the sysctl that decides it.
fn bind_error(spec: &HostFwdSpec, err: &io::Error) -> String {
    let mut text = format!(
        "cannot listen on {}/{}: {}",
        spec.host,
        spec.proto.name(),
        crate::sys::strerror(err)
    );
    if err.raw_os_error() == Some(libc::EACCES)
        && let Some(start) = unprivileged_port_start()
        && spec.host.port() < start
    {
        text.push_str(&format!(
            " (ports below net.ipv4.ip_unprivileged_port_start={start} need privilege: \
             lower that sysctl or grant CAP_NET_BIND_SERVICE)"
        ));
    }
    text
}

fn unprivileged_port_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_local_clients_appear_as_the_gateway() {
        let cfg = NetConfig::default();
        let gw = |port| (SocketAddrV4::new(cfg.gateway(), port), true);
        assert_eq!(
            guest_view(&cfg, "127.0.0.1:5000".parse().unwrap()),
            gw(5000)
        );
        assert_eq!(guest_view(&cfg, "[::1]:5001".parse().unwrap()), gw(5001));
        assert_eq!(
            guest_view(&cfg, "[2001:db8::1]:5002".parse().unwrap()),
            gw(5002)
        );
        assert_eq!(
            guest_view(&cfg, "10.0.2.77:5003".parse().unwrap()),
            gw(5003)
        );
        assert_eq!(
            guest_view(&cfg, "10.201.0.2:5004".parse().unwrap()),
            ("10.201.0.2:5004".parse().unwrap(), false)
        );
        assert_eq!(
            guest_view(&cfg, "[::ffff:10.201.0.2]:5005".parse().unwrap()),
            ("10.201.0.2:5005".parse().unwrap(), false)
        );
        assert!(is_loopback("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1:1".parse().unwrap()));
    }
}
