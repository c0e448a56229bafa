# Shared by scripts/image.sh and scripts/container-test.sh: install buildah,
# podman and runc when missing, and the settings they need here (root, no
# Docker daemon): vfs storage, chroot isolation for builds, runc with the
# cgroupfs manager, and no default ulimits (crun's setrlimit is refused on
# these machines).

BUILDAH_OPTS=(--storage-driver vfs)
PODMAN_OPTS=(--storage-driver vfs --runtime runc --cgroup-manager cgroupfs)

containers_setup() {
    local -a pkgs=()
    command -v buildah >/dev/null || pkgs+=(buildah)
    command -v podman >/dev/null || pkgs+=(podman)
    command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || pkgs+=(runc)
    if ((${#pkgs[@]})); then
        ((EUID == 0)) || { echo "containers: missing Debian packages: ${pkgs[*]}; install them as root" >&2; exit 1; }
        echo "containers: apt-get install ${pkgs[*]}" >&2
        if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt-get update -qq >&2; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${pkgs[@]}" >&2
    fi
    local conf=/etc/containers/containers.conf
    if ! grep -qs '^default_ulimits' "$conf"; then
        ((EUID == 0)) || { echo "containers: $conf needs default_ulimits = [] (as root)" >&2; exit 1; }
        mkdir -p /etc/containers
        if grep -qs '^\[containers\]' "$conf"; then
            sed -i '/^\[containers\]/a default_ulimits = []' "$conf"
        else
            printf '[containers]\ndefault_ulimits = []\n' >>"$conf"
        fi
    fi
}
