#!/usr/bin/env bash
# Full check of tapsplice, as CI runs it (`.ci/run`): install packages, prepare the machine for
# rootless tests, then fmt, clippy and the whole test suite in release mode.
# Must run as root on Debian 12, from a clean clone. CI=true is passed through unchanged: under it,
# tests fail (never skip) when a tool or privilege is missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TEST_USER=tapsplice-test
SUBID_COUNT=65536
SUBID_MIN=200000

if [ -d "${HOME:-/root}/.cargo/bin" ]; then
    case ":$PATH:" in *":${HOME:-/root}/.cargo/bin:"*) ;; *) PATH="${HOME:-/root}/.cargo/bin:$PATH" ;; esac
    export PATH
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: must run as root (namespaces, TAP devices, the test user)" >&2
    exit 1
fi

bash scripts/install-deps.sh

# Toolchain components: they come with the toolchain here; add them if a toolchain lacks them.
for comp in rustfmt clippy; do
    if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "test.sh: adding rustup component $comp"
        rustup component add "$comp"
    fi
done

# Rootless tests open /dev/net/tun as an ordinary user (0600 on this machine, 0666 on a normal host).
chmod 0666 /dev/net/tun

# The unprivileged user that runs rootlesskit (which refuses to run as root), with subordinate
# id ranges that overlap no existing range.
if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$TEST_USER"
fi
for f in /etc/subuid /etc/subgid; do
    touch "$f"
    if ! grep -q "^$TEST_USER:" "$f"; then
        start=$(awk -F: -v min="$SUBID_MIN" '
            BEGIN { s = min } NF >= 3 { e = $2 + $3; if (e > s) s = e } END { print s }' "$f")
        echo "$TEST_USER:$start:$SUBID_COUNT" >>"$f"
    fi
done
echo "test.sh: test user $TEST_USER ($(id -u "$TEST_USER")), subuid $(grep "^$TEST_USER:" /etc/subuid | cut -d: -f2-), subgid $(grep "^$TEST_USER:" /etc/subgid | cut -d: -f2-)"

failed_steps=()
step() {
    local name=$1
    shift
    echo "test.sh: == $name: $*"
    if ! "$@"; then
        echo "test.sh: == $name FAILED"
        failed_steps+=("$name")
    fi
}

step fmt cargo fmt --check
step clippy cargo clippy --all-targets -- -D warnings

log=$(mktemp /tmp/tapsplice-test.XXXXXX.log)
trap 'rm -f "$log"' EXIT
echo "test.sh: == test: cargo test --release --no-fail-fast"
set +e
cargo test --release --no-fail-fast 2>&1 | tee "$log"
test_rc=${PIPESTATUS[0]}
set -e
if [ "$test_rc" -ne 0 ]; then
    echo "test.sh: == test FAILED (cargo exit $test_rc)"
    failed_steps+=("test")
fi

# The benchmark harness must keep working: every case produces a figure (never a speed check).
step bench-smoke ./scripts/bench.sh --quick --check

read -r passed failed < <(awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i) ~ /^passed;?$/) p += $(i - 1)
            if ($(i) ~ /^failed;?$/) f += $(i - 1)
        }
    }
    END { print p + 0, f + 0 }' "$log")

# A failing step without a failing test (fmt, clippy, a build error) still counts as a failure.
if [ "${#failed_steps[@]}" -gt 0 ]; then
    echo "test.sh: failed steps: ${failed_steps[*]}"
    if [ "$failed" -eq 0 ]; then
        failed=${#failed_steps[@]}
    fi
fi
echo "$passed passed, $failed failed"
[ "${#failed_steps[@]}" -eq 0 ] && [ "$failed" -eq 0 ]
