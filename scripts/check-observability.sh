#!/usr/bin/env bash
# Checks the Grafana dashboards, the Prometheus alert rules and their unit
# tests against a live bridge, sink and run (docs/observability.md).
# Runs on a fresh Debian machine as root without input: installs promtool and
# prometheus (Debian `prometheus`, its own service left stopped), amtool and
# alertmanager (Debian `prometheus-alertmanager`, likewise), PyYAML into
# a cached dir, the test services (scripts/services.sh), and builds
# target/release/iotpipe unless IOTPIPE_BIN names a binary.
# Usage: scripts/check-observability.sh [--static] [--no-self-test] [--keep] [--load-seconds N]
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

say() { printf 'check-observability: %s\n' "$*" >&2; }
start=$(date +%s)
apt_updated=0
apt_install() {
    if ((apt_updated == 0)); then
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        apt_updated=1
    fi
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- promtool and prometheus (Debian package) ------------------------------
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    say "installing the Debian package prometheus (promtool and the server)"
    # Keep the package's own service from starting: we run a private server.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt_install prometheus
    ((made_policy == 0)) || rm -f "$policy"
fi
# A service the package may have started anyway: stop and disable it (it is
# not ours to run; the check starts a private server on a free port).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    say "stopping and disabling the system prometheus service"
    systemctl disable --now prometheus >/dev/null 2>&1 || true
elif [[ -x /etc/init.d/prometheus ]] && service prometheus status >/dev/null 2>&1; then
    say "stopping and disabling the system prometheus service"
    service prometheus stop >/dev/null 2>&1 || true
    update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

# --- amtool and alertmanager (Debian prometheus-alertmanager): the inhibition rules ---
if ! command -v amtool >/dev/null 2>&1; then
    say "installing the Debian package prometheus-alertmanager (amtool, a private alertmanager)"
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt_install prometheus-alertmanager ||
        say "could not install prometheus-alertmanager; the Alertmanager checks are skipped"
    ((made_policy == 0)) || rm -f "$policy"
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus-alertmanager 2>/dev/null; then
    say "stopping and disabling the system prometheus-alertmanager service"
    systemctl disable --now prometheus-alertmanager >/dev/null 2>&1 || true
fi

# --- kubectl, to render deploy/grafana/kustomization.yaml (Debian kubernetes-client) ---
if ! command -v kubectl >/dev/null 2>&1; then
    say "installing the Debian package kubernetes-client (kubectl kustomize)"
    apt_install kubernetes-client ||
        say "could not install kubernetes-client; the kustomize render is skipped"
fi

# --- Python dependencies (PyYAML) in a cached dir ---------------------------
if ! command -v python3 >/dev/null 2>&1; then
    say "installing python3"
    apt_install python3
fi
state=${IOTPIPE_SERVICES_DIR:-$PWD/.services}
pydir=$state/tools/observability-python
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    if ! PYTHONPATH=$pydir python3 -c 'import yaml' >/dev/null 2>&1; then
        say "installing PyYAML into $pydir"
        python3 -m pip --version >/dev/null 2>&1 ||
            apt_install python3-pip || true
        python3 -m pip install -q --disable-pip-version-check --target "$pydir" 'PyYAML==6.0.3' ||
            apt_install python3-yaml
    fi
    export PYTHONPATH=$pydir${PYTHONPATH:+:$PYTHONPATH}
fi

# --- the iotpipe binary -------------------------------------------------------
if [[ " $* " != *" --static "* ]]; then
    if [[ -n ${IOTPIPE_BIN:-} ]]; then
        [[ -x $IOTPIPE_BIN ]] || { say "IOTPIPE_BIN=$IOTPIPE_BIN is not an executable"; exit 1; }
        # The processes run in scratch directories: make the path absolute.
        IOTPIPE_BIN=$(realpath "$IOTPIPE_BIN")
        export IOTPIPE_BIN
    else
        say "building target/release/iotpipe (IOTPIPE_BIN=path skips this)"
        cargo build --release --locked --quiet --bin iotpipe
    fi
fi

status=0
python3 scripts/check_observability.py "$@" || status=$?
say "took $(($(date +%s) - start)) s"
exit $status
