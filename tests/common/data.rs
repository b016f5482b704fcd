//! Deterministic data (the pattern streams and UDP payloads), digests of it, and the JSON
//! reports the helpers print.

use std::fmt;
use std::io;

use sha2::{Digest as _, Sha256};

use super::*;

/// Length and SHA-256 (lowercase hex) of a byte stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub sha: String,
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes sha256 {}", self.len, self.sha)
    }
}

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest {
            len: data.len() as u64,
            sha: hex(&Sha256::digest(data)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A running length + SHA-256.
#[derive(Default)]
pub struct Hasher {
    len: u64,
    sha: Sha256,
}

impl Hasher {
    pub fn update(&mut self, b: &[u8]) {
        self.len += b.len() as u64;
        self.sha.update(b);
    }

    pub fn finish(self) -> Digest {
        Digest {
            len: self.len,
            sha: hex(&self.sha.finalize()),
        }
    }
}

/// The 1 MiB pattern block of `seed` (see the module doc).
pub fn pattern_block(seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BLOCK);
    for i in 0..BLOCK / 32 {
        v.extend_from_slice(&Sha256::digest(format!("tapsplice:{seed}:{i}").as_bytes()));
    }
    v
}

/// Calls `f` with consecutive chunks (at most 1 MiB) of the stream of `seed`, `len` bytes in all.
pub fn for_each_chunk(
    seed: u64,
    len: u64,
    f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    for_each_chunk_of(pattern_block(seed), len, f)
}

/// [`for_each_chunk`] with the pattern block of the seed already made (`block`, which it uses
/// as its buffer).
pub fn for_each_chunk_of(
    mut block: Vec<u8>,
    len: u64,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut left = len;
    let mut k: u64 = 0;
    while left > 0 {
        block[..8].copy_from_slice(&k.to_le_bytes());
        let n = left.min(BLOCK as u64) as usize;
        f(&block[..n])?;
        left -= n as u64;
        k += 1;
    }
    Ok(())
}

/// The whole stream of `seed`, `len` bytes (for small streams).
pub fn pattern_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len as usize);
    for_each_chunk(seed, len, |c| {
        v.extend_from_slice(c);
        Ok(())
    })
    .expect("in-memory");
    v
}

/// Length + SHA-256 of the stream of `seed`, `len` bytes.
pub fn pattern_digest(seed: u64, len: u64) -> Digest {
    let mut h = Hasher::default();
    for_each_chunk(seed, len, |c| {
        h.update(c);
        Ok(())
    })
    .expect("in-memory");
    h.finish()
}

/// Checks both ends of one exchange of pattern streams, `len` bytes each way: the guest sent the
/// stream of `up_seed` and received that of `down_seed`, and the far end (`far`, e.g. "host" or
/// "peer") received and sent the same. `client` and `server` are (sent, received) as reported.
pub fn assert_exchange(
    far: &str,
    client: &(Digest, Digest),
    server: &(Digest, Digest),
    (up_seed, down_seed, len): (u64, u64, u64),
) {
    let (up, down) = (pattern_digest(up_seed, len), pattern_digest(down_seed, len));
    assert_eq!(client.0, up, "guest did not send the expected stream");
    assert_eq!(server.1, up, "guest -> {far} bytes differ");
    assert_eq!(server.0, down, "{far} did not send the expected stream");
    assert_eq!(client.1, down, "{far} -> guest bytes differ");
}

/// Digest of the stream of `seed`, `len` bytes repeated `times` times back to back (what the
/// many-connections client sends or receives in all).
pub fn pattern_digest_repeated(seed: u64, len: u64, times: u64) -> Digest {
    let one = pattern_bytes(seed, len);
    let mut h = Hasher::default();
    for _ in 0..times {
        h.update(&one);
    }
    h.finish()
}

/// A JSON object printed by a helper (one line of its output).
#[derive(Debug, Clone)]
pub struct Json(serde_json::Value);

impl Json {
    /// Parses one JSON object. Panics with the input on malformed text.
    pub fn parse(s: &str) -> Json {
        let value: serde_json::Value =
            serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"));
        assert!(value.is_object(), "not a JSON object: {s}");
        Json(value)
    }

    /// The last line of `out` that starts with `{`, parsed.
    pub fn last_in(out: &str) -> Json {
        let line = out
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or_else(|| panic!("no JSON line in output:\n{out}"));
        Json::parse(line.trim())
    }

    fn field(&self, k: &str) -> &serde_json::Value {
        self.0
            .get(k)
            .unwrap_or_else(|| panic!("no {k:?} in {self:?}"))
    }

    pub fn str(&self, k: &str) -> &str {
        self.field(k)
            .as_str()
            .unwrap_or_else(|| panic!("{k:?} not a string in {self:?}"))
    }

    pub fn i64(&self, k: &str) -> i64 {
        self.field(k)
            .as_i64()
            .unwrap_or_else(|| panic!("{k:?} not an integer in {self:?}"))
    }

    pub fn u64(&self, k: &str) -> u64 {
        self.field(k)
            .as_u64()
            .unwrap_or_else(|| panic!("{k:?} not an unsigned integer in {self:?}"))
    }

    pub fn ok(&self) -> bool {
        self.0.get("ok").and_then(serde_json::Value::as_bool) == Some(true)
    }

    /// Panics unless the report is of a connection attempt (`what`) that failed with `errno`.
    pub fn assert_connect_error(&self, what: &str, errno: i32) {
        assert!(!self.ok(), "{what} succeeded: {self:?}");
        assert_eq!(self.str("stage"), "connect", "{self:?}");
        assert_eq!(
            self.i64("errno"),
            i64::from(errno),
            "{what}: expected {}: {self:?}",
            io::Error::from_raw_os_error(errno)
        );
    }

    /// `(sent, received)` digests of a successful exchange; panics with the report otherwise.
    pub fn digests(&self) -> (Digest, Digest) {
        assert!(self.ok(), "exchange failed: {self:?}");
        (
            Digest {
                len: self.u64("sent_len"),
                sha: self.str("sent_sha").to_string(),
            },
            Digest {
                len: self.u64("recv_len"),
                sha: self.str("recv_sha").to_string(),
            },
        )
    }
}

impl Json {
    /// The whole object.
    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }

    /// True when the object has key `k`.
    pub fn has(&self, k: &str) -> bool {
        self.0.get(k).is_some()
    }

    /// An array of strings.
    pub fn strs(&self, k: &str) -> Vec<String> {
        self.field(k)
            .as_array()
            .unwrap_or_else(|| panic!("{k:?} not an array in {self:?}"))
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{k:?} has a non-string in {self:?}"))
                    .to_string()
            })
            .collect()
    }

    /// Every line of `out` that is a JSON object, parsed.
    pub fn all_in(out: &str) -> Vec<Json> {
        out.lines()
            .map(str::trim)
            .filter(|l| l.starts_with('{'))
            .map(Json::parse)
            .collect()
    }
}

/// The JSON line of `out` whose `"mode"` is `mode`; panics (with the output) unless exactly one.
pub fn json_of_mode(out: &str, mode: &str) -> Json {
    let mut found: Vec<Json> = Json::all_in(out)
        .into_iter()
        .filter(|j| j.value().get("mode").and_then(serde_json::Value::as_str) == Some(mode))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {mode:?} report in the output:\n{out}"
    );
    found.remove(0)
}

/// Datagram `i` of `seed`, `size` bytes: `sha256("tapsplice-udp:{seed}:{i}")` repeated (as
/// `payload` in [`PY_NET`]).
pub fn py_net_payload(seed: u64, i: u64, size: usize) -> Vec<u8> {
    let h = Sha256::digest(format!("tapsplice-udp:{seed}:{i}").as_bytes());
    h.iter().copied().cycle().take(size).collect()
}

/// Digest of datagrams `0..sizes.len()` of `seed` (sizes in that order) back to back.
pub fn payload_digest(seed: u64, sizes: &[usize]) -> Digest {
    let mut h = Hasher::default();
    for (i, &size) in sizes.iter().enumerate() {
        h.update(&py_net_payload(seed, i as u64, size));
    }
    h.finish()
}
