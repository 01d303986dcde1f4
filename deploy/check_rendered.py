#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests (kubectl kustomize output) beyond the schemas.

  check_rendered.py RENDERED.yaml...

- every pod (Deployment, CronJob, Job, ...) meets the restricted Pod Security Standard, plus
  this project's own rules: a read-only root filesystem, no service-account token, a pinned
  image pulled IfNotPresent, a memory limit, and the three probes on a daemon;
- no Secret carries a placeholder value (the applied set must never overwrite a real one);
- the Prometheus Operator resources, which the Kubernetes schemas do not cover, have their
  required fields and expressions that parse as PromQL; every alert names a runbook row that README.md has, and the ServiceMonitor
  selects a rendered Service by a port it has;
- the pod spec agrees with config.toml: the termination grace outlasts
  server.shutdown_grace_secs, the startup probe covers 10 min, JobsyncPullStale uses
  sync.max_staleness_secs.

Exit 1 with one line per problem; 0 and a summary otherwise.
"""

import base64
import re
import sys
import tomllib
from pathlib import Path

import yaml

try:
    import promql_parser  # PyPI promql-parser: deploy/check.sh installs it
except ImportError:
    promql_parser = None

README = Path(__file__).resolve().parent.parent / "README.md"

# Volume types the restricted profile allows.
ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}
PLACEHOLDERS = re.compile(
    r"replace[-_ ]?me|change[-_ ]?me|changeit|example|placeholder|dummy|todo|xxx|secret123|"
    r"<[^>]*>|^\s*$",
    re.IGNORECASE,
)
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
DAEMON_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def pod_specs(doc):
    """(pod spec, is a long-running daemon) of a workload, or nothing."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield spec, False
    elif kind in POD_TEMPLATE_KINDS:
        yield spec.get("template", {}).get("spec", {}), kind in DAEMON_KINDS
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {}), False


def effective(pod_sc, ctr_sc, key):
    """A container's setting, falling back to the pod's, as the kubelet applies them."""
    return ctr_sc.get(key, pod_sc.get(key))


def check_pod(where, pod, daemon):
    pod_sc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problem(where, f"{key} is set")
    if pod.get("automountServiceAccountToken") is not False:
        problem(where, "automountServiceAccountToken is not false (jobsync never calls the API server)")
    for volume in pod.get("volumes") or []:
        types = set(volume) - {"name"}
        if not types <= ALLOWED_VOLUMES:
            problem(where, f"volume {volume.get('name')} of type {sorted(types)} is not allowed")
    if pod_sc.get("runAsUser") == 0:
        problem(where, "pod runAsUser is 0")
    containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
    if not containers:
        problem(where, "no containers")
    for ctr in containers:
        check_container(f"{where} container {ctr.get('name')}", pod_sc, ctr, daemon)


def check_container(where, pod_sc, ctr, daemon):
    sc = ctr.get("securityContext") or {}
    if effective(pod_sc, sc, "runAsNonRoot") is not True:
        problem(where, "runAsNonRoot is not true")
    user = effective(pod_sc, sc, "runAsUser")
    if not isinstance(user, int) or user == 0:
        problem(where, f"runAsUser must be a non-zero UID, is {user!r}")
    seccomp = (effective(pod_sc, sc, "seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problem(where, f"seccompProfile.type must be RuntimeDefault or Localhost, is {seccomp!r}")
    if sc.get("allowPrivilegeEscalation") is not False:
        problem(where, "allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        problem(where, "privileged")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problem(where, "capabilities.drop does not include ALL")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        problem(where, f"capabilities.add {caps['add']} beyond NET_BIND_SERVICE")
    if sc.get("readOnlyRootFilesystem") is not True:
        problem(where, "readOnlyRootFilesystem is not true")
    for port in ctr.get("ports") or []:
        if "hostPort" in port:
            problem(where, "hostPort is set")
    image = ctr.get("image", "")
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if "@sha256:" not in image and (not tag or tag == "latest"):
        problem(where, f"image {image!r} is not pinned to a tag")
    if ctr.get("imagePullPolicy") != "IfNotPresent":
        problem(where, f"imagePullPolicy is {ctr.get('imagePullPolicy')!r}, not IfNotPresent")
    if not (ctr.get("resources") or {}).get("limits", {}).get("memory"):
        problem(where, "no memory limit")
    if not (ctr.get("resources") or {}).get("requests", {}).get("memory"):
        problem(where, "no memory request")
    if daemon:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe not in ctr:
                problem(where, f"no {probe}")


def check_secret(where, doc):
    values = dict(doc.get("stringData") or {})
    for key, value in (doc.get("data") or {}).items():
        try:
            values[key] = base64.b64decode(value).decode("utf-8", "replace")
        except ValueError:
            problem(where, f"data.{key} is not base64")
    for key, value in values.items():
        if PLACEHOLDERS.search(value):
            problem(where, f"{key} holds a placeholder value; Secrets are created by the operator")


def runbook_rows():
    """Alert names with a row in README's Runbook table ("| alert `Name` ...")."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Runbook", 1)[-1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| alert `(\w+)`", section, re.MULTILINE))


def check_prometheus_rule(where, doc, rows, config):
    groups = (doc.get("spec") or {}).get("groups") or []
    if not groups:
        problem(where, "spec.groups is empty")
    alerts = 0
    for group in groups:
        if not group.get("name"):
            problem(where, "a group has no name")
        for rule in group.get("rules") or []:
            name = rule.get("alert") or rule.get("record")
            if not name or not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                problem(where, f"rule {name!r} needs alert/record and an expr")
                continue
            if promql_parser is None:
                problem(where, "cannot parse PromQL: pip install promql-parser (deploy/check.sh does)")
            else:
                try:
                    promql_parser.parse(rule["expr"])
                except Exception as e:  # the binding raises a bare Exception on bad syntax
                    problem(where, f"rule {name}: the expr is not valid PromQL: {e}")
            if "alert" not in rule:
                continue
            alerts += 1
            rwhere = f"{where} alert {name}"
            if not re.fullmatch(r"\d+[smh]", str(rule.get("for", "0s"))):
                problem(rwhere, f"for: {rule.get('for')!r} is not a duration")
            if not (rule.get("labels") or {}).get("severity"):
                problem(rwhere, "no severity label")
            annotations = rule.get("annotations") or {}
            for key in ("summary", "description", "runbook"):
                if not annotations.get(key):
                    problem(rwhere, f"no {key} annotation")
            if name not in annotations.get("runbook", ""):
                problem(rwhere, "its runbook annotation does not name the alert")
            if name not in rows:
                problem(rwhere, "README.md's Runbook table has no row \"| alert `%s` ...\"" % name)
            staleness = config.get("sync", {}).get("max_staleness_secs")
            if name == "JobsyncPullStale" and staleness and f"> {staleness}" not in rule["expr"]:
                problem(rwhere, f"the threshold is not sync.max_staleness_secs ({staleness})")
    if not alerts:
        problem(where, "no alerts")


def check_service_monitor(where, doc, services):
    spec = doc.get("spec") or {}
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    endpoints = spec.get("endpoints") or []
    if not wanted or not endpoints:
        problem(where, "needs spec.selector.matchLabels and spec.endpoints")
        return
    matched = [s for s in services if wanted.items() <= (s["metadata"].get("labels") or {}).items()]
    if not matched:
        problem(where, f"selects no rendered Service ({wanted})")
    for endpoint in endpoints:
        port = endpoint.get("port")
        if not port:
            problem(where, "an endpoint has no port name")
        for service in matched:
            names = {p.get("name") for p in service["spec"].get("ports") or []}
            if port not in names:
                problem(where, f"port {port!r} is not a port of Service {service['metadata']['name']}")


def config_of(docs):
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and "config.toml" in (doc.get("data") or {}):
            return tomllib.loads(doc["data"]["config.toml"])
    return {}


def check_against_config(where, pod, config):
    grace = pod.get("terminationGracePeriodSeconds", 30)
    shutdown = config.get("server", {}).get("shutdown_grace_secs", 25)
    if grace < shutdown + 5:
        problem(where, f"terminationGracePeriodSeconds {grace} leaves no margin over server.shutdown_grace_secs {shutdown}")
    for ctr in pod.get("containers") or []:
        startup = ctr.get("startupProbe")
        if startup and startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 600:
            problem(where, "the startup probe allows less than 10 min for migrations")


def check_file(path, rows):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    config = config_of(docs)
    services = [d for d in docs if d.get("kind") == "Service"]
    counts = {}
    for doc in docs:
        kind = doc.get("kind")
        counts[kind] = counts.get(kind, 0) + 1
        where = f"{Path(path).stem}: {kind}/{(doc.get('metadata') or {}).get('name')}"
        for pod, daemon in pod_specs(doc):
            check_pod(where, pod, daemon)
            check_against_config(where, pod, config)
        if kind == "Secret":
            check_secret(where, doc)
        elif kind == "PrometheusRule":
            check_prometheus_rule(where, doc, rows, config)
        elif kind == "ServiceMonitor":
            check_service_monitor(where, doc, services)
    if not any(True for d in docs for _ in pod_specs(d)):
        problem(Path(path).stem, "renders no workload")
    return counts


def main(paths):
    if not paths:
        sys.exit(__doc__)
    rows = runbook_rows()
    for path in paths:
        counts = check_file(path, rows)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(f"{Path(path).stem}: {summary}")
    if problems:
        sys.stdout.flush()
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"checked {len(paths)} rendered sets: restricted pods, no placeholder Secrets, alerts that parse and have runbooks")


if __name__ == "__main__":
    main(sys.argv[1:])
