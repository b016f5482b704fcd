#!/usr/bin/env bash
# Install the system packages the test suite needs (Debian 12). Idempotent and quiet:
# runs `apt-get update` only when something is missing, and prints one line.
set -euo pipefail

# dnsmasq-base is dnsmasq without its system service (the full `dnsmasq` package would start a
# resolver on port 53 of every address); the DNS tests start their own instances.
# dnsutils (dig) is Debian 12's transitional name for bind9-dnsutils; libc-bin has getent;
# udhcpc is busybox's DHCP client.
PACKAGES=(
    iperf3 rootlesskit uidmap slirp4netns passt curl socat jq iproute2 python3
    iputils-ping procps ncat tcpdump
    dnsmasq-base dnsutils bind9-dnsutils udhcpc busybox libc-bin
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp /tmp/install-deps.XXXXXX.log)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-deps: FAILED to install: ${missing[*]}" >&2
    exit 1
fi
echo "install-deps: installed ${#missing[@]} packages: ${missing[*]}"
