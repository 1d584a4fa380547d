#!/usr/bin/env bash
# Installs what DCol's tests and demo need on a fresh Debian 12 machine (root):
# Debian packages, and a Rust toolchain (>= 1.88) when none is present.
# Idempotent; sourced by tests/run-tests.sh, tests/demo.sh and .ci/run.

dcol_setup() {
	local pkgs="iperf3 mptcpize miniupnpd-nftables coturn nftables iproute2 ethtool conntrack procps kmod iputils-ping curl openssl python3 wireguard-go wireguard-tools"
	# OpenWrt's userland built from ../shared/openwrt (tests/src/openwrt.rs: fw4 tests)
	pkgs="$pkgs build-essential cmake pkg-config libjson-c-dev zlib1g-dev busybox-static file"
	local missing=""
	for p in $pkgs; do
		dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		echo "setup: installing$missing"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq || return 1
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $missing >/dev/null || return 1
	fi
	[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
	local have=""
	if command -v cargo >/dev/null 2>&1; then
		have=$(cargo --version | awk '{print $2}')
	fi
	if [ -z "$have" ] || [ "$(printf '%s\n1.88.0\n' "$have" | sort -V | head -n1)" != "1.88.0" ]; then
		# No usable cargo: Debian's rustc-web/cargo-web (1.96 in bookworm-security).
		echo "setup: installing Debian's rustc-web and cargo-web (found cargo '${have:-none}')"
		if ! grep -rqs "bookworm-security" /etc/apt/sources.list /etc/apt/sources.list.d/; then
			echo "deb http://deb.debian.org/debian-security bookworm-security main" \
				>/etc/apt/sources.list.d/dcol-security.list
		fi
		apt-get update -qq || return 1
		apt-get install -y -qq rustc-web cargo-web >/dev/null || return 1
		export PATH="/usr/lib/rust-web/bin:$PATH"
		[ -x /usr/bin/cargo-web ] && ! command -v cargo >/dev/null 2>&1 && ln -sf /usr/bin/cargo-web /usr/local/bin/cargo
	fi
	command -v rustfmt >/dev/null 2>&1 || rustup component add rustfmt clippy >/dev/null 2>&1 || true
	modprobe -q sch_tbf 2>/dev/null || true
	echo "setup: $(cargo --version), $(iperf3 --version | head -n1), $(nft --version)"
}

dcol_setup || { echo "setup failed" >&2; exit 1; }
# The LuCI browser test's chromium and npm packages.
# shellcheck source=tests/luci/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/luci/setup.sh" || exit 1
