#!/usr/bin/env bash
# The main job, end to end: build tapsplice, make a "remote" host in a network namespace of
# our own (reached over a veth pair) plus a server on the host's loopback, then run a client
# in a fresh container namespace through `tapsplice run` and show what crossed it.
# Run as root on Debian 12; it installs what it needs and removes everything it made.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (it creates a network namespace and a veth pair)" >&2
    exit 1
fi

bash scripts/install-deps.sh
echo "demo.sh: building tapsplice (release)"
cargo build --release --quiet
BIN=$PWD/target/release/tapsplice

id=$$
ns=tsdemo-$id
veth_host=tsd${id}h
veth_peer=tsd${id}p
# A /30 of our own for the "remote" host; it must not overlap the container's 10.0.2.0/24.
host_ip=10.203.0.1
remote_ip=10.203.0.2
work=$(mktemp -d /tmp/tapsplice-demo.XXXXXX)
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip link del "$veth_host" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The remote host: a namespace with a veth pair to ours, serving HTTP and iperf3.
ip netns add "$ns"
ip link add "$veth_host" type veth peer name "$veth_peer" netns "$ns"
ip addr add "$host_ip/30" dev "$veth_host"
ip link set "$veth_host" up
ip -n "$ns" addr add "$remote_ip/30" dev "$veth_peer"
ip -n "$ns" link set "$veth_peer" up
ip -n "$ns" link set lo up

mkdir -p "$work/remote" "$work/host"
head -c $((32 * 1024 * 1024)) /dev/urandom >"$work/remote/blob"
blob_sha=$(sha256sum "$work/remote/blob" | cut -d' ' -f1)
echo "hello from the host's loopback, through tapsplice" >"$work/host/hello.txt"

ip netns exec "$ns" python3 -m http.server 8080 --bind "$remote_ip" --directory "$work/remote" \
    >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$ns" iperf3 -s -B "$remote_ip" -p 5201 >/dev/null 2>&1 &
pids+=($!)
# The host's loopback server: a free port picked by the kernel.
host_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$host_port" --bind 127.0.0.1 --directory "$work/host" >/dev/null 2>&1 &
pids+=($!)

wait_port() { # wait_port NETNS-OR-EMPTY IP PORT
    for _ in $(seq 100); do
        if ${1:+ip netns exec "$1"} bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "demo.sh: server $2:$3 did not come up" >&2
    return 1
}
wait_port "$ns" "$remote_ip" 8080
wait_port "$ns" "$remote_ip" 5201
wait_port "" 127.0.0.1 "$host_port"

cat >"$work/guest.sh" <<GUEST
set -e
echo "--- inside the container namespace"
ip -br addr show tap0
ip route show default
echo "--- ping the gateway (answered by tapsplice itself)"
ping -c 3 -i 0.2 10.0.2.2 | tail -2
echo "--- HTTP to the host's 127.0.0.1:$host_port, as 10.0.2.2:$host_port"
curl -sS http://10.0.2.2:$host_port/hello.txt
echo "--- 32 MiB over HTTP from the remote host $remote_ip"
got=\$(curl -sS http://$remote_ip:8080/blob | sha256sum | cut -d' ' -f1)
echo "sha256 expected $blob_sha"
echo "sha256 received \$got"
[ "\$got" = "$blob_sha" ] && echo "payload intact"
echo "--- iperf3 to the remote host, 3 s each way"
iperf3 -c $remote_ip -p 5201 -t 3 | grep -E 'sender|receiver'
iperf3 -c $remote_ip -p 5201 -t 3 -R | grep -E 'sender|receiver'
GUEST

echo "demo.sh: $BIN run -- sh guest.sh"
"$BIN" run -- sh "$work/guest.sh"
echo "demo.sh: done; everything it made is being removed"
