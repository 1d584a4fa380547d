#!/usr/bin/env bash
# Installs what the LuCI browser test (tests/openwrt/luci.rs, tests/luci/run.mjs)
# needs on a fresh Debian 12 machine (root): Debian's chromium, Node.js (the
# image's, else Debian's nodejs + npm) and tests/luci's npm packages
# (playwright-core only: it drives the system chromium and downloads no
# browser). Idempotent; source it or run it.

dcol_luci_setup() {
	local here missing=""
	here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
	[ -x /usr/bin/chromium ] || missing="$missing chromium"
	# Fonts for readable screenshots.
	dpkg -s fonts-dejavu-core >/dev/null 2>&1 || missing="$missing fonts-dejavu-core"
	command -v node >/dev/null 2>&1 || missing="$missing nodejs"
	command -v npm >/dev/null 2>&1 || missing="$missing npm"
	if [ -n "$missing" ]; then
		echo "luci setup: installing$missing"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq || return 1
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $missing >/dev/null || return 1
	fi
	local major
	major=$(node -p 'process.versions.node.split(".")[0]')
	if [ "$major" -lt 18 ]; then
		echo "luci setup: node $(node --version) is too old (playwright-core needs >= 18, tested with 20)" >&2
		return 1
	fi
	if [ ! -f "$here/node_modules/playwright-core/package.json" ] ||
		[ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
		echo "luci setup: npm ci in tests/luci"
		(cd "$here" && npm ci --no-audit --no-fund --loglevel=error) || return 1
	fi
	echo "luci setup: $(/usr/bin/chromium --version 2>/dev/null), node $(node --version)"
}

dcol_luci_setup || { echo "luci setup failed" >&2; return 1 2>/dev/null || exit 1; }
