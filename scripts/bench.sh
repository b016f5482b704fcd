#!/usr/bin/env bash
# Benchmark tapsplice against slirp4netns, pasta, a veth pair and plain loopback, in one run.
#
#   ./scripts/bench.sh            full mode: 3 interleaved repeats, median [min-max] (< 25 min)
#   ./scripts/bench.sh --quick    one short run per case (< 3 min); CI's smoke test adds --check
#   ./scripts/bench.sh --only tapsplice pasta     a subset of contenders
#   ./scripts/bench.sh --only tapsplice tapsplice-base --baseline /tmp/tapsplice-old
#                                 the cost of a change: an earlier build beside this one
#
# Installs what it needs, builds tapsplice (release) and its tsbench tool, then hands over to
# scripts/bench/bench.py, which writes bench-results/<date>-<mode>/{results.json,table.md,
# chart.svg} and points bench-results/latest at it. Root, Debian 12. Traffic goes only to
# loopback and to namespaces the run makes; everything it makes (namespaces, veth pairs,
# processes, by PID) is removed when it ends, also on Ctrl-C. `--check` exits 1 unless every
# case that is not skipped produced a figure (it never judges a speed).
set -euo pipefail

# --baseline PATH is relative to where bench.sh was started, not to the repository root it
# changes to below: make it absolute first.
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --baseline)
            args+=("$1")
            shift
            if [ $# -gt 0 ]; then
                case "$1" in /*) args+=("$1") ;; *) args+=("$PWD/$1") ;; esac
                shift
            fi
            ;;
        --baseline=/*) args+=("$1"); shift ;;
        --baseline=*) args+=("--baseline=$PWD/${1#--baseline=}"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done
set -- ${args[@]+"${args[@]}"}

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -d "${HOME:-/root}/.cargo/bin" ]; then
    case ":$PATH:" in *":${HOME:-/root}/.cargo/bin:"*) ;; *) PATH="${HOME:-/root}/.cargo/bin:$PATH" ;; esac
    export PATH
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "bench.sh: must run as root (network namespaces, veth pairs, TAP devices)" >&2
    exit 1
fi

bash scripts/install-deps.sh

# Debian's interpreter, not whatever a version manager puts first on PATH.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

echo "bench.sh: building tapsplice and tsbench (release)"
build_log=$(mktemp /tmp/tsbench-build.XXXXXX.log)
if ! cargo build --release --bin tapsplice --bin tsbench >"$build_log" 2>&1; then
    cat "$build_log" >&2
    rm -f "$build_log"
    echo "bench.sh: build FAILED" >&2
    exit 1
fi
rm -f "$build_log"

git_desc=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    git_desc="$git_desc+dirty"
fi

# The orchestrator records what it makes in $state as it goes; if it dies without cleaning up
# (SIGKILL, a crash), this trap removes what the file lists. Normally the file is gone by then.
state=$(mktemp /tmp/tsbench-state.XXXXXX)
trap '"$PY" scripts/bench/bench.py --cleanup "$state"' EXIT
# The orchestrator runs in the background so that this shell can pass Ctrl-C and SIGTERM on
# to it (as SIGTERM); it then removes what it made and exits 130.
"$PY" scripts/bench/bench.py --state "$state" --git "$git_desc" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM HUP
while kill -0 "$child" 2>/dev/null; do
    wait "$child" || true
done
rc=0
wait "$child" || rc=$?
exit "$rc"
