//! The slirp4netns API socket: JSON requests over a UNIX stream socket, one per connection.
//!
//! The contract (`compat/slirp4netns.md`): the client writes one JSON object and half-closes;
//! the server reads at most 4096 bytes, writes one reply and closes. rootlesskit's port
//! driver depends on `add_hostfwd` and `remove_hostfwd` byte for byte (it reads `return.id` as
//! a number); `list_hostfwd` answers with `entries` both at the top level (what slirp4netns
//! 1.2.0 does) and under `return` (what its man page says). Error texts are slirp4netns's.
//!
//! Requests are read the way slirp4netns's JSON library reads them: a string field that is
//! missing or not a string counts as missing, a number field that is missing or not a number
//! counts as 0, and numbers are truncated to integers. The checks come in slirp4netns's order,
//! so the first problem is the one reported.
//!
//! Beside slirp4netns's commands, tapsplice answers `get_stats`, `list_flows`, `list_forwards`,
//! `start_pcap` and `stop_pcap` (their values are the types of `stats::report`); their
//! errors follow the same pattern, `bad request: COMMAND: ...`.
//!
//! Unlike slirp4netns, which reads one request in one `read` and stops its whole event loop
//! while it does, each client here is a small state machine in the event loop: reading until
//! EOF (or until the bytes already form a complete JSON object), then writing the reply,
//! without blocking the data path. A bounded number of clients is served at once; the rest
//! wait in the listen backlog.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::{HostFwdSpec, Proto};
use crate::config::NetConfig;
use crate::stats::pcap::{DEFAULT_SNAPLEN, PcapOptions};

/// Largest `snaplen` of `start_pcap` (more would keep no more of any frame).
const MAX_SNAPLEN: u32 = DEFAULT_SNAPLEN;

/// Largest request: slirp4netns reads into a 4096-byte buffer and refuses a read that fills it.
pub const API_MAX_REQUEST: usize = 4096;
/// Clients served at once; more wait in the listen backlog.
pub const MAX_API_CLIENTS: usize = 32;
/// A client that has neither finished its request nor taken its reply by then is dropped.
pub const API_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// `sizeof(sun_path)`: slirp4netns refuses paths of this length or more.
pub const SUN_PATH_LEN: usize = 108;

/// One API request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    AddHostFwd(HostFwdSpec),
    ListHostFwd,
    RemoveHostFwd(i64),
    GetStats,
    ListFlows,
    ListForwards,
    StartPcap(PcapOptions),
    StopPcap,
}

/// A request that gets an error reply; the text is the `desc` (slirp4netns's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: too large message")]
    TooLarge,
    #[error("bad request: cannot parse JSON")]
    CannotParse,
    #[error("bad request: json_object() failed")]
    NotAnObject,
    #[error("bad request: no execute found")]
    NoExecute,
    #[error("bad request: unknown execute")]
    UnknownExecute,
    /// `arguments.FIELD` of `add_hostfwd` is missing or wrong.
    #[error("bad request: add_hostfwd: bad arguments.{0}")]
    AddBadArgument(&'static str),
    /// The forward could not be made (port in use, no permission, table full).
    #[error("bad request: add_hostfwd: slirp_add_hostfwd failed: {0}")]
    AddFailed(String),
    #[error("bad request: remove_hostfwd: bad arguments.id")]
    RemoveBadId,
    /// `arguments.FIELD` of `start_pcap` is missing or wrong.
    #[error("bad request: start_pcap: bad arguments.{0}")]
    PcapBadArgument(&'static str),
    /// The capture could not start (one is running, the file cannot be made).
    #[error("bad request: start_pcap: {0}")]
    PcapFailed(String),
    #[error("bad request: stop_pcap: no capture is running")]
    PcapNotRunning,
}

/// `{"error":{"desc":"..."}}`
pub fn error_reply(err: &ApiError) -> String {
    #[derive(Serialize)]
    struct Desc<'a> {
        desc: &'a str,
    }
    #[derive(Serialize)]
    struct Reply<'a> {
        error: Desc<'a>,
    }
    let desc = err.to_string();
    serde_json::to_string(&Reply {
        error: Desc { desc: &desc },
    })
    .unwrap_or_default()
}

/// `{"return":{"id":N}}`
pub fn add_reply(id: u64) -> String {
    #[derive(Serialize)]
    struct Id {
        id: u64,
    }
    #[derive(Serialize)]
    struct Reply {
        #[serde(rename = "return")]
        ret: Id,
    }
    serde_json::to_string(&Reply { ret: Id { id } }).unwrap_or_default()
}

/// `{"return":{}}`
pub fn remove_reply() -> String {
    "{\"return\":{}}".to_string()
}

/// `{"return":VALUE}`, for the statistics commands.
pub fn value_reply<T: Serialize>(value: &T) -> String {
    #[derive(Serialize)]
    struct Reply<'a, T> {
        #[serde(rename = "return")]
        ret: &'a T,
    }
    serde_json::to_string(&Reply { ret: value }).unwrap_or_default()
}

/// One forward as `list_hostfwd` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub id: u64,
    pub proto: &'static str,
    pub host_addr: String,
    pub host_port: u16,
    pub guest_addr: String,
    pub guest_port: u16,
}

impl Entry {
    pub fn new(id: u64, spec: &HostFwdSpec) -> Entry {
        Entry {
            id,
            proto: spec.proto.name(),
            host_addr: spec.host.ip().to_string(),
            host_port: spec.host.port(),
            guest_addr: spec.guest.ip().to_string(),
            guest_port: spec.guest.port(),
        }
    }
}

/// `{"return":{"entries":[...]},"entries":[...]}`
pub fn list_reply(entries: &[Entry]) -> String {
    #[derive(Serialize)]
    struct Entries<'a> {
        entries: &'a [Entry],
    }
    #[derive(Serialize)]
    struct Reply<'a> {
        #[serde(rename = "return")]
        ret: Entries<'a>,
        entries: &'a [Entry],
    }
    serde_json::to_string(&Reply {
        ret: Entries { entries },
        entries,
    })
    .unwrap_or_default()
}

/// Parses and checks one request (the bytes up to EOF).
pub fn parse_request(bytes: &[u8], cfg: &NetConfig) -> Result<Request, ApiError> {
    // slirp4netns reads the buffer as a C string: a NUL ends it.
    let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
    let value: Value = serde_json::from_slice(bytes).map_err(|_| ApiError::CannotParse)?;
    let obj = value.as_object().ok_or(ApiError::NotAnObject)?;
    let execute = obj
        .get("execute")
        .and_then(Value::as_str)
        .ok_or(ApiError::NoExecute)?;
    let args = obj.get("arguments");
    let string = |name: &str| args.and_then(|a| a.get(name)).and_then(Value::as_str);
    let number = |name: &str| {
        args.and_then(|a| a.get(name))
            .and_then(Value::as_f64)
            .map(f64::trunc)
            .unwrap_or(0.0)
    };
    match execute {
        "add_hostfwd" => {
            let proto = match string("proto") {
                Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                _ => return Err(ApiError::AddBadArgument("proto")),
            };
            let host_ip: IpAddr = match string("host_addr") {
                None | Some("") => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(text) => parse_host_addr(text).ok_or(ApiError::AddBadArgument("host_addr"))?,
            };
            let host_port =
                port(number("host_port")).ok_or(ApiError::AddBadArgument("host_port"))?;
            let guest_ip = match string("guest_addr") {
                None | Some("") => cfg.guest(),
                Some(text) => text
                    .parse::<Ipv4Addr>()
                    .ok()
                    .filter(|ip| is_guest_address(cfg, *ip))
                    .ok_or(ApiError::AddBadArgument("guest_addr"))?,
            };
            let guest_port =
                port(number("guest_port")).ok_or(ApiError::AddBadArgument("guest_port"))?;
            Ok(Request::AddHostFwd(HostFwdSpec {
                proto,
                host: SocketAddr::new(host_ip, host_port),
                guest: SocketAddrV4::new(guest_ip, guest_port),
            }))
        }
        "list_hostfwd" => Ok(Request::ListHostFwd),
        "get_stats" => Ok(Request::GetStats),
        "list_flows" => Ok(Request::ListFlows),
        "list_forwards" => Ok(Request::ListForwards),
        "stop_pcap" => Ok(Request::StopPcap),
        "start_pcap" => {
            let path = string("path")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .ok_or(ApiError::PcapBadArgument("path"))?;
            let snaplen = number("snaplen");
            if !(0.0..=f64::from(MAX_SNAPLEN)).contains(&snaplen) {
                return Err(ApiError::PcapBadArgument("snaplen"));
            }
            let max_bytes = number("max_bytes");
            if !(0.0..=u64::MAX as f64).contains(&max_bytes) {
                return Err(ApiError::PcapBadArgument("max_bytes"));
            }
            Ok(Request::StartPcap(PcapOptions {
                path,
                snaplen: snaplen as u32,
                max_bytes: max_bytes as u64,
            }))
        }
        "remove_hostfwd" => {
            let id = number("id");
            if !(1.0..=i64::MAX as f64).contains(&id) {
                return Err(ApiError::RemoveBadId);
            }
            Ok(Request::RemoveHostFwd(id as i64))
        }
        _ => Err(ApiError::UnknownExecute),
    }
}

/// A host address: IPv4 as slirp4netns takes it, or IPv6 (`::1`, `::`; brackets allowed).
fn parse_host_addr(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    match bare.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) if text.contains('.') && v6.to_ipv4_mapped().is_some() => {
            v6.to_ipv4_mapped().map(IpAddr::V4)
        }
        ip if ip.is_multicast() => None,
        ip => Some(ip),
    }
}

/// A port number 1..=65535 from a JSON number already truncated.
fn port(n: f64) -> Option<u16> {
    (1.0..=65535.0).contains(&n).then_some(n as u16)
}

/// Whether the guest can be reached at `ip`: a host address of the network, not one of ours.
pub fn is_guest_address(cfg: &NetConfig, ip: Ipv4Addr) -> bool {
    let mask = u32::from(cfg.netmask());
    let n = u32::from(ip);
    n & mask == u32::from(cfg.network)
        && n != u32::from(cfg.network)
        && n | mask != u32::MAX
        && !cfg.is_own_address(ip)
}

// ---------------------------------------------------------------------------------------------
// The socket.

/// The listening API socket. Its file is removed when this is dropped, if it is still ours.
pub struct ApiListener {
    path: PathBuf,
    /// Device and inode of the socket file we made, so we never unlink someone else's.
    id: Option<(u64, u64)>,
    pub listener: mio::net::UnixListener,
}

impl ApiListener {
    /// Removes whatever is at `path` (slirp4netns does, to avoid `EADDRINUSE`), binds and
    /// listens. A path of [`SUN_PATH_LEN`] bytes or more is refused with slirp4netns's text.
    pub fn bind(path: &Path) -> Result<ApiListener, String> {
        if path.as_os_str().len() >= SUN_PATH_LEN {
            return Err(format!(
                "the specified API socket path is too long (>= {SUN_PATH_LEN})"
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| format!("api_bindlisten: bind: {}", crate::sys::strerror(&e)))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("api_bindlisten: {}", crate::sys::strerror(&e)))?;
        let id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(ApiListener {
            path: path.to_path_buf(),
            id,
            listener: mio::net::UnixListener::from_std(listener),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where one client's exchange stands.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Waiting for more bytes (or for the socket to take more of the reply).
    Pending,
    /// The request is complete: these are its bytes. Answer with [`ApiClient::reply`].
    Request(Vec<u8>),
    /// The request filled [`API_MAX_REQUEST`] bytes: answer [`ApiError::TooLarge`].
    TooLarge,
    /// Done (reply written, or the client went away): drop it.
    Done,
}

/// A connection to a control socket: the API's UNIX socket (one JSON request) or the
/// metrics endpoint's TCP socket (one HTTP request). Both are served the same way: read one
/// request, write one reply, close.
pub enum ControlStream {
    Api(mio::net::UnixStream),
    Metrics(mio::net::TcpStream),
}

impl ControlStream {
    /// Largest request read.
    fn max_request(&self) -> usize {
        match self {
            ControlStream::Api(_) => API_MAX_REQUEST,
            ControlStream::Metrics(_) => crate::stats::metrics::MAX_REQUEST,
        }
    }

    /// Whether `buf` is a whole request although the client has not half-closed.
    fn is_complete(&self, buf: &[u8]) -> bool {
        match self {
            ControlStream::Api(_) => is_complete_object(buf),
            ControlStream::Metrics(_) => crate::stats::metrics::request_complete(buf),
        }
    }
}

impl Read for ControlStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ControlStream::Api(s) => s.read(buf),
            ControlStream::Metrics(s) => s.read(buf),
        }
    }
}

impl Write for ControlStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ControlStream::Api(s) => s.write(buf),
            ControlStream::Metrics(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl mio::event::Source for ControlStream {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            ControlStream::Api(s) => s.register(registry, token, interests),
            ControlStream::Metrics(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        match self {
            ControlStream::Api(s) => s.reregister(registry, token, interests),
            ControlStream::Metrics(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        match self {
            ControlStream::Api(s) => s.deregister(registry),
            ControlStream::Metrics(s) => s.deregister(registry),
        }
    }
}

/// One connection to a control socket.
pub struct ApiClient {
    pub stream: ControlStream,
    buf: Vec<u8>,
    reply: Option<(Vec<u8>, usize)>,
    /// When it is dropped if not done (the event loop's clock).
    pub deadline: smoltcp::time::Instant,
}

impl ApiClient {
    pub fn new(stream: ControlStream, deadline: smoltcp::time::Instant) -> ApiClient {
        ApiClient {
            stream,
            buf: Vec::new(),
            reply: None,
            deadline,
        }
    }

    /// Moves the exchange on after a readiness event.
    pub fn drive(&mut self) -> ClientStep {
        if self.reply.is_some() {
            return self.write_reply();
        }
        let max = self.stream.max_request();
        let mut chunk = [0u8; 4096];
        loop {
            let room = (max - self.buf.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return ClientStep::Request(std::mem::take(&mut self.buf)),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() >= max {
                        // Like slirp4netns: a request that fills the buffer is refused, and
                        // the rest is never read.
                        self.buf = Vec::new();
                        return ClientStep::TooLarge;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Clients that send one object and wait without half-closing are served
                    // too: a complete JSON object cannot grow into another valid request.
                    if self.stream.is_complete(&self.buf) {
                        return ClientStep::Request(std::mem::take(&mut self.buf));
                    }
                    return ClientStep::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ClientStep::Done,
            }
        }
    }

    /// Queues the reply and starts writing it.
    pub fn reply(&mut self, bytes: Vec<u8>) -> ClientStep {
        self.reply = Some((bytes, 0));
        self.write_reply()
    }

    fn write_reply(&mut self) -> ClientStep {
        let Some((bytes, written)) = &mut self.reply else {
            return ClientStep::Done;
        };
        while *written < bytes.len() {
            match self.stream.write(&bytes[*written..]) {
                Ok(0) => return ClientStep::Done,
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ClientStep::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ClientStep::Done,
            }
        }
        // Done: the caller drops the stream, and the close is the client's EOF (so once a
        // client has its whole answer, the connection is gone from our descriptor table).
        ClientStep::Done
    }
}

fn is_complete_object(buf: &[u8]) -> bool {
    let trimmed = buf.trim_ascii();
    trimmed.first() == Some(&b'{')
        && trimmed.last() == Some(&b'}')
        && serde_json::from_slice::<Value>(trimmed).is_ok_and(|v| v.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, ApiError> {
        parse_request(text.as_bytes(), &NetConfig::default())
    }

    fn err(text: &str) -> String {
        error_reply(&parse(text).unwrap_err())
    }

    #[test]
    fn add_with_every_field() {
        let req = parse(
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}"#,
        )
        .unwrap();
        assert_eq!(
            req,
            Request::AddHostFwd(HostFwdSpec {
                proto: Proto::Tcp,
                host: "0.0.0.0:8080".parse().unwrap(),
                guest: "10.0.2.100:80".parse().unwrap(),
            })
        );
    }

    #[test]
    fn rootlesskit_request_with_empty_addresses_and_newline() {
        let req = parse(
            "{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"udp\",\"host_addr\":\"\",\"host_port\":18080,\"guest_addr\":\"\",\"guest_port\":8080}}\n",
        )
        .unwrap();
        assert_eq!(
            req,
            Request::AddHostFwd(HostFwdSpec {
                proto: Proto::Udp,
                host: "0.0.0.0:18080".parse().unwrap(),
                guest: "10.0.2.100:8080".parse().unwrap(),
            })
        );
    }

    #[test]
    fn ipv6_host_addresses() {
        for (text, want) in [("::1", "[::1]:1"), ("::", "[::]:1"), ("[::1]", "[::1]:1")] {
            let req = parse(&format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"{text}","host_port":1,"guest_port":2}}}}"#
            ))
            .unwrap();
            let Request::AddHostFwd(spec) = req else {
                panic!()
            };
            assert_eq!(spec.host, want.parse::<SocketAddr>().unwrap(), "{text}");
        }
    }

    #[test]
    fn error_texts_are_slirp4netns_texts() {
        assert_eq!(
            err(""),
            r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#
        );
        assert_eq!(
            err("{"),
            r#"{"error":{"desc":"bad request: cannot parse JSON"}}"#
        );
        assert_eq!(
            err("[1]"),
            r#"{"error":{"desc":"bad request: json_object() failed"}}"#
        );
        assert_eq!(
            err("{}"),
            r#"{"error":{"desc":"bad request: no execute found"}}"#
        );
        assert_eq!(
            err(r#"{"execute":1}"#),
            r#"{"error":{"desc":"bad request: no execute found"}}"#
        );
        assert_eq!(
            err(r#"{"execute":"foo"}"#),
            r#"{"error":{"desc":"bad request: unknown execute"}}"#
        );
        let add = |args: &str| {
            err(&format!(
                r#"{{"execute":"add_hostfwd","arguments":{args}}}"#
            ))
        };
        assert_eq!(
            add(r#"{"proto":"sctp","host_port":1,"guest_port":1}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#
        );
        assert_eq!(
            err(r#"{"execute":"add_hostfwd"}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}"#
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_addr":"1.2.3","host_port":1,"guest_port":1}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_addr"}}"#
        );
        assert_eq!(
            add(r#"{"proto":"tcp","guest_port":1}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":"80","guest_port":1}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":65536,"guest_port":1}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}"#
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":1,"guest_addr":"10.0.3.100","guest_port":1}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}"#
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":1,"guest_addr":"::1","guest_port":1}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_addr"}}"#
        );
        assert_eq!(
            add(r#"{"proto":"tcp","host_port":1}"#),
            r#"{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}"#
        );
        assert_eq!(
            err(r#"{"execute":"remove_hostfwd"}"#),
            r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#
        );
        assert_eq!(
            error_reply(&ApiError::TooLarge),
            r#"{"error":{"desc":"bad request: too large message"}}"#
        );
    }

    #[test]
    fn numbers_are_truncated_like_slirp4netns() {
        let Request::AddHostFwd(spec) = parse(
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080.9,"guest_port":80.2}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((spec.host.port(), spec.guest.port()), (8080, 80));
        assert_eq!(
            parse(r#"{"execute":"remove_hostfwd","arguments":{"id":3.7}}"#).unwrap(),
            Request::RemoveHostFwd(3)
        );
    }

    #[test]
    fn replies_are_byte_exact() {
        assert_eq!(add_reply(1), r#"{"return":{"id":1}}"#);
        assert_eq!(remove_reply(), r#"{"return":{}}"#);
        assert_eq!(list_reply(&[]), r#"{"return":{"entries":[]},"entries":[]}"#);
        let spec = HostFwdSpec {
            proto: Proto::Tcp,
            host: "0.0.0.0:8080".parse().unwrap(),
            guest: "10.0.2.100:80".parse().unwrap(),
        };
        let e = r#"{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}"#;
        assert_eq!(
            list_reply(&[Entry::new(1, &spec)]),
            format!(r#"{{"return":{{"entries":[{e}]}},"entries":[{e}]}}"#)
        );
    }

    #[test]
    fn mangled_requests_never_panic() {
        // Byte flips, truncations and insertions of valid requests, from a fixed seed.
        let seeds = [
            r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":8080,"guest_addr":"10.0.2.100","guest_port":80}}"#,
            r#"{"execute":"remove_hostfwd","arguments":{"id":1e308}}"#,
            r#"{"execute":"list_hostfwd","arguments":[null,{"a":-0.0}]}"#,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let cfg = NetConfig::default();
        for i in 0..20_000 {
            let mut bytes = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % (bytes.len() + 1);
                match next() % 3 {
                    0 if at < bytes.len() => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, b"{}[]\":,0-e.\\"[(next() % 12) as usize]),
                }
            }
            let reply = match parse_request(&bytes, &cfg) {
                Ok(_) => continue,
                Err(e) => error_reply(&e),
            };
            assert!(
                reply.starts_with(r#"{"error":{"desc":"bad request: "#),
                "{reply}"
            );
        }
    }

    #[test]
    fn complete_objects_are_recognised() {
        assert!(is_complete_object(b"{\"execute\":\"list_hostfwd\"}\n"));
        assert!(!is_complete_object(b"{\"execute\":\"list_hostfwd\""));
        assert!(!is_complete_object(b"12"));
    }
}
