//! What a test needs before it runs: root, tools, the binary under test. Under `CI=true` a
//! missing one fails the test; elsewhere the test says why and skips.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;

use super::*;

/// True when running under CI (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Under CI, fails the test; elsewhere prints why it is skipped (past the test harness's output
/// capture, so it shows even when the test passes) and returns false.
pub fn skip_or_fail(reason: &str) -> bool {
    if in_ci() {
        panic!("CI=true and this test cannot run: {reason}");
    }
    let _ = writeln!(io::stderr(), "SKIP {}: {reason}", current_test());
    false
}

fn current_test() -> String {
    thread::current().name().unwrap_or("?").to_string()
}

/// True when running as root; otherwise skip (or fail under CI).
pub fn require_root_or_skip() -> bool {
    nix::unistd::geteuid().is_root() || skip_or_fail("needs root (namespaces, TAP devices)")
}

/// Full path of an executable found on PATH or in the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain([
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True when `name` is installed; otherwise skip (or fail under CI).
pub fn require_tool(name: &str) -> bool {
    find_tool(name).is_some()
        || skip_or_fail(&format!(
            "`{name}` is not installed (scripts/install-deps.sh installs it)"
        ))
}

/// All of [`require_tool`] for each name.
pub fn require_tools(names: &[&str]) -> bool {
    names.iter().all(|n| require_tool(n))
}

/// The binary under test: `$TAPSPLICE_BIN` if set (e.g. `/usr/bin/slirp4netns` to validate the
/// slirp4netns-compatible tests against the real thing), else cargo's build of `tapsplice`.
pub fn tapsplice_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TAPSPLICE_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            is_executable(&p),
            "TAPSPLICE_BIN={} is not an executable file",
            p.display()
        );
        return Some(p);
    }
    match option_env!("CARGO_BIN_EXE_tapsplice") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            skip_or_fail(
                "the crate has no `tapsplice` binary target yet and TAPSPLICE_BIN is unset",
            );
            None
        }
    }
}

/// Root, the tools named and the binary under test: what a test that runs the binary needs, or
/// None (after a skip message) when it cannot run.
pub fn bin_prereqs(tools: &[&str]) -> Option<PathBuf> {
    if !require_root_or_skip() || !require_tools(tools) {
        return None;
    }
    tapsplice_bin()
}

/// [`bin_prereqs`] with `ip` and [`PYTHON`] (which most tests use) before `tools`.
pub fn prereqs(tools: &[&str]) -> Option<PathBuf> {
    let mut all = vec!["ip", PYTHON];
    all.extend_from_slice(tools);
    bin_prereqs(&all)
}

/// True when `bin` is tapsplice, which has the `run` mode; otherwise skip (or fail under CI).
pub fn require_run_mode(bin: &Path) -> bool {
    bin.ends_with("tapsplice")
        || skip_or_fail("TAPSPLICE_BIN is not tapsplice: no run mode to test")
}
