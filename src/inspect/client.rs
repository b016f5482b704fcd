//! The client end of the API socket: one request per connection, as slirp4netns's protocol has
//! it.
//!
//! The client connects, writes one JSON object, half-closes, and reads the reply to EOF. A
//! reply is `{"return": VALUE}` or `{"error": {"desc": TEXT}}`. Plain blocking std sockets
//! with timeouts are enough: the CLI does one thing at a time, and a tapsplice that does not
//! answer within [`API_TIMEOUT`] is reported rather than waited on forever. Replies are
//! bounded by [`MAX_REPLY`] so a wrong socket cannot make the CLI swallow memory.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::describe_io;
pub use crate::stats::report::{FlowList, FlowReport, ForwardList};

/// How long connecting, sending and receiving may each take.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest reply taken. A full flow table (about 25,000 flows at 16,384 TCP + 4,096 UDP +
/// 256 ICMP + 4,096 spliced, some 500 bytes of JSON each) fits with room to spare.
pub const MAX_REPLY: u64 = 16 << 20;

/// One request of the statistics API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiCommand {
    GetStats,
    ListFlows,
    ListForwards,
    /// Start capturing the TAP's frames to `path`, which is absolute: the server's working
    /// directory is not the CLI's.
    StartPcap {
        path: String,
        snaplen: u32,
        max_bytes: u64,
    },
    StopPcap,
}

impl ApiCommand {
    /// The `execute` name.
    pub fn name(&self) -> &'static str {
        match self {
            ApiCommand::GetStats => "get_stats",
            ApiCommand::ListFlows => "list_flows",
            ApiCommand::ListForwards => "list_forwards",
            ApiCommand::StartPcap { .. } => "start_pcap",
            ApiCommand::StopPcap => "stop_pcap",
        }
    }

    /// The request as sent.
    pub fn to_json(&self) -> Value {
        match self {
            ApiCommand::StartPcap {
                path,
                snaplen,
                max_bytes,
            } => json!({
                "execute": self.name(),
                "arguments": {"path": path, "snaplen": snaplen, "max_bytes": max_bytes},
            }),
            _ => json!({"execute": self.name()}),
        }
    }
}

/// Why a request got no usable answer. Each message starts with the socket's path, as the
/// CLI prints it after `tapsplice: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Connecting, sending or receiving failed (no such socket, nobody listening, timeout).
    #[error("{path}: {reason}")]
    Socket { path: String, reason: String },
    /// The server answered `{"error": {"desc": ...}}`.
    #[error("{path}: {command}: {desc}")]
    Refused {
        path: String,
        command: &'static str,
        desc: String,
    },
    /// The reply was longer than [`MAX_REPLY`].
    #[error("{path}: {command}: reply larger than {MAX_REPLY} bytes")]
    TooLarge { path: String, command: &'static str },
    /// The reply was not JSON, or not the shape the command answers.
    #[error("{path}: {command}: unexpected reply: {detail}")]
    BadReply {
        path: String,
        command: &'static str,
        detail: String,
    },
}

/// A client of one API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    path: PathBuf,
}

impl ApiClient {
    pub fn new(path: impl Into<PathBuf>) -> ApiClient {
        ApiClient { path: path.into() }
    }

    /// Sends `command` and returns the reply's `return` value as it came.
    pub fn call(&self, command: &ApiCommand) -> Result<Value, ClientError> {
        let raw = self.exchange(command).map_err(|err| ClientError::Socket {
            path: self.display_path(),
            reason: describe_io(&err),
        })?;
        if raw.len() as u64 > MAX_REPLY {
            return Err(ClientError::TooLarge {
                path: self.display_path(),
                command: command.name(),
            });
        }
        let bad = |detail: String| ClientError::BadReply {
            path: self.display_path(),
            command: command.name(),
            detail,
        };
        let mut reply: Value = serde_json::from_slice(&raw).map_err(|err| {
            if raw.is_empty() {
                bad("no reply".to_string())
            } else {
                bad(err.to_string())
            }
        })?;
        if let Some(error) = reply.get("error") {
            let desc = match error.get("desc").and_then(Value::as_str) {
                Some(desc) => desc.to_string(),
                None => error.to_string(),
            };
            return Err(ClientError::Refused {
                path: self.display_path(),
                command: command.name(),
                desc,
            });
        }
        match reply.get_mut("return") {
            Some(value) => Ok(value.take()),
            None => Err(bad("neither \"return\" nor \"error\"".to_string())),
        }
    }

    /// Sends `command` and reads the `return` value as `T`.
    pub fn fetch<T: DeserializeOwned>(&self, command: &ApiCommand) -> Result<T, ClientError> {
        let value = self.call(command)?;
        self.parse(command, value)
    }

    /// Reads a `return` value of `command` as `T`.
    pub fn parse<T: DeserializeOwned>(
        &self,
        command: &ApiCommand,
        value: Value,
    ) -> Result<T, ClientError> {
        serde_json::from_value(value).map_err(|err| ClientError::BadReply {
            path: self.display_path(),
            command: command.name(),
            detail: err.to_string(),
        })
    }

    pub fn flows(&self) -> Result<Vec<FlowReport>, ClientError> {
        self.fetch::<FlowList>(&ApiCommand::ListFlows)
            .map(|list| list.flows)
    }

    /// Connects, sends the request, half-closes and reads up to one byte past the limit.
    fn exchange(&self, command: &ApiCommand) -> io::Result<Vec<u8>> {
        let mut stream = UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(API_TIMEOUT))?;
        stream.set_write_timeout(Some(API_TIMEOUT))?;
        stream.write_all(command.to_json().to_string().as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        let mut reply = Vec::new();
        stream.take(MAX_REPLY + 1).read_to_end(&mut reply)?;
        Ok(reply)
    }

    fn display_path(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::testkit::{FakeApi, sample_flows, sample_stats, socket_path};
    use crate::stats::report::{PcapReport, StatsReport};

    #[test]
    fn a_return_reply_is_read_as_the_report() {
        let stats = sample_stats();
        let api = FakeApi::start(vec![json!({"return": stats}).to_string()]);
        let client = ApiClient::new(api.path());
        assert_eq!(
            client.fetch::<StatsReport>(&ApiCommand::GetStats).unwrap(),
            stats
        );
        assert_eq!(api.requests(), vec![json!({"execute": "get_stats"})]);
    }

    #[test]
    fn list_flows_unwraps_the_flows_array() {
        let flows = sample_flows();
        let api = FakeApi::start(vec![json!({"return": {"flows": flows}}).to_string()]);
        let client = ApiClient::new(api.path());
        assert_eq!(client.flows().unwrap(), flows);
    }

    #[test]
    fn start_pcap_sends_its_arguments() {
        let api = FakeApi::start(vec![
            json!({"return": {"path": "/tmp/x.pcap", "active": true, "snaplen": 96,
                "max_bytes": 1024, "frames": 0, "bytes": 24, "dropped": 0, "ended": null}})
            .to_string(),
        ]);
        let client = ApiClient::new(api.path());
        let report: PcapReport = client
            .fetch(&ApiCommand::StartPcap {
                path: "/tmp/x.pcap".into(),
                snaplen: 96,
                max_bytes: 1024,
            })
            .unwrap();
        assert!(report.active);
        assert_eq!(report.bytes, 24);
        assert_eq!(
            api.requests(),
            vec![json!({"execute": "start_pcap",
                "arguments": {"path": "/tmp/x.pcap", "snaplen": 96, "max_bytes": 1024}})]
        );
    }

    #[test]
    fn an_error_reply_gives_its_desc() {
        let api = FakeApi::start(vec![
            r#"{"error":{"desc":"bad request: unknown execute"}}"#.to_string(),
        ]);
        let client = ApiClient::new(api.path());
        let err = client
            .fetch::<StatsReport>(&ApiCommand::GetStats)
            .unwrap_err();
        assert_eq!(
            err,
            ClientError::Refused {
                path: api.path().display().to_string(),
                command: "get_stats",
                desc: "bad request: unknown execute".into(),
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "{}: get_stats: bad request: unknown execute",
                api.path().display()
            )
        );
    }

    #[test]
    fn a_reply_of_the_wrong_shape_is_reported() {
        let api = FakeApi::start(vec![
            r#"{"return":{"flows":3}}"#.to_string(),
            "not json".to_string(),
            String::new(),
            r#"{"entries":[]}"#.to_string(),
        ]);
        let client = ApiClient::new(api.path());
        for _ in 0..4 {
            assert!(matches!(
                client.flows(),
                Err(ClientError::BadReply {
                    command: "list_flows",
                    ..
                })
            ));
        }
    }

    #[test]
    fn a_reply_over_the_limit_is_refused() {
        let huge = format!(
            r#"{{"return":{{"flows":[],"pad":"{}"}}}}"#,
            "x".repeat(MAX_REPLY as usize)
        );
        let api = FakeApi::start(vec![huge]);
        let client = ApiClient::new(api.path());
        assert!(matches!(
            client.flows(),
            Err(ClientError::TooLarge {
                command: "list_flows",
                ..
            })
        ));
    }

    #[test]
    fn a_missing_socket_names_the_path_and_the_errno() {
        let path = socket_path();
        let err = ApiClient::new(&path)
            .call(&ApiCommand::GetStats)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: No such file or directory", path.display())
        );
    }
}
