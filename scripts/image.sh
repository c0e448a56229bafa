#!/usr/bin/env bash
# Build the container image into podman's local storage (vfs driver) as
# localhost/iotpipe:latest and localhost/iotpipe:<version>, with Debian's
# buildah (installed when missing), from the Containerfile and the static
# binary of scripts/dist.sh. Prints the image's size.
#
# Usage: scripts/image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/containers.sh
. scripts/lib/containers.sh
containers_setup
bash scripts/dist.sh --arch amd64
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "image.sh: buildah bud -> localhost/iotpipe:$version" >&2
buildah "${BUILDAH_OPTS[@]}" bud --isolation chroot --layers=false \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg TARGETARCH=amd64 \
    -t localhost/iotpipe:latest -t "localhost/iotpipe:$version" -f Containerfile . >&2
podman "${PODMAN_OPTS[@]}" image inspect localhost/iotpipe:latest --format 'localhost/iotpipe:latest {{.Size}} bytes'
