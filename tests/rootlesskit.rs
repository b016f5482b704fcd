//! Rootless use. rootlesskit drives the binary unchanged, as `--slirp4netns-binary`, exactly as
//! it drives slirp4netns; and `tapsplice run` works for an ordinary user, making its own user
//! namespace. rootlesskit refuses to run as root, so these run as the unprivileged user
//! `tapsplice-test` (made by `scripts/test.sh`, with /etc/subuid and /etc/subgid ranges), through
//! `setpriv`, with a copy of the binary in a temp dir that user can read. They need
//! `/dev/net/tun` to be 0666 (`scripts/test.sh` sets it). They pass with
//! `TAPSPLICE_BIN=/usr/bin/slirp4netns`.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(120);

/// The test user ([`RootlessUser`], with an `XDG_RUNTIME_DIR`) with what rootlesskit needs.
struct RootlessEnv {
    user: RootlessUser,
}

impl RootlessEnv {
    /// Checks every prerequisite (skip, or fail under CI) and prepares the dir.
    fn new() -> Option<RootlessEnv> {
        let user =
            RootlessUser::prepare(&["rootlesskit", "newuidmap", "newgidmap", "curl", PYTHON])?;
        for f in ["/etc/subuid", "/etc/subgid"] {
            let text = fs::read_to_string(f).unwrap_or_default();
            if !text
                .lines()
                .any(|l| l.starts_with(&format!("{TEST_USER}:")))
            {
                skip_or_fail(&format!(
                    "{f} has no range for {TEST_USER} (scripts/test.sh adds it)"
                ));
                return None;
            }
        }
        Some(RootlessEnv {
            user: user.with_runtime_dir(),
        })
    }

    /// `rootlesskit --net=slirp4netns --slirp4netns-binary=COPY --state-dir=... FLAGS... ARGV...`
    /// as the test user, captured, within [`DEADLINE`].
    fn rootlesskit(&self, flags: &[&str], argv: &[String], stdin: Option<Vec<u8>>) -> Captured {
        let state = self.user.dir().join(unique_name("state"));
        let mut cmd = self
            .user
            .command(&find_tool("rootlesskit").expect("rootlesskit"));
        cmd.arg("--net=slirp4netns")
            .arg(format!("--slirp4netns-binary={}", self.user.bin.display()))
            .arg(format!("--state-dir={}", state.display()))
            .args(flags)
            .args(argv);
        run_capture(
            &format!("rootlesskit {}", flags.join(" ")),
            &mut cmd,
            stdin,
            DEADLINE,
        )
    }
}

/// Through rootlesskit with `flags`: curl posts a body to a host server on 127.0.0.1 via the
/// gateway and gets the exact body back; then the python client moves `len` bytes each way.
fn curl_and_bulk(flags: &[&str], len: u64) {
    let Some(env) = RootlessEnv::new() else {
        return;
    };

    let body = pattern_bytes(81, 2 * MIB + 99);
    let upload = pattern_bytes(82, MIB + 3);
    let http = HttpServer::start(body.clone());
    let out = env.rootlesskit(
        flags,
        &curl_post(&format!("http://{GATEWAY}:{}/rk", http.port())),
        Some(upload.clone()),
    );
    http.assert_one_post(&out, "curl under rootlesskit", "/rk", &upload, &body);

    exchange_via_gateway("python client under rootlesskit", (83, 84, len), |args| {
        env.rootlesskit(flags, &with_python(args), None)
    });
}

/// rootlesskit's own default MTU for slirp4netns (65520 in rootlesskit 1.1).
#[test]
fn rootlesskit_default_curl_and_bulk() {
    curl_and_bulk(&[], 32 * MIB);
}

#[test]
fn rootlesskit_mtu_65520_curl_and_bulk() {
    curl_and_bulk(&["--mtu=65520"], 32 * MIB);
}

#[test]
fn rootlesskit_mtu_1500_curl_and_bulk() {
    curl_and_bulk(&["--mtu=1500"], 32 * MIB);
}

/// rootlesskit passes `--disable-host-loopback` on: the gateway refuses with ENETUNREACH.
#[test]
fn rootlesskit_disable_host_loopback_enetunreach() {
    let Some(env) = RootlessEnv::new() else {
        return;
    };
    assert_gateway_unreachable(
        "python client under rootlesskit --disable-host-loopback",
        (92, 91),
        |args| env.rootlesskit(&["--disable-host-loopback"], &with_python(args), None),
    );
}

/// An ordinary user runs `tapsplice run`: it makes a user namespace of its own (uid 0 inside
/// maps to the user) and carries data both ways to the host's loopback.
#[test]
fn unprivileged_run_carries_data_both_ways() {
    let Some(env) = RootlessEnv::new() else {
        return;
    };
    // `run` is tapsplice's own; a slirp4netns under test has no such mode.
    if !require_run_mode(&env.user.bin) {
        return;
    }
    exchange_via_gateway(
        "python client in tapsplice run as the test user",
        (93, 94, 32 * MIB),
        |args| env.user.tapsplice_run(&[], &with_python(args), DEADLINE),
    );
}
