#!/usr/bin/env bash
# The main job: the whole mesh on this machine with no cluster. Builds the
# binaries, starts mesh-control and three pods (reviews v1 and v2, a
# client), each a network namespace with its app and a mesh-proxy sidecar
# behind iptables capture, then shifts traffic between the versions by
# editing the VirtualService while requests flow. Needs root on Linux.
# The mesh keeps running afterwards (in CI, where CI is set, it is removed).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
if [ "$(id -u)" != 0 ]; then
    echo "the local mesh creates network namespaces and iptables rules: run this as root (sudo -E bash $0)" >&2
    exit 1
fi
. "$root/e2e/deps.sh"
ensure_network_tools

echo "== building the mesh binaries"
cargo build -q --locked --bins
meshctl="$root/target/debug/meshctl"

# A copy of the sample, so the demo (and you) can edit it freely.
config="${MESH_DEMO_DIR:-/tmp/mesh-demo}"
rm -rf "$config"
cp -r "$root/samples/traffic-shifting" "$config"
rm -f "$config/demo.sh"

"$meshctl" local down >/dev/null 2>&1 || true
echo "== meshctl local up $config"
"$meshctl" local up "$config"

tally() {
    echo "== $1: 200 requests from the client pod to http://reviews:9080/"
    # shellcheck disable=SC2016 # expanded by the pod's shell, not this one
    "$meshctl" local exec client -- sh -c 'for i in $(seq 200); do curl -s http://reviews:9080/; done' \
        | grep -o '"version": "v[0-9]*"' | sort | uniq -c
}
weights() {
    sed -i -e "/subset: v1/{n;s/weight: [0-9]*/weight: $1/}" -e "/subset: v2/{n;s/weight: [0-9]*/weight: $2/}" "$config/routing.yaml"
    # mesh-control notices the edit, debounces it and pushes it (about a second).
    sleep 2
}

tally "VirtualService reviews: 90 % v1, 10 % v2"
weights 50 50
tally "edited to 50/50"
weights 0 100
tally "edited to 0/100 (v1 drained)"

if [ -n "${CI:-}" ]; then
    "$meshctl" local down
else
    echo
    echo "The mesh is still running. Edit $config/routing.yaml and rerun:"
    echo "  $meshctl local exec client -- curl -s http://reviews:9080/"
    echo "  $meshctl local status"
    echo "  $meshctl local down"
fi
