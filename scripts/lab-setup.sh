#!/usr/bin/env bash
# Installs what `linger lab` runs against and with, from Debian's packages:
#   nginx, haproxy   the other proxies the lab compares (started by the lab itself,
#                    on free ports, from its own configs; the packages' services stay off)
#   iproute2, nftables   network namespaces and silent drops for R6
#   tcpdump          packet captures of lab runs (linger lab run --capture DIR), which
#                    linger explain reads
# Run as root. `linger lab setup` runs this same script.
set -euo pipefail

packages=(nginx haproxy iproute2 nftables tcpdump)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "lab setup: ${packages[*]} already installed"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "lab setup: missing ${missing[*]}; run as root (sudo linger lab setup)," >&2
    echo "or: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The packages must not start their services (nginx on port 80, haproxy): the lab starts
# its own instances.
policy=/usr/sbin/policy-rc.d
created_policy=
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [[ -n $created_policy ]]; then rm -f "$policy"; fi; }
trap cleanup EXIT
echo "lab setup: installing ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "lab setup: done"
