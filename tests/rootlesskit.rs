//! Rootless use. rootlesskit drives the binary unchanged, as `--slirp4netns-binary`, exactly as
//! it drives slirp4netns; and `tapsplice run` works for an ordinary user, making its own user
//! namespace. rootlesskit refuses to run as root, so these run as the unprivileged user
//! `tapsplice-test` (made by `scripts/test.sh`, with /etc/subuid and /etc/subgid ranges), through
//! `setpriv`, with a copy of the binary in a temp dir that user can read. They need
//! `/dev/net/tun` to be 0666 (`scripts/test.sh` sets it). They pass with
//! `TAPSPLICE_BIN=/usr/bin/slirp4netns`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::unistd::{User, chown};

const DEADLINE: Duration = Duration::from_secs(120);

/// A temp dir owned by the test user holding a copy of the binary under test.
struct RootlessEnv {
    user: User,
    bin: PathBuf,
    dir: TempDir,
}

impl RootlessEnv {
    /// Checks every prerequisite (skip, or fail under CI) and prepares the dir.
    fn new() -> Option<RootlessEnv> {
        if !require_root_or_skip()
            || !require_tools(&[
                "rootlesskit",
                "setpriv",
                "newuidmap",
                "newgidmap",
                "curl",
                PYTHON,
            ])
        {
            return None;
        }
        let Some(user) = User::from_name(TEST_USER).expect("getpwnam") else {
            skip_or_fail(&format!(
                "user {TEST_USER} does not exist (scripts/test.sh creates it)"
            ));
            return None;
        };
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
        let tun_mode = fs::metadata("/dev/net/tun")
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if tun_mode & 0o006 != 0o006 {
            skip_or_fail(&format!(
                "/dev/net/tun is mode {:o}, not usable by {TEST_USER} (scripts/test.sh sets 0666)",
                tun_mode & 0o777
            ));
            return None;
        }
        let src = tapsplice_bin()?;
        let dir = TempDir::new("tsrk");
        let bin_dir = dir.join("bin");
        fs::create_dir(&bin_dir).expect("mkdir bin");
        let name = src.file_name().expect("binary file name");
        let bin = bin_dir.join(name);
        fs::copy(&src, &bin)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), bin.display()));
        for (p, mode) in [
            (dir.path(), 0o755),
            (bin_dir.as_path(), 0o755),
            (bin.as_path(), 0o755),
        ] {
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown temp dir");
        let run = dir.join("run");
        fs::create_dir(&run).expect("mkdir run");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).expect("chmod run");
        chown(&run, Some(user.uid), Some(user.gid)).expect("chown run");
        Some(RootlessEnv { user, bin, dir })
    }

    /// `rootlesskit --net=slirp4netns --slirp4netns-binary=COPY --state-dir=... FLAGS... ARGV...`
    /// as the test user, captured, within [`DEADLINE`].
    fn rootlesskit(&self, flags: &[&str], argv: &[String], stdin: Option<Vec<u8>>) -> Captured {
        let state = self.dir.join(&unique_name("state"));
        let mut cmd = self.as_test_user(&find_tool("rootlesskit").expect("rootlesskit"));
        cmd.arg("--net=slirp4netns")
            .arg(format!("--slirp4netns-binary={}", self.bin.display()))
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

    /// `tapsplice run -- ARGV...` (the copy) as the test user, captured, within [`DEADLINE`].
    fn tapsplice_run(&self, argv: &[String]) -> Captured {
        let mut cmd = self.as_test_user(&self.bin);
        cmd.arg("run").arg("--").args(argv);
        run_capture("tapsplice run as the test user", &mut cmd, None, DEADLINE)
    }

    /// `program` run by `setpriv` as the test user, with a clean environment.
    fn as_test_user(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env("HOME", &self.user.dir)
            .env("USER", TEST_USER)
            .env("LOGNAME", TEST_USER)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .current_dir(self.dir.path());
        cmd
    }
}

fn curl_post(url: &str) -> Vec<String> {
    [
        "curl",
        "-sS",
        "--fail",
        "--noproxy",
        "*",
        "--max-time",
        "60",
        "--data-binary",
        "@-",
        url,
    ]
    .map(String::from)
    .to_vec()
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
    out.assert_success("curl under rootlesskit");
    assert_eq!(
        Digest::of(&out.stdout),
        Digest::of(&body),
        "body received by curl differs"
    );
    assert!(out.stdout == body, "body bytes differ");
    let recs = http.records();
    assert_eq!(recs.len(), 1, "expected one request: {recs:?}");
    assert_eq!(recs[0].request_line, "POST /rk HTTP/1.1");
    assert_eq!(
        recs[0].body,
        Digest::of(&upload),
        "request body received by the server differs"
    );

    let (up_seed, down_seed) = (83, 84);
    let server = TestServer::start(down_seed, len);
    let out = env.rootlesskit(
        flags,
        &with_python(py_client(GATEWAY, server.port(), len, up_seed, 10)),
        None,
    );
    out.assert_success("python client under rootlesskit");
    let (client_sent, client_recv) = Json::last_in(&out.stdout_str()).digests();
    let rec = server.wait_records(1, Duration::from_secs(30)).remove(0);
    assert_eq!(rec.error, None);
    assert_eq!(client_sent, pattern_digest(up_seed, len));
    assert_eq!(rec.received, client_sent, "guest -> host bytes differ");
    assert_eq!(rec.sent, pattern_digest(down_seed, len));
    assert_eq!(client_recv, rec.sent, "host -> guest bytes differ");
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
    let server = TestServer::start(91, 1000);
    let argv = with_python(py_client(GATEWAY, server.port(), 1000, 92, 5));
    let out = env.rootlesskit(&["--disable-host-loopback"], &argv, None);
    out.assert_success("python client under rootlesskit --disable-host-loopback");
    let r = Json::last_in(&out.stdout_str());
    assert!(
        !r.ok(),
        "connect to the gateway succeeded despite --disable-host-loopback: {r:?}"
    );
    assert_eq!(r.str("stage"), "connect", "{r:?}");
    assert_eq!(
        r.i64("errno"),
        libc::ENETUNREACH as i64,
        "expected ENETUNREACH: {r:?}"
    );
    assert_eq!(
        server.accepted(),
        0,
        "the host's loopback server got a connection"
    );
}

/// An ordinary user runs `tapsplice run`: it makes a user namespace of its own (uid 0 inside
/// maps to the user) and carries data both ways to the host's loopback.
#[test]
fn unprivileged_run_carries_data_both_ways() {
    let Some(env) = RootlessEnv::new() else {
        return;
    };
    if !env.bin.ends_with("tapsplice") {
        // `run` is tapsplice's own; a slirp4netns under test has no such mode.
        skip_or_fail("TAPSPLICE_BIN is not tapsplice: no run mode to test");
        return;
    }
    let len = 32 * MIB;
    let (up_seed, down_seed) = (93, 94);
    let server = TestServer::start(down_seed, len);
    let out = env.tapsplice_run(&with_python(py_client(
        GATEWAY,
        server.port(),
        len,
        up_seed,
        10,
    )));
    out.assert_success("python client in tapsplice run as the test user");
    let (client_sent, client_recv) = Json::last_in(&out.stdout_str()).digests();
    let rec = server.wait_records(1, Duration::from_secs(30)).remove(0);
    assert_eq!(rec.error, None);
    assert_eq!(client_sent, pattern_digest(up_seed, len));
    assert_eq!(rec.received, client_sent, "guest -> host bytes differ");
    assert_eq!(rec.sent, pattern_digest(down_seed, len));
    assert_eq!(client_recv, rec.sent, "host -> guest bytes differ");
}
