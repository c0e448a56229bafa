#!/usr/bin/env bash
# Build the container image for linux/amd64 and linux/arm64 into podman's
# local storage (vfs driver), with Debian's buildah (installed when missing),
# from the Containerfile and the static binaries of scripts/dist.sh:
#
#   localhost/iotpipe:latest, localhost/iotpipe:<version>
#       manifest lists with one image per architecture; `podman run` of
#       either name runs the machine's own architecture
#   localhost/iotpipe:latest-<arch>, localhost/iotpipe:<version>-<arch>
#       the image of one architecture (amd64, arm64)
#
# Prints each image's size. The arm64 binary is cross-built (cargo-zigbuild,
# 8-12 minutes from scratch on 2 cores; docs/container.md).
#
# Usage: scripts/image.sh        (IOTPIPE_IMAGE_ARCHES=amd64 for amd64 only)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/containers.sh
. scripts/lib/containers.sh
containers_setup
ARCHES=${IOTPIPE_IMAGE_ARCHES:-amd64,arm64}
bash scripts/dist.sh --arch "$ARCHES"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
lists=(localhost/iotpipe:latest "localhost/iotpipe:$version")

# The previous build's lists and images go first (vfs keeps a full copy of
# each image). `buildah rmi` of a list's name would remove the image it
# resolves to, so lists are removed with `manifest rm`; what is left under
# those names is a single-architecture image from before the lists.
for name in "${lists[@]}"; do
    buildah "${BUILDAH_OPTS[@]}" manifest rm "$name" >/dev/null 2>&1 || true
    buildah "${BUILDAH_OPTS[@]}" rmi "$name" >/dev/null 2>&1 || true
done

for arch in ${ARCHES//,/ }; do
    echo "image.sh: buildah bud --platform linux/$arch -> localhost/iotpipe:$version-$arch" >&2
    buildah "${BUILDAH_OPTS[@]}" rmi "localhost/iotpipe:latest-$arch" "localhost/iotpipe:$version-$arch" >/dev/null 2>&1 || true
    buildah "${BUILDAH_OPTS[@]}" bud --isolation chroot --layers=false --platform "linux/$arch" \
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "TARGETARCH=$arch" \
        -t "localhost/iotpipe:latest-$arch" -t "localhost/iotpipe:$version-$arch" -f Containerfile . >&2
done

for name in "${lists[@]}"; do
    echo "image.sh: buildah manifest create $name ($ARCHES)" >&2
    buildah "${BUILDAH_OPTS[@]}" manifest create "$name" >/dev/null
    for arch in ${ARCHES//,/ }; do
        buildah "${BUILDAH_OPTS[@]}" manifest add "$name" "containers-storage:localhost/iotpipe:latest-$arch" >/dev/null
    done
done

for arch in ${ARCHES//,/ }; do
    podman "${PODMAN_OPTS[@]}" image inspect "localhost/iotpipe:latest-$arch" \
        --format "localhost/iotpipe:latest {{.Os}}/{{.Architecture}} {{.Size}} bytes"
done
