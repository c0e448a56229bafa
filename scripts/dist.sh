#!/usr/bin/env bash
# Build the static binaries and the root files the Containerfile copies:
#   dist/<arch>/iotpipe   release build for <arch>-unknown-linux-musl
#   dist/rootfs/          /etc/passwd, /etc/group, the CA bundle, /tmp
#
# Usage: scripts/dist.sh [--arch amd64[,arm64]]        (default: amd64)
#
# amd64 builds with Debian's musl-tools (installed when missing), in target/
# (or IOTPIPE_DIST_TARGET_DIR: scripts/test.sh builds it in target/dist while
# its own cargo runs use target/).
#
# arm64 is cross-built with cargo-zigbuild, Zig being the C compiler, the
# archiver and the linker for aarch64-unknown-linux-musl (Zig ships musl's
# sources for aarch64). Both come from PyPI, pinned below, installed into a
# virtualenv under ~/.cache/iotpipe on first use. The build has its own target
# directory (target/cross, or IOTPIPE_CROSS_TARGET_DIR), so it neither waits for
# nor rebuilds what other cargo runs in target/ do. 8-12 minutes from
# scratch on a 2-core machine (docs/container.md).
#
# librdkafka's own ./configure reads CC, CXX and AR, not cargo's per-target
# variables, so CC/CXX/AR are set to small scripts that call the compilers
# cargo-zigbuild sets for the target (CC_aarch64_unknown_linux_musl etc.); the
# C code compiled for the build machine keeps the host's cc (HOST_CC).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHES=amd64
while (($#)); do
    case $1 in
    --arch) ARCHES=$2; shift 2 ;;
    *) echo "dist.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

ZIGLANG_VERSION=0.15.2
CARGO_ZIGBUILD_VERSION=0.24.1
CROSS_TARGET_DIR=${IOTPIPE_CROSS_TARGET_DIR:-target/cross}
DIST_TARGET_DIR=${IOTPIPE_DIST_TARGET_DIR:-target}

apt_install() {
    ((EUID == 0)) || { echo "dist.sh: missing Debian packages: $*" >&2; exit 1; }
    echo "dist.sh: apt-get install $*" >&2
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt-get update -qq >&2; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "$@" >&2
}

apt_missing() {
    local -a pkgs=()
    command -v musl-gcc >/dev/null || pkgs+=(musl-tools)
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || pkgs+=(ca-certificates)
    command -v perl >/dev/null || pkgs+=(perl)   # the vendored OpenSSL's build
    command -v make >/dev/null || pkgs+=(make)
    command -v cc >/dev/null || pkgs+=(gcc)     # build scripts' C for the build machine
    ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
}
apt_missing

# Zig and cargo-zigbuild in a virtualenv of their own; sets ZIG_VENV.
zig_setup() {
    ZIG_VENV=${IOTPIPE_ZIG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/iotpipe/zig-$ZIGLANG_VERSION-zigbuild-$CARGO_ZIGBUILD_VERSION}
    if ! { [[ -x $ZIG_VENV/bin/cargo-zigbuild ]] && "$ZIG_VENV/bin/python" -m ziglang version >/dev/null 2>&1; }; then
        command -v python3 >/dev/null || apt_install python3 python3-venv
        rm -rf "$ZIG_VENV"
        if ! python3 -m venv "$ZIG_VENV" >/dev/null 2>&1; then
            rm -rf "$ZIG_VENV"   # Debian's python3 without ensurepip
            apt_install python3-venv
            python3 -m venv "$ZIG_VENV" >&2
        fi
        echo "dist.sh: pip install ziglang==$ZIGLANG_VERSION cargo-zigbuild==$CARGO_ZIGBUILD_VERSION into $ZIG_VENV" >&2
        "$ZIG_VENV/bin/pip" install -q --disable-pip-version-check \
            "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" >&2
    fi
    # CC/CXX/AR for librdkafka's ./configure and make. lld refuses the
    # version script of librdkafka.so (built next to the librdkafka.a that is
    # linked in) for naming a symbol the build leaves out: --undefined-version.
    local w=$ZIG_VENV/iotpipe-bin tool var
    mkdir -p "$w"
    for tool in cc c++ ar; do
        case $tool in
        cc) var=CC_aarch64_unknown_linux_musl ;;
        c++) var=CXX_aarch64_unknown_linux_musl ;;
        ar) var=AR_aarch64_unknown_linux_musl ;;
        esac
        cat >"$w/aarch64-$tool" <<WRAPPER
#!/bin/sh
# Written by scripts/dist.sh: \$$var is set by cargo zigbuild.
: "\${$var:?not set: run under cargo zigbuild}"
case " \$* " in
*" -shared "*) exec \$$var "\$@" -Wl,--undefined-version ;;
esac
exec \$$var "\$@"
WRAPPER
        chmod 0755 "$w/aarch64-$tool"
    done
}

# The ELF machine of a binary: 3e00 x86-64, b700 aarch64.
elf_machine() { od -An -tx1 -j18 -N2 "$1" | tr -d ' \n'; }

for arch in ${ARCHES//,/ }; do
    case $arch in
    amd64) target=x86_64-unknown-linux-musl machine=3e00 ;;
    arm64) target=aarch64-unknown-linux-musl machine=b700 ;;
    *) echo "dist.sh: unknown arch $arch (amd64, arm64)" >&2; exit 2 ;;
    esac
    rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target" >&2
    start=$SECONDS
    if [[ $arch == amd64 ]]; then
        echo "dist.sh: cargo build --release --target $target (target dir $DIST_TARGET_DIR)" >&2
        CARGO_TARGET_DIR=$DIST_TARGET_DIR cargo build --release --locked --target "$target" --bin iotpipe >&2
        bin=$DIST_TARGET_DIR/$target/release/iotpipe
    else
        zig_setup
        echo "dist.sh: cargo zigbuild --release --target $target (target dir $CROSS_TARGET_DIR)" >&2
        PATH="$ZIG_VENV/bin:$PATH" CARGO_TARGET_DIR=$CROSS_TARGET_DIR \
            CC="$ZIG_VENV/iotpipe-bin/aarch64-cc" CXX="$ZIG_VENV/iotpipe-bin/aarch64-c++" AR="$ZIG_VENV/iotpipe-bin/aarch64-ar" \
            HOST_CC=cc HOST_CXX=c++ HOST_AR=ar \
            cargo zigbuild --release --locked --target "$target" --bin iotpipe >&2
        bin=$CROSS_TARGET_DIR/$target/release/iotpipe
    fi
    [[ $(elf_machine "$bin") == "$machine" ]] || { echo "dist.sh: $bin is not an $arch binary" >&2; exit 1; }
    # musl's default thread stack (librdkafka's threads) comes from PT_GNU_STACK (build.rs).
    stack=$(readelf -lW "$bin" | awk '$1 == "GNU_STACK" { print $6 }')
    ((${stack:-0} >= 8388608)) || { echo "dist.sh: $bin: PT_GNU_STACK size ${stack:-missing}, not 8 MiB (build.rs)" >&2; exit 1; }
    mkdir -p "dist/$arch"
    install -m 0755 "$bin" "dist/$arch/iotpipe"
    echo "dist.sh: dist/$arch/iotpipe ($(stat -c %s "dist/$arch/iotpipe") bytes) in $((SECONDS - start)) s" >&2
done

root=dist/rootfs
rm -rf "$root"
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
echo "dist.sh: dist/ ready ($ARCHES)" >&2
