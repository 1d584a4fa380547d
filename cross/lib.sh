# Shared helpers for cross/build, cross/size-check and cross/test-qemu.
# Sourced, not executed. Everything here comes from package registries only:
# Debian (rustc-web, cargo-web, rust-web-src from bookworm-security,
# qemu-user-static, file) and PyPI (ziglang, used as linker and musl libc).

CROSS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$CROSS_DIR/.." && pwd)
TARGET_DIR="$ROOT/target"           # the contract: target/TRIPLE/release/dcol
PREFIX=${DCOL_CROSS_PREFIX:-/opt/dcol-cross}
VENV="$PREFIX/venv"
ZIGLANG_VERSION=${DCOL_ZIGLANG_VERSION:-0.15.2}

# Debian's Rust (1.96 from bookworm-security) — it ships rust-src, which
# -Zbuild-std needs; rustup has no std for the tier-3 MIPS targets.
RUSTC_BIN=/usr/bin/rustc
CARGO_BIN=/usr/bin/cargo
MIN_RUST_MINOR=88                   # postcard 1.2 and the workspace need >= 1.88

ALL_TRIPLES=(
  mips-unknown-linux-musl
  mipsel-unknown-linux-musl
  armv7-unknown-linux-musleabihf
  aarch64-unknown-linux-musl
  x86_64-unknown-linux-musl
)

log() { printf '[cross] %s\n' "$*" >&2; }
die() { printf '[cross] error: %s\n' "$*" >&2; exit 1; }

# zig's -target for each Rust triple (+ a CPU where zig's default is not what
# the Rust target assumes).
zig_target() {
  case "$1" in
    mips-unknown-linux-musl)        echo "mips-linux-musleabi -mcpu=mips32r2" ;;
    mipsel-unknown-linux-musl)      echo "mipsel-linux-musleabi -mcpu=mips32r2" ;;
    armv7-unknown-linux-musleabihf) echo "arm-linux-musleabihf -mcpu=generic+v7a+vfp3d16" ;;
    aarch64-unknown-linux-musl)     echo "aarch64-linux-musl" ;;
    x86_64-unknown-linux-musl)      echo "x86_64-linux-musl" ;;
    *) return 1 ;;
  esac
}

qemu_for() {
  case "$1" in
    mips-unknown-linux-musl)        echo qemu-mips-static ;;
    mipsel-unknown-linux-musl)      echo qemu-mipsel-static ;;
    armv7-unknown-linux-musleabihf) echo qemu-arm-static ;;
    aarch64-unknown-linux-musl)     echo qemu-aarch64-static ;;
    x86_64-unknown-linux-musl)      echo "" ;;
    *) return 1 ;;
  esac
}

# CARGO_TARGET_<TRIPLE>_... variable prefix
env_prefix() { echo "CARGO_TARGET_$(echo "$1" | tr 'a-z.-' 'A-Z__')"; }

have_bookworm_security() {
  grep -rqs -- 'bookworm-security' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

rust_ok() {
  [ -x "$RUSTC_BIN" ] && [ -x "$CARGO_BIN" ] || return 1
  local minor
  minor=$("$RUSTC_BIN" --version | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
  [ -n "$minor" ] && [ "$minor" -ge "$MIN_RUST_MINOR" ] || return 1
  [ -f "$("$RUSTC_BIN" --print sysroot)/lib/rustlib/src/rust/library/Cargo.lock" ]
}

apt_updated=0
apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to apt-get install $*"
  if [ $apt_updated = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

ensure_rust() {
  rust_ok && return 0
  if ! have_bookworm_security; then
    log "adding bookworm-security to apt sources"
    cat > /etc/apt/sources.list.d/dcol-bookworm-security.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_updated=0
  fi
  log "installing rustc-web cargo-web rust-web-src (Debian)"
  apt_install rustc-web cargo-web rust-web-src
  rust_ok || die "$RUSTC_BIN is missing, older than 1.$MIN_RUST_MINOR or has no rust-src"
}

ensure_tools() {   # small Debian tools the scripts use
  local missing=()
  command -v file >/dev/null || missing+=(file)
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  [ ${#missing[@]} = 0 ] || apt_install "${missing[@]}"
}

# MIPS only: lld's --strip-all (profile strip = true) keeps .pdr, LLVM's MIPS
# procedure descriptors: ~105 KB that nothing reads at run time. Debian's MIPS
# binutils remove it after the link (OpenWrt's own strip does the same).
ensure_mips_objcopy() {
  command -v mips-linux-gnu-objcopy >/dev/null && return 0
  log "installing binutils-mips-linux-gnu (Debian) for objcopy -R .pdr"
  apt_install binutils-mips-linux-gnu
}

strip_pdr() {  # strip_pdr BINARY — in place, only if it has a .pdr section
  local bin=$1
  mips-linux-gnu-readelf -S "$bin" | grep -q ' \.pdr ' || return 0
  mips-linux-gnu-objcopy -R .pdr "$bin" "$bin.nopdr"
  touch -r "$bin" "$bin.nopdr"     # keep cargo's freshness check happy
  mv "$bin.nopdr" "$bin"
}

ensure_qemu() {
  command -v qemu-mips-static >/dev/null && command -v qemu-aarch64-static >/dev/null && return 0
  log "installing qemu-user-static (Debian)"
  apt_install qemu-user-static
}

ZIG_PY=
ensure_zig() {
  # Prefer an existing venv, then a system-wide ziglang, else make the venv.
  if [ -x "$VENV/bin/python3" ] && "$VENV/bin/python3" -m ziglang version >/dev/null 2>&1; then
    ZIG_PY="$VENV/bin/python3"
  elif python3 -m ziglang version >/dev/null 2>&1; then
    ZIG_PY=$(command -v python3)
  else
    log "installing ziglang==$ZIGLANG_VERSION (PyPI) into $VENV"
    mkdir -p "$PREFIX"
    python3 -m venv "$VENV"
    "$VENV/bin/python3" -m pip install -q --disable-pip-version-check "ziglang==$ZIGLANG_VERSION"
    ZIG_PY="$VENV/bin/python3"
  fi
  log "zig $("$ZIG_PY" -m ziglang version) via $ZIG_PY"
}

# Write target/cross-bin/zigcc-TRIPLE: the linker rustc calls.
WRAP_DIR="$TARGET_DIR/cross-bin"
make_wrapper() {
  local triple=$1 zt w
  zt=$(zig_target "$triple") || die "unknown target $triple"
  mkdir -p "$WRAP_DIR"
  w="$WRAP_DIR/zigcc-$triple"
  cat > "$w.tmp" <<EOF
#!/bin/sh
# generated by cross/lib.sh: zig as C compiler/linker for $triple
exec "$ZIG_PY" -m ziglang cc -target $zt "\$@"
EOF
  chmod +x "$w.tmp" && mv "$w.tmp" "$w"
  echo "$w"
}

# Export the environment cargo needs to build for $1 with Debian's rustc.
setup_target_env() {
  local triple=$1 p w
  p=$(env_prefix "$triple")
  w=$(make_wrapper "$triple")
  export RUSTC="$RUSTC_BIN" RUSTC_BOOTSTRAP=1
  unset RUSTFLAGS RUSTC_WRAPPER CARGO_BUILD_TARGET 2>/dev/null || true
  export "${p}_LINKER=$w"
  # Static: crt-static; libc/crt objects come from zig (not rustc's
  # self-contained copies, which Debian does not ship for these targets);
  # zig also supplies libunwind, which std's unwind crate wants.
  export "${p}_RUSTFLAGS=-C target-feature=+crt-static -C link-self-contained=no ${DCOL_CROSS_EXTRA_RUSTFLAGS:-}"
  # zig cc as the C compiler in case a build script compiles C (cc crate).
  export "CC_$(echo "$triple" | tr '.-' '__')=$w"
  export "AR_$(echo "$triple" | tr '.-' '__')=$WRAP_DIR/zigar"
  printf '#!/bin/sh\nexec "%s" -m ziglang ar "$@"\n' "$ZIG_PY" > "$WRAP_DIR/zigar"
  chmod +x "$WRAP_DIR/zigar"
}

# std built for size (issue 15): -310,732 bytes on MIPS (3,878,008 ->
# 3,567,276 measured 2026-12-06); the signature checks keep opt-level 3 (the
# workspace profile), so the waypoint's per-request cost does not change.
BUILD_STD=(-Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size)

human_size() {  # bytes -> "N bytes (N KB, N.NN MB)"
  local b=$1
  awk -v b="$b" 'BEGIN { printf "%d bytes (%.0f KB, %.2f MB)", b, b/1024, b/1048576 }'
}
