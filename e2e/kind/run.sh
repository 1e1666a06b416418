#!/usr/bin/env bash
# The scenario suite on a real cluster: creates a kind cluster (unless one
# named $KIND_CLUSTER exists), builds the mesh-control, mesh-proxy and
# mesh-echo images and loads them into it, runs `meshctl install`, labels
# namespace default for injection, deploys e2e/manifests and waits for
# every pod, then runs the same scenario code as the local backend with
# E2E_BACKEND=kind. Needs docker, kind, kubectl and cargo.
#
#   KIND_CLUSTER   cluster name (default mesh-e2e)
#   KEEP_CLUSTER=1 leave the cluster up afterwards (default: delete it if
#                  this script created it)
#   E2E_SCENARIOS  comma-separated subset of scenarios
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cluster="${KIND_CLUSTER:-mesh-e2e}"
hub="ghcr.io/mesh-rs"
tag="dev"
client_image="curlimages/curl:8.10.1"

for tool in docker kind kubectl cargo; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 2; }
done

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

created=0
if ! kind get clusters | grep -qx "$cluster"; then
  step "creating kind cluster $cluster"
  kind create cluster --name "$cluster" --wait 180s
  created=1
fi
cleanup() {
  if [[ "$created" == 1 && "${KEEP_CLUSTER:-0}" != 1 ]]; then
    kind delete cluster --name "$cluster"
  fi
}
trap cleanup EXIT
kubectl config use-context "kind-$cluster" >/dev/null

step "building images"
docker build -f deploy/docker/mesh-control.Dockerfile -t "$hub/mesh-control:$tag" .
docker build -f deploy/docker/mesh-proxy.Dockerfile -t "$hub/mesh-proxy:$tag" .
docker build -f e2e/kind/mesh-echo.Dockerfile -t "$hub/mesh-echo:$tag" .
docker pull "$client_image"

step "loading images into $cluster"
for image in "$hub/mesh-control:$tag" "$hub/mesh-proxy:$tag" "$hub/mesh-echo:$tag" "$client_image"; do
  kind load docker-image --name "$cluster" "$image"
done

step "building meshctl and the scenario suite"
cargo build --locked --bins
cargo test --locked -p e2e --test scenarios --no-run

step "meshctl install"
./target/debug/meshctl precheck
./target/debug/meshctl install --set "hub=$hub" --set "tag=$tag" --timeout 5m

step "deploying the sample app"
kubectl label namespace default istio-injection=enabled --overwrite
kubectl apply -f e2e/manifests/app.yaml
kubectl -n default wait --for=condition=Ready pods --all --timeout=300s
# Every pod but `outside` runs the injected proxy.
kubectl -n default get pods -o custom-columns='NAME:.metadata.name,CONTAINERS:.spec.containers[*].name,INIT:.spec.initContainers[*].name'

step "scenarios"
E2E_BACKEND=kind cargo test --locked -p e2e --test scenarios -- --nocapture

if command -v helm >/dev/null; then
  step "helm chart renders what meshctl installs"
  MESHCTL="$root/target/debug/meshctl" bash e2e/kind/check-helm.sh
fi
