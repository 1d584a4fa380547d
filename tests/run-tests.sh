#!/usr/bin/env bash
# The whole DCol test suite: unit tests, virtual-network tests and the root
# network-namespace tests with real kernel MPTCP, nftables and iperf3.
# Needs root (the namespace tests create network namespaces). Installs what it
# needs first (tests/setup.sh).
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
cargo test --workspace -- --test-threads=1
