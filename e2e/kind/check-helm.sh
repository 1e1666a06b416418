#!/usr/bin/env bash
# Renders deploy/charts/mesh with helm and compares it, object by object,
# with `meshctl manifest generate` for the same profile and values: the
# chart and the CLI must install the same cluster. Run by the kind workflow
# (which has helm); needs helm 3.8+ or 4, python3 with PyYAML, and meshctl
# (built here unless MESHCTL points at one).
#
# Normalisation: documents are matched by (apiVersion, kind, namespace,
# name); field order, numeric spelling (1 vs 1.0) and the YAML text of the
# `mesh` key of ConfigMap istio are ignored (it is compared parsed).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
chart="$root/deploy/charts/mesh"
meshctl="${MESHCTL:-}"
if [[ -z "$meshctl" ]]; then
  cargo build --quiet -p meshctl --manifest-path "$root/Cargo.toml"
  meshctl="$root/target/debug/meshctl"
fi
command -v helm >/dev/null || { echo "check-helm: helm is not installed" >&2; exit 2; }
python3 -c 'import yaml' 2>/dev/null || { echo "check-helm: python3 needs PyYAML (pip install pyyaml)" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

normalise() {
  python3 - "$1" <<'PY'
import json, sys, yaml

def norm(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, list):
        return [norm(x) for x in v]
    return {k: norm(x) for k, x in v.items()}

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
out = []
for d in docs:
    if d.get("kind") == "ConfigMap" and "mesh" in (d.get("data") or {}):
        d["data"]["mesh"] = yaml.safe_load(d["data"]["mesh"]) or {}
    m = d.get("metadata", {})
    key = (d.get("apiVersion"), d.get("kind"), m.get("namespace") or "", m.get("name"))
    out.append((key, norm(d)))
out.sort(key=lambda kv: kv[0])
for key, d in out:
    print("### " + " ".join(key))
    print(json.dumps(d, indent=1, sort_keys=True))
PY
}

# name | meshctl flags | helm flags
cases=(
  "default||"
  "minimal|--profile minimal|-f $chart/profiles/minimal.yaml"
  "demo|--profile demo|-f $chart/profiles/demo.yaml"
  "canary|--revision canary --set values.pilot.autoscaleEnabled=false --set values.pilot.replicaCount=2|--set revision=canary --set values.pilot.autoscaleEnabled=false --set values.pilot.replicaCount=2"
)
failed=0
for case in "${cases[@]}"; do
  IFS='|' read -r name mflags hflags <<<"$case"
  # shellcheck disable=SC2086
  "$meshctl" manifest generate $mflags >"$tmp/$name.meshctl.yaml"
  # shellcheck disable=SC2086
  helm template mesh "$chart" --namespace istio-system --include-crds $hflags >"$tmp/$name.helm.yaml"
  normalise "$tmp/$name.meshctl.yaml" >"$tmp/$name.meshctl.json"
  normalise "$tmp/$name.helm.yaml" >"$tmp/$name.helm.json"
  if diff -u "$tmp/$name.meshctl.json" "$tmp/$name.helm.json" >"$tmp/$name.diff"; then
    echo "check-helm: $name: chart and meshctl agree ($(grep -c '^###' "$tmp/$name.meshctl.json") objects)"
  else
    echo "check-helm: $name: chart and meshctl differ (- meshctl, + helm):" >&2
    cat "$tmp/$name.diff" >&2
    failed=1
  fi
done
exit "$failed"
