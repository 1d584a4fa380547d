#!/usr/bin/env bash
# The DCol demo: a complete collective (client, waypoint, MPTCP server) in network
# namespaces on this machine; prints plain TCP vs DCol throughput on a topology
# where the detour adds a second bottleneck path. Needs root. Installs what it
# needs first (tests/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/setup.sh
source tests/setup.sh
cargo build --release -p dcol --bins
DCOL_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/dcol" cargo run --release -q -p dcol-tests --bin demo -- "$@"
