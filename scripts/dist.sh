#!/usr/bin/env bash
# Build the static binaries and the root files the Containerfile copies:
#   dist/<arch>/iotpipe   release build for <arch>-unknown-linux-musl
#   dist/rootfs/          /etc/passwd, /etc/group, the CA bundle, /tmp
#
# Usage: scripts/dist.sh [--arch amd64[,arm64]]        (default: amd64)
#
# amd64 builds with Debian's musl-tools (installed when missing). arm64 needs
# a C cross compiler for aarch64 musl (set CC_aarch64_unknown_linux_musl,
# e.g. to aarch64-linux-musl-gcc, and the matching linker in
# CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER); it is not built or tested
# on the project's machines (docs/container.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHES=amd64
while (($#)); do
    case $1 in
    --arch) ARCHES=$2; shift 2 ;;
    *) echo "dist.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

apt_missing() {
    local -a pkgs=()
    command -v musl-gcc >/dev/null || pkgs+=(musl-tools)
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || pkgs+=(ca-certificates)
    command -v perl >/dev/null || pkgs+=(perl)   # the vendored OpenSSL's build
    command -v make >/dev/null || pkgs+=(make)
    ((${#pkgs[@]} == 0)) && return 0
    ((EUID == 0)) || { echo "dist.sh: missing Debian packages: ${pkgs[*]}" >&2; exit 1; }
    echo "dist.sh: apt-get install ${pkgs[*]}" >&2
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt-get update -qq >&2; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${pkgs[@]}" >&2
}
apt_missing

for arch in ${ARCHES//,/ }; do
    case $arch in
    amd64) target=x86_64-unknown-linux-musl ;;
    arm64) target=aarch64-unknown-linux-musl ;;
    *) echo "dist.sh: unknown arch $arch (amd64, arm64)" >&2; exit 2 ;;
    esac
    rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target" >&2
    echo "dist.sh: cargo build --release --target $target" >&2
    cargo build --release --locked --target "$target" --bin iotpipe >&2
    mkdir -p "dist/$arch"
    install -m 0755 "target/$target/release/iotpipe" "dist/$arch/iotpipe"
done

root=dist/rootfs
rm -rf "$root"
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
echo "dist.sh: dist/ ready ($ARCHES)" >&2
