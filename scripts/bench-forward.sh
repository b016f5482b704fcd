#!/usr/bin/env bash
# Throughput of a TCP port forward from the host's loopback into a container namespace, with
# iperf3: tapsplice's splice path, tapsplice's stack path, and slirp4netns (its API socket's
# add_hostfwd), interleaved, REPS runs each; prints median (min-max) in Gbit/s.
# "in" is host client -> container server (iperf3 -c), "out" is container -> host (iperf3 -R).
#
#   sudo scripts/bench-forward.sh [TAPSPLICE_BINARY]     (env: DUR=5 REPS=3 MTUS="1500 65520")
#
# Needs root, iperf3, slirp4netns, python3. Everything it makes is removed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=$(realpath "${1:-target/release/tapsplice}")
DUR=${DUR:-5}
REPS=${REPS:-3}
MTUS=${MTUS:-"1500 65520"}
WORK=$(mktemp -d /tmp/tsfb.XXXXXX)
PIDS=()
NETNS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in "${NETNS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

api() { # SOCKET JSON
    python3 - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()); s.shutdown(socket.SHUT_WR)
print(s.makefile("rb").read().decode())
EOF
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start IMPL MTU -> sets HOSTPORT
start() {
    local impl=$1 mtu=$2 ns="tsfb-$$-$1-$2" sock="$WORK/$1-$2.sock"
    ip netns add "$ns"
    NETNS+=("$ns")
    ip -n "$ns" link set lo up
    case $impl in
        splice) "$BIN" -c -m "$mtu" -a "$sock" --netns-type=path "/run/netns/$ns" tap0 >/dev/null 2>&1 & ;;
        stack) "$BIN" -c -m "$mtu" -a "$sock" --forward-path=stack --netns-type=path "/run/netns/$ns" tap0 >/dev/null 2>&1 & ;;
        slirp4netns) slirp4netns -c -m "$mtu" -a "$sock" --netns-type=path "/run/netns/$ns" tap0 >/dev/null 2>&1 & ;;
    esac
    PIDS+=($!)
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    ip netns exec "$ns" iperf3 -s -D -p 5201 --pidfile "$WORK/$impl-$mtu.iperf.pid" >/dev/null
    for _ in $(seq 100); do [ -s "$WORK/$impl-$mtu.iperf.pid" ] && break; sleep 0.05; done
    PIDS+=("$(cat "$WORK/$impl-$mtu.iperf.pid")")
    HOSTPORT=$(free_port)
    local reply
    reply=$(api "$sock" "{\"execute\":\"add_hostfwd\",\"arguments\":{\"proto\":\"tcp\",\"host_addr\":\"127.0.0.1\",\"host_port\":$HOSTPORT,\"guest_addr\":\"10.0.2.100\",\"guest_port\":5201}}")
    case $reply in *'"id"'*) ;; *) echo "add_hostfwd on $impl failed: $reply" >&2; exit 1 ;; esac
    sleep 0.3
}

gbps() { # PORT [-R]
    iperf3 -c 127.0.0.1 -p "$1" -t "$DUR" -J ${2:-} | python3 -c '
import json, sys
print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

summary() { # values...
    python3 -c '
import statistics, sys
v = sorted(float(x) for x in sys.argv[1:])
print("%.2f (%.2f-%.2f)" % (statistics.median(v), v[0], v[-1]))' "$@"
}

printf "%-6s %-4s %-22s %-22s %-22s\n" MTU dir "tapsplice splice" "tapsplice stack" "slirp4netns"
for mtu in $MTUS; do
    declare -A port=()
    for impl in splice stack slirp4netns; do
        start "$impl" "$mtu"
        port[$impl]=$HOSTPORT
    done
    for dir in in out; do
        declare -A res=()
        for _ in $(seq "$REPS"); do
            for impl in splice stack slirp4netns; do
                flag=""
                [ "$dir" = out ] && flag="-R"
                res[$impl]="${res[$impl]:-} $(gbps "${port[$impl]}" $flag)"
            done
        done
        # shellcheck disable=SC2086
        printf "%-6s %-4s %-22s %-22s %-22s\n" "$mtu" "$dir" "$(summary ${res[splice]})" \
            "$(summary ${res[stack]})" "$(summary ${res[slirp4netns]})"
        unset res
    done
    unset port
done
