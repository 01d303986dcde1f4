#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests (kubectl kustomize output) beyond the schemas.

  check_rendered.py RENDERED.yaml...

- every pod (Deployment, CronJob, Job, ...) meets the restricted Pod Security Standard, plus
  this project's own rules: a read-only root filesystem, no service-account token, a pinned
  image pulled IfNotPresent, a memory limit, and the three probes on a daemon;
- no Secret carries a placeholder value (the applied set must never overwrite a real one);
- the Prometheus Operator resources, which the Kubernetes schemas do not cover, have their
  required fields and expressions that parse as PromQL; every alert's runbook_url points at its own section
  of docs/operations.md (an anchor one of its headings has), and the ServiceMonitor
  selects a rendered Service by a port it has;
- the pod spec agrees with config.toml: the termination grace outlasts
  server.shutdown_grace_secs, the startup probe covers 10 min, JobsyncPullStale uses
  sync.max_staleness_secs, and server.listen's port is the daemon's `http` containerPort, which
  the probes and the Service name;
- every namespaced object carries `namespace:` (namespace.yaml's name);
- every podFailurePolicy onPodConditions entry has a `status` (older API servers require it);
- NetworkPolicies select every pod and allow exactly: ingress on the listen port from the
  monitoring namespace; egress to DNS, to the Jobs API and, for a pod that mounts the PostgreSQL
  URL, to PostgreSQL, with the values of components/network-policy/settings.yaml;
- a replicated Deployment's minReadySeconds outlasts its readiness probe's detection time;
- the image has one version source: only base/kustomization.yaml has `images:`, and every
  rendered jobsync container runs the image it names.

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

DEPLOY = Path(__file__).resolve().parent
OPERATIONS = DEPLOY.parent / "docs" / "operations.md"
K8S = DEPLOY / "kubernetes"
IMAGE_SOURCE = K8S / "base" / "kustomization.yaml"
NETWORK_SETTINGS = K8S / "components" / "network-policy" / "settings.yaml"
# The Secret volume holding the PostgreSQL URL: a pod that mounts it talks to PostgreSQL.
DATABASE_SECRET = "jobsync-database"

# Kinds without a namespace (the ones a kustomization might plausibly render).
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "RuntimeClass", "IngressClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "APIService",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "CSIDriver",
}
POD_CONDITION_STATUSES = {"True", "False", "Unknown"}

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


def pod_templates(doc):
    """(pod template metadata, pod spec) of a workload, or nothing."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield doc.get("metadata") or {}, spec
    elif kind in POD_TEMPLATE_KINDS:
        template = spec.get("template") or {}
        yield template.get("metadata") or {}, template.get("spec") or {}
    elif kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        yield template.get("metadata") or {}, template.get("spec") or {}


def job_specs(doc):
    """The Job spec of a Job or CronJob, or nothing."""
    if doc.get("kind") == "Job":
        yield doc.get("spec") or {}
    elif doc.get("kind") == "CronJob":
        yield ((doc.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}


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
    """The anchors of docs/operations.md's headings, as a Git host renders them (lower case,
    punctuation dropped, spaces to `-`): a runbook_url's `#...` must be one."""
    anchors = set()
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


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
            for key in ("summary", "description", "runbook_url"):
                if not annotations.get(key):
                    problem(rwhere, f"no {key} annotation")
            url, _, anchor = annotations.get("runbook_url", "").partition("#")
            if not url.endswith("docs/operations.md") or anchor != name.lower():
                problem(rwhere, f"its runbook_url does not end in docs/operations.md#{name.lower()}")
            if anchor not in rows:
                problem(rwhere, f"docs/operations.md has no heading with the anchor #{anchor}")
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


def check_pod_failure_policy(where, job):
    for i, rule in enumerate((job.get("podFailurePolicy") or {}).get("rules") or []):
        for cond in rule.get("onPodConditions") or []:
            if cond.get("status") not in POD_CONDITION_STATUSES:
                problem(where, f"podFailurePolicy rule {i} onPodConditions {cond.get('type')}: "
                        f"status is {cond.get('status')!r}, not one of True/False/Unknown "
                        "(older API servers require it)")


def expected_namespace():
    doc = yaml.safe_load((K8S / "namespace.yaml").read_text(encoding="utf-8"))
    return doc["metadata"]["name"]


def check_namespaces(name, docs, namespace):
    for doc in docs:
        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        if kind in CLUSTER_SCOPED:
            continue
        if meta.get("namespace") != namespace:
            problem(f"{name}: {kind}/{meta.get('name')}",
                    f"namespace is {meta.get('namespace')!r}, not {namespace!r} (kustomize `namespace:`)")


def listen_port(config):
    listen = config.get("server", {}).get("listen", "")
    port = listen.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def http_port(ctr):
    for port in ctr.get("ports") or []:
        if port.get("name") == "http":
            return port.get("containerPort")
    return None


def check_ports(where, pod, config, daemon, services, labels):
    """server.listen, the containerPort `http`, the probes and the Service agree."""
    want = listen_port(config)
    for ctr in pod.get("containers") or []:
        have = http_port(ctr)
        if daemon and want is None:
            problem(where, f"server.listen {config.get('server', {}).get('listen')!r} has no port")
        if daemon and have != want:
            problem(where, f"containerPort http is {have}, server.listen's port is {want}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ((ctr.get(probe) or {}).get("httpGet") or {}).get("port")
            if port is not None and port not in ("http", want):
                problem(where, f"{probe} probes port {port!r}, not http ({want})")
        for service in services:
            selector = (service.get("spec") or {}).get("selector") or {}
            if not selector or not selector.items() <= labels.items():
                continue
            for sport in service["spec"].get("ports") or []:
                target = sport.get("targetPort", sport.get("port"))
                if target not in ("http", have):
                    problem(where, f"Service {service['metadata']['name']} targets port {target!r}, not http")


def check_min_ready(where, doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") != "Deployment" or spec.get("replicas", 1) <= 1:
        return
    for ctr in spec.get("template", {}).get("spec", {}).get("containers") or []:
        probe = ctr.get("readinessProbe") or {}
        detect = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        if spec.get("minReadySeconds", 0) <= detect:
            problem(where, f"minReadySeconds {spec.get('minReadySeconds', 0)} does not outlast the readiness "
                    f"probe's {detect} s: a release whose first cycle fails would roll on")


def network_settings():
    return (yaml.safe_load(NETWORK_SETTINGS.read_text(encoding="utf-8")) or {}).get("spec") or {}


def selects(selector, labels):
    """A LabelSelector against a pod's labels (an empty selector selects every pod)."""
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policy_types(policy):
    spec = policy.get("spec") or {}
    return set(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def ports_of(rule):
    return sorted((p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports") or [])


def is_dns_rule(rule):
    """UDP and TCP 53, to the cluster's resolver pods only."""
    def resolver(peer):
        namespace = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
        pods = (peer.get("podSelector") or {}).get("matchLabels") or {}
        return namespace.get("kubernetes.io/metadata.name") == "kube-system" and pods.get("k8s-app") == "kube-dns"
    peers = rule.get("to") or []
    return ports_of(rule) == [("TCP", 53), ("UDP", 53)] and bool(peers) and all(map(resolver, peers))


def check_network_policies(name, docs, config, settings):
    """Every pod is selected by NetworkPolicies that allow what jobsync needs and nothing else."""
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    for policy in policies:
        where = f"{name}: NetworkPolicy/{policy['metadata'].get('name')}"
        text = yaml.safe_dump(policy)
        rules = (policy.get("spec") or {}).get("ingress", []) + (policy.get("spec") or {}).get("egress", [])
        if ("(settings.yaml)" in text or "192.0.2.0/32" in text
                or any(port.get("port") == 0 for rule in rules for port in rule.get("ports") or [])):
            problem(where, "still holds a placeholder: a replacement from settings.yaml did not apply")
    monitoring = settings.get("monitoringNamespace")
    api, pg = settings.get("jobsApi") or {}, settings.get("postgres") or {}
    want_listen = listen_port(config)
    for doc in docs:
        for meta, pod in pod_templates(doc):
            where = f"{name}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            labels = meta.get("labels") or {}
            mine = [p for p in policies
                    if (p["metadata"].get("namespace") == (doc.get("metadata") or {}).get("namespace"))
                    and selects((p.get("spec") or {}).get("podSelector") or {}, labels)]
            if not mine:
                problem(where, "no NetworkPolicy selects its pods")
                continue
            types = set().union(*(policy_types(p) for p in mine))
            for t in ("Ingress", "Egress"):
                if t not in types:
                    problem(where, f"no NetworkPolicy restricts its {t.lower()}")
            ingress = [r for p in mine for r in (p["spec"].get("ingress") or [])]
            egress = [r for p in mine for r in (p["spec"].get("egress") or [])]
            for rule in ingress:
                if ports_of(rule) != [("TCP", want_listen)]:
                    problem(where, f"an ingress rule allows ports {ports_of(rule)}, not only TCP {want_listen} (server.listen)")
                peers = rule.get("from") or []
                wanted_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring}}}
                if not peers or any(peer != wanted_peer for peer in peers):
                    problem(where, f"an ingress rule allows {peers or 'every source'}, not only the namespace {monitoring!r}")
            uses_postgres = any((v.get("secret") or {}).get("secretName") == DATABASE_SECRET
                                for v in pod.get("volumes") or [])
            wanted = {"DNS": is_dns_rule,
                      "the Jobs API": lambda r: ports_of(r) == [("TCP", api.get("port"))] and r.get("to") == api.get("to")}
            if uses_postgres:
                wanted["PostgreSQL"] = lambda r: ports_of(r) == [("TCP", pg.get("port"))] and r.get("to") == pg.get("to")
            for what, match in wanted.items():
                if not any(match(r) for r in egress):
                    problem(where, f"no egress rule to {what} as settings.yaml sets it")
            for rule in egress:
                if not rule.get("to") or not rule.get("ports"):
                    problem(where, f"an egress rule allows every {'destination' if not rule.get('to') else 'port'}")
                if not any(match(rule) for match in wanted.values()):
                    problem(where, f"an egress rule beyond DNS, the Jobs API{', PostgreSQL' if uses_postgres else ''}: "
                            f"ports {ports_of(rule)}")


def image_source():
    """The image base/kustomization.yaml sets; a problem for an `images:` anywhere else."""
    expected = None
    for path in sorted(K8S.rglob("kustomization.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        images = doc.get("images") or []
        rel = path.relative_to(K8S.parent.parent)
        if path != IMAGE_SOURCE:
            if images:
                problem(str(rel), "sets `images:`; the image version is set only in base/kustomization.yaml")
            continue
        entries = [i for i in images if i.get("name") == "jobsync"]
        if len(entries) != 1 or not (entries[0].get("newTag") or entries[0].get("digest")):
            problem(str(rel), "needs one `images:` entry for jobsync with newTag (and optionally digest)")
            continue
        entry = entries[0]
        expected = entry.get("newName") or entry["name"]
        if entry.get("newTag"):
            expected += f":{entry['newTag']}"
        if entry.get("digest"):
            expected += f"@{entry['digest']}"
    return expected


def check_images(where, pod, expected):
    for ctr in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        if expected and ctr.get("image") != expected:
            problem(f"{where} container {ctr.get('name')}",
                    f"image {ctr.get('image')!r} is not base/kustomization.yaml's {expected!r}")


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


def check_file(path, rows, shared):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    name = Path(path).stem
    config = config_of(docs)
    services = [d for d in docs if d.get("kind") == "Service"]
    check_namespaces(name, docs, shared["namespace"])
    check_network_policies(name, docs, config, shared["network"])
    counts = {}
    for doc in docs:
        kind = doc.get("kind")
        counts[kind] = counts.get(kind, 0) + 1
        where = f"{name}: {kind}/{(doc.get('metadata') or {}).get('name')}"
        for (pod, daemon), (meta, _) in zip(pod_specs(doc), pod_templates(doc)):
            check_pod(where, pod, daemon)
            check_against_config(where, pod, config)
            check_ports(where, pod, config, daemon, services, meta.get("labels") or {})
            # An operator's site (docs-site: the documented recipe) names its own registry.
            if not name.endswith("site"):
                check_images(where, pod, shared["image"])
        for job in job_specs(doc):
            check_pod_failure_policy(where, job)
        check_min_ready(where, doc)
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
    shared = {"namespace": expected_namespace(), "network": network_settings(), "image": image_source()}
    for path in paths:
        counts = check_file(path, rows, shared)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(f"{Path(path).stem}: {summary}")
    if problems:
        sys.stdout.flush()
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"checked {len(paths)} rendered sets: restricted pods, no placeholder Secrets, alerts that parse and have "
          f"runbooks, namespace {shared['namespace']!r} everywhere, NetworkPolicies as settings.yaml sets them, "
          f"podFailurePolicy statuses, one image ({shared['image']})")


if __name__ == "__main__":
    main(sys.argv[1:])
