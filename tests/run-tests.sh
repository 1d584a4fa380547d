#!/usr/bin/env bash
# The whole DCol test suite: unit tests, virtual-network tests, the root
# network-namespace tests with real kernel MPTCP, nftables and iperf3, and the
# OpenWrt suite (tests/openwrt: the packages, init script, fw4 include and
# LuCI app on OpenWrt's own userland) when OpenWrt's userland sources are
# here. Needs root (the namespace tests create network namespaces). Installs
# what it needs first (tests/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/setup.sh
source tests/setup.sh
if [ "$(id -u)" != 0 ]; then
	echo "tests/run-tests.sh: the namespace tests need root" >&2
	exit 1
fi
cargo build -p dcol --bins
# One test at a time: throughput tests must not share the two cores.
cargo test --workspace --exclude dcol-openwrt -- --test-threads=1

# The OpenWrt suite needs OpenWrt's userland sources: $OPENWRT_SRC, else
# $DCOL_OPENWRT_SRC, else the first shared/openwrt beside the workspace or
# one of its ancestors (where tests/src/openwrt.rs looks too).
owrt_src=${OPENWRT_SRC:-${DCOL_OPENWRT_SRC:-}}
tried=${owrt_src:-}
if [ -z "$owrt_src" ]; then
	d=$(dirname "$PWD")
	while :; do
		tried="$tried ${d%/}/shared/openwrt"
		if [ -f "${d%/}/shared/openwrt/openwrt-userland-src.tar.gz" ] && [ -f "${d%/}/shared/openwrt/build.sh" ]; then
			owrt_src=${d%/}/shared/openwrt
			break
		fi
		[ "$d" = / ] && break
		d=$(dirname "$d")
	done
fi
if [ -z "$owrt_src" ]; then
	echo
	echo "SKIPPED: the OpenWrt suite (tests/openwrt): no OpenWrt userland sources" \
		"(openwrt-userland-src.tar.gz and build.sh) in:$tried; set OPENWRT_SRC=DIR to run it"
	exit 0
fi
echo
echo "=== the OpenWrt suite (tests/openwrt) with $owrt_src"
t0=$SECONDS
if ! OPENWRT_SRC=$owrt_src cargo test -p dcol-openwrt -- --test-threads=1; then
	echo "the OpenWrt suite FAILED after $((SECONDS - t0)) s (logs and screenshots: target/openwrt-artifacts/)"
	exit 1
fi
echo "the OpenWrt suite passed in $((SECONDS - t0)) s (logs and screenshots: target/openwrt-artifacts/)"
