"""The Helm chart in deploy/k8s/switchboard, rendered for real, agrees with
the code it deploys and with Kubernetes.

The chart is rendered with embedded Helm (PyPI ``helm-python-sdk``, Helm's Go
SDK behind a C ABI: no helm binary, no cluster), once per set of values
(:data:`VALUE_SETS`), and linted with ``helm lint --strict``. Every rendered
manifest is validated: core kinds against Kubernetes' own OpenAPI schemas
(``kubernetes-validate --strict``, Kubernetes :data:`KUBE_VERSION`), KEDA's
ScaledObject and TriggerAuthentication against the models of
``cloudcoil-models-keda``, the ServiceMonitor against those of
``cloudcoil-models-prometheus-operator``; any other kind fails.

What the code reads is found in its source (``shared/settings.py``, the CLI)
with ``ast``, so a setting added to the code and not to the chart fails here.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as monitoring
from kubernetes_validate.utils import SchemaNotFoundError

from switchboard.shared import keys

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "k8s" / "switchboard"
TEMPLATES = CHART / "templates"
SETTINGS = ROOT / "shared" / "settings.py"
CLI = ROOT / "services" / "cli.py"
DOCKERFILE = ROOT / "deploy" / "k8s" / "Dockerfile"

#: The Kubernetes version the manifests are validated against (autoscaling/v2,
#: policy/v1 and networking.k8s.io/v1 are all GA there).
KUBE_VERSION = "1.33.0"
SERVICES = {"gateway": "GatewaySettings", "worker": "WorkerSettings", "fanout": "FanoutSettings"}
KEY = "0123456789abcdef0123456789abcdef"  # 32 bytes: the shortest key the chart takes

REQUIRED = {"redis": {"url": "redis://redis-stack.data.svc:6379/0"}, "jwt": {"secret": KEY}}
EVERYTHING = {
    "redis": {"url": "rediss://switchboard:s3cr:et@redis.data.svc:6380/2"},
    "jwt": {"secret": KEY},
    "config": {"workShards": 3},
    "gateway": {"autoscaling": {"enabled": True, "connections": {"enabled": True}},
                "tls": {"existingSecret": "gateway-tls"}},
    "keda": {"enabled": True},
    "ingress": {"enabled": True, "className": "nginx",
                "tls": [{"secretName": "switchboard-tls", "hosts": ["switchboard.example.com"]}]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {"enabled": True,
                      "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                      "redis": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [6380]},
                      "workerEgress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}]},
}
EXISTING_SECRETS = {
    "redis": {"existingSecret": "sb-redis"},
    "jwt": {"existingSecret": "sb-jwt"},
    "keda": {"enabled": True, "redis": {"addressKey": "address", "passwordKey": "password"}},
    "ingress": {"enabled": True, "flavor": "generic",
                "annotations": {"alb.ingress.kubernetes.io/load-balancer-attributes": "idle_timeout.timeout_seconds=3600"}},
}
PUBLIC_KEY = {
    "redis": {"url": "redis://redis:6379/0"},
    "jwt": {"publicKey": "-----BEGIN PUBLIC KEY-----\nMFkw...\n-----END PUBLIC KEY-----\n"},
    "gateway": {"settings": {"jwtAlgorithms": "ES256"}, "podDisruptionBudget": {"maxUnavailable": None, "minAvailable": 1}},
    "worker": {"autoscaling": {"enabled": True}},
}


def _values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _every_setting() -> dict:
    """REQUIRED, plus a value for every setting values.yaml leaves null, so
    every setting the chart can pass is rendered."""
    values = copy.deepcopy(REQUIRED)
    values["encryption"] = {"existingSecret": "sb-keys"}  # ENCRYPTION_KEYS, from a Secret only
    values["redis"]["sentinel"] = {"username": "sentinel-user", "existingSecret": "sb-sentinel"}
    defaults = _values()
    sections = {"config": defaults["config"], "health": defaults["health"],
                **{tier: {"settings": defaults[tier]["settings"]} for tier in SERVICES}}
    for name, section in sections.items():
        target = values.setdefault(name, {})
        source = section
        if "settings" in section:
            target = target.setdefault("settings", {})
            source = section["settings"]
        for key, value in source.items():
            if value is None:
                target[key] = 1
    return values


VALUE_SETS = {"default": REQUIRED, "everything": EVERYTHING, "existing-secrets": EXISTING_SECRETS,
              "public-key": PUBLIC_KEY}


# -- rendering -----------------------------------------------------------------------------------


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: dict) -> list[dict]:
    """Every manifest the chart renders with ``values`` (release ``sb``)."""
    files = _chart().render(values, name="sb", namespace="switchboard", is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


@functools.cache
def _rendered(name: str) -> tuple[dict, ...]:
    return tuple(render(VALUE_SETS[name] if name != "every-setting" else _every_setting()))


def rendered(name: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(name)))


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = find(docs, kind, name)
    return doc


def deployment(docs: list[dict], service: str) -> dict:
    return one(docs, "Deployment", f"sb-switchboard-{service}")


def container(docs: list[dict], service: str) -> dict:
    [only] = deployment(docs, service)["spec"]["template"]["spec"]["containers"]
    return only


def env_of(docs: list[dict], service: str) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container(docs, service)["env"]}


def refuses(values: dict) -> str:
    """The message of the render failure ``values`` cause (fails if it renders)."""
    with pytest.raises(helm.HelmError) as caught:
        _chart().render(values, name="sb", namespace="switchboard", is_install=True)
    return str(caught.value)


def merged(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# -- validation ----------------------------------------------------------------------------------

#: Kinds outside Kubernetes itself, and the models that validate them.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
}


def _unknown_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Fields of ``given`` a model dropped (pydantic ignores unknown fields:
    comparing with what it kept makes the check strict)."""
    if isinstance(given, dict):
        kept = kept if isinstance(kept, dict) else {}
        out = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}.{key}")
            else:
                out += _unknown_fields(value, kept[key], f"{path}.{key}")
        return out
    if isinstance(given, list):
        kept = kept if isinstance(kept, list) else []
        return [f for i, value in enumerate(given)
                for f in _unknown_fields(value, kept[i] if i < len(kept) else None, f"{path}[{i}]")]
    return []


def validate(doc: dict) -> None:
    """Raises if ``doc`` is not a valid object of a known kind."""
    model = CUSTOM_KINDS.get((doc.get("apiVersion"), doc.get("kind")))
    if model is None:
        # Unknown kinds and API versions raise SchemaNotFoundError.
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        return
    obj = model.model_validate(doc)
    kept = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    unknown = _unknown_fields(json.loads(json.dumps(doc)), kept)
    assert not unknown, f"{doc['kind']} {doc['metadata']['name']}: unknown fields {unknown}"


@pytest.mark.parametrize("name", [*VALUE_SETS, "every-setting"])
def test_every_rendered_manifest_is_a_valid_object(name):
    docs = rendered(name)
    assert len(docs) >= 8
    for doc in docs:
        try:
            validate(doc)
        except Exception as exc:
            raise AssertionError(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc}") from exc


def test_validation_fails_unknown_kinds_and_invalid_objects():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(SchemaNotFoundError):
        validate(widget)
    pdb = one(rendered("default"), "PodDisruptionBudget", "sb-switchboard-worker")
    pdb["spec"]["maxUnavailabel"] = 1  # a typo: strict schemas refuse unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pdb)
    scaled = one(rendered("everything"), "ScaledObject", "sb-switchboard-worker")
    scaled["spec"]["pollingIntervall"] = 5
    with pytest.raises(AssertionError, match="pollingIntervall"):
        validate(scaled)
    monitor = one(rendered("everything"), "ServiceMonitor", "sb-switchboard")
    monitor["spec"]["endpoints"] = "metrics"
    with pytest.raises(Exception):
        validate(monitor)


@pytest.mark.parametrize("name", [*VALUE_SETS, "every-setting"])
def test_helm_lint_strict_passes(name):
    values = VALUE_SETS[name] if name != "every-setting" else _every_setting()
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def test_every_option_renders_its_objects():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered("everything"))
    for expected in [("Ingress", "sb-switchboard-gateway"), ("ServiceMonitor", "sb-switchboard"),
                     ("Service", "sb-switchboard-metrics"), ("ScaledObject", "sb-switchboard-worker"),
                     ("TriggerAuthentication", "sb-switchboard-worker-redis"),
                     ("HorizontalPodAutoscaler", "sb-switchboard-gateway"),
                     *[("NetworkPolicy", f"sb-switchboard-{s}") for s in SERVICES],
                     *[("PodDisruptionBudget", f"sb-switchboard-{s}") for s in SERVICES]]:
        assert expected in kinds
    default = {d["kind"] for d in rendered("default")}
    assert not default & {"Ingress", "ServiceMonitor", "ScaledObject", "HorizontalPodAutoscaler", "NetworkPolicy"}


# -- what the code reads -------------------------------------------------------------------------


def _env_reads(fn: ast.AST) -> tuple[set[str], set[str], set[str]]:
    """(names read directly, settings classes whose from_env is called,
    module-level helpers called) within one function."""
    names, classes, helpers = set(), set(), set()
    for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
        func = call.func
        if (isinstance(func, ast.Name) and func.id in {"_get", "_int", "_float", "_bool", "_list", "_networks"}
                and len(call.args) >= 2 and isinstance(call.args[1], ast.Constant)):
            names.add(call.args[1].value)
        elif (isinstance(func, ast.Name) and func.id == "_password" and len(call.args) >= 2
                and isinstance(call.args[1], ast.Constant)):  # NAME, or the file NAME_FILE names
            names |= {call.args[1].value, f"{call.args[1].value}_FILE"}
        elif isinstance(func, ast.Name):
            helpers.add(func.id)
        elif isinstance(func, ast.Attribute) and func.attr == "from_env" and isinstance(func.value, ast.Name):
            classes.add(func.value.id)
    return names, classes, helpers


def _settings_reads() -> dict[str, set[str]]:
    """Env names read by each settings class's ``from_env``, including those of
    nested settings classes and of module-level helpers it calls."""
    module = ast.parse(SETTINGS.read_text())
    helpers = {fn.name: _env_reads(fn) for fn in module.body if isinstance(fn, ast.FunctionDef)}
    reads: dict[str, tuple[set[str], set[str], set[str]]] = {}
    for cls in module.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef) and fn.name == "from_env":
                reads[cls.name] = _env_reads(fn)

    def resolve(names: set[str], classes: set[str], called: set[str]) -> set[str]:
        out = set(names)
        for name in classes:
            out |= resolve(*reads[name])
        for name in called & helpers.keys():
            out |= resolve(*helpers[name])
        return out

    return {name: resolve(*value) for name, value in reads.items()}


def _cli_reads() -> set[str]:
    """Env names ``_run_service`` reads for every service (logging)."""
    fn = next(n for n in ast.walk(ast.parse(CLI.read_text()))
              if isinstance(n, ast.FunctionDef) and n.name == "_run_service")
    return {
        call.args[0].value
        for call in ast.walk(fn)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "get"
        and isinstance(call.func.value, ast.Name) and call.func.value.id == "env"
        and call.args and isinstance(call.args[0], ast.Constant)
    }


#: Settings the code reads that a cluster must never get: development mode
#: accepts the development JWT key.
NEVER_IN_A_CLUSTER = {"SWITCHBOARD_DEV"}
#: The chart gives the sentinels' password as REDIS_SENTINEL_PASSWORD from a
#: Secret; its file form is for running outside the chart.
NOT_FROM_THE_CHART = {"REDIS_SENTINEL_PASSWORD_FILE"}


def _provided(docs: list[dict], service: str) -> set[str]:
    """Env names a tier's container gets: its own env and the shared ConfigMap."""
    configmap = one(docs, "ConfigMap", "sb-switchboard")
    return set(env_of(docs, service)) | set(configmap.get("data", {}))


def test_chart_metadata_and_values_parse():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "switchboard"
    # The image tag defaults to appVersion: it must name the release being built.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(chart["appVersion"]) == project["version"]
    assert isinstance(_values(), dict)


def test_every_env_name_the_chart_renders_is_read_by_the_code():
    known = set().union(*_settings_reads().values()) | _cli_reads()
    assert {"REDIS_URL", "JWT_SECRET", "LOG_FORMAT", "METRICS_PORT"} <= known, "settings.py / cli.py parsing found too little"
    for name in ("every-setting", "everything", "public-key"):
        docs = rendered(name)
        for service in SERVICES:
            unknown = _provided(docs, service) - known
            assert not unknown, f"{name}: {service} gets env vars the code never reads: {sorted(unknown)}"


@pytest.mark.parametrize("service", SERVICES)
def test_chart_can_set_every_setting_the_service_reads(service):
    reads = _settings_reads()[SERVICES[service]] - NEVER_IN_A_CLUSTER - NOT_FROM_THE_CHART | _cli_reads()
    provided = _provided(rendered("every-setting"), service)
    if service == "gateway":  # in-pod TLS, and the public-key family that replaces JWT_SECRET
        provided |= _provided(rendered("everything"), service) | _provided(rendered("public-key"), service)
        provided |= _provided(render(merged(PUBLIC_KEY, {"jwt": {"publicKey": "", "jwks": "{}"}})), service)
    for as_env in (False, True):  # the tier's Redis ACL password, as a mounted file or as an env var
        own_user = {"redis": {"auth": {service: {"existingSecret": f"sb-{service}-redis", "passwordAsEnv": as_env}}}}
        provided |= _provided(render(merged(REQUIRED, own_user)), service)
    missing = sorted(reads - provided)
    assert not missing, f"{service} reads {missing}, which the chart neither sets nor exposes in values.yaml"


def test_stream_settings_are_shared_by_all_deployments():
    stream = _settings_reads()["StreamSettings"]
    assert stream, "StreamSettings reads no env vars?"
    docs = rendered("every-setting")
    assert stream <= set(one(docs, "ConfigMap", "sb-switchboard")["data"])
    for service in SERVICES:
        per_tier = stream & set(env_of(docs, service))
        assert not per_tier, f"{service} sets {sorted(per_tier)} itself; the tiers could then disagree"


@pytest.mark.parametrize("service", SERVICES)
def test_deployment_runs_its_service(service):
    docs = rendered("default")
    c = container(docs, service)
    assert c["command"] == ["switchboard"]
    assert c["args"] == [service]
    env = env_of(docs, service)
    # SERVER_ID names consumers, channels and liveness keys: it must be unique per pod.
    assert env["SERVER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "secretKeyRef" in env["REDIS_URL"]["valueFrom"], "the Redis URL may carry a password"
    assert c["envFrom"] == [{"configMapRef": {"name": "sb-switchboard"}}]


def test_each_tier_has_its_own_replica_count_unless_an_autoscaler_owns_it():
    values = _values()
    docs = rendered("default")
    for service in SERVICES:
        assert deployment(docs, service)["spec"]["replicas"] == values[service]["replicas"]
    scaled = rendered("everything")
    for service in ("gateway", "worker"):
        assert "replicas" not in deployment(scaled, service)["spec"], f"{service}: replicas would fight the autoscaler"
    assert one(scaled, "HorizontalPodAutoscaler", "sb-switchboard-gateway")["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "sb-switchboard-gateway"}
    assert one(scaled, "ScaledObject", "sb-switchboard-worker")["spec"]["scaleTargetRef"] == {"name": "sb-switchboard-worker"}
    assert deployment(scaled, "fanout")["spec"]["replicas"] == values["fanout"]["replicas"]
    hpa = one(rendered("public-key"), "HorizontalPodAutoscaler", "sb-switchboard-worker")  # KEDA off: a CPU HPA
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "worker.autoscaling and keda" in refuses(merged(EVERYTHING, {"worker": {"autoscaling": {"enabled": True}}}))


# -- health, probes, shutdown ----------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_every_tier_is_probed_on_its_health_endpoints(service):
    docs = rendered("default")
    c = container(docs, service)
    port = _values()["health"]["port"]
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"]
    env = env_of(docs, service)
    assert env["METRICS_PORT"]["value"] == str(port) and env["METRICS_HOST"]["value"] == "0.0.0.0"
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    from switchboard.shared.settings import HealthSettings

    # A stuck loop shows as the probe's timeout: it must come well before the stall bound.
    assert c["livenessProbe"]["timeoutSeconds"] < HealthSettings().stall_after


def test_gateway_listens_on_all_interfaces_and_serves_the_ws_port():
    docs = rendered("default")
    env = env_of(docs, "gateway")
    assert env["WEBSOCKET_HOST"]["value"] == "0.0.0.0"
    assert "secretKeyRef" in env["JWT_SECRET"]["valueFrom"]
    assert [p["name"] for p in container(docs, "gateway")["ports"]] == ["ws", "metrics"]
    service = one(docs, "Service", "sb-switchboard-gateway")
    assert service["spec"]["ports"] == [{"name": "ws", "port": 8765, "targetPort": "ws", "protocol": "TCP"}]
    assert service["spec"]["type"] == "ClusterIP"
    assert "must differ" in refuses(merged(REQUIRED, {"gateway": {"port": 9090}}))


def _worker_needs(shutdown_grace: float | None = None) -> float:
    """Seconds a worker may take to stop: the last blocking read, the grace
    for running turns (SHUTDOWN_GRACE), then up to 5 s for hand-back."""
    from switchboard.shared.settings import WorkerSettings

    defaults = WorkerSettings()
    return defaults.read_block + 1 + (shutdown_grace or defaults.shutdown_grace) + 5


def _grace(docs: list[dict], service: str) -> int:
    return deployment(docs, service)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_grace_periods_cover_each_tiers_shutdown():
    docs = rendered("default")
    assert _grace(docs, "worker") >= _worker_needs()  # SHUTDOWN_GRACE's default, as the code has it
    longer = render(merged(REQUIRED, {"worker": {"settings": {"shutdownGrace": 90}}}))
    assert _grace(longer, "worker") >= _worker_needs(90)
    values = _values()["gateway"]
    assert _grace(docs, "gateway") >= values["preStopSleepSeconds"] + 5  # socket close (2 s) + tasks (3 s)
    draining = render(merged(REQUIRED, {"gateway": {"settings": {"drainDelay": 30}}}))
    assert _grace(draining, "gateway") >= values["preStopSleepSeconds"] + 30 + 5
    sleep = container(docs, "gateway")["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == ["sleep", str(values["preStopSleepSeconds"])]
    assert "below the 35 s" in refuses(merged(REQUIRED, {"worker": {"terminationGracePeriodSeconds": 30}}))
    assert _grace(render(merged(REQUIRED, {"worker": {"terminationGracePeriodSeconds": 50}})), "worker") == 50


def _dockerfile_user() -> str:
    users = [line.split(None, 1)[1].strip() for line in DOCKERFILE.read_text().splitlines()
             if line.startswith("USER ")]
    return users[-1]


@pytest.mark.parametrize("service", SERVICES)
def test_pods_are_hardened_and_bounded(service):
    user = _dockerfile_user()
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"the image runs as {user!r}: runAsNonRoot needs a numeric, non-root uid"
    docs = rendered("default")
    pod = deployment(docs, service)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": int(uid), "runAsGroup": int(gid or uid),
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    c = container(docs, service)
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    pdb = one(docs, "PodDisruptionBudget", f"sb-switchboard-{service}")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment(docs, service)["spec"]["selector"]["matchLabels"]


# -- autoscaling, network, ingress, monitoring --------------------------------------------------------


def test_keda_has_one_trigger_per_work_shard_on_the_workers_group():
    docs = rendered("everything")
    shards = EVERYTHING["config"]["workShards"]
    scaled = one(docs, "ScaledObject", "sb-switchboard-worker")
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [keys.work(i) for i in range(shards)]
    target = math.ceil(_values()["keda"]["pendingEntriesCount"] / shards)
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["consumerGroup"] == keys.WORKER_GROUP
        assert trigger["metadata"]["pendingEntriesCount"] == str(target)
        assert (trigger["metadata"]["databaseIndex"], trigger["metadata"]["enableTLS"]) == ("2", "true")  # from rediss://…/2
        assert trigger["authenticationRef"] == {"name": "sb-switchboard-worker-redis"}
    # The credentials come from the chart's Secret, taken apart from redis.url.
    auth = one(docs, "TriggerAuthentication", "sb-switchboard-worker-redis")["spec"]["secretTargetRef"]
    secret = one(docs, "Secret", "sb-switchboard")["stringData"]
    assert {ref["parameter"]: secret[ref["key"]] for ref in auth} == {
        "address": "redis.data.svc:6380", "username": "switchboard", "password": "s3cr:et"}
    # From an existing Secret: the keys named in keda.redis.
    theirs = one(rendered("existing-secrets"), "TriggerAuthentication", "sb-switchboard-worker-redis")
    assert theirs["spec"]["secretTargetRef"] == [{"parameter": "address", "name": "sb-redis", "key": "address"},
                                                 {"parameter": "password", "name": "sb-redis", "key": "password"}]
    assert "addressKey" in refuses(merged(EXISTING_SECRETS, {"keda": {"redis": {"addressKey": ""}}}))
    assert "escaped" in refuses(merged(REQUIRED, {"keda": {"enabled": True}, "redis": {"url": "redis://:p%40ss@r:6379/0"}}))


def test_network_policies_let_only_gateways_take_connections_and_reach_only_redis_and_dns():
    docs = rendered("everything")
    monitoring_peers = EVERYTHING["networkPolicy"]["metricsFrom"]
    for service in SERVICES:
        spec = one(docs, "NetworkPolicy", f"sb-switchboard-{service}")["spec"]
        assert spec["podSelector"]["matchLabels"] == deployment(docs, service)["spec"]["selector"]["matchLabels"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        ports = {rule["ports"][0]["port"]: rule.get("from") for rule in spec["ingress"]}
        expected = {"metrics": monitoring_peers, **({"ws": None} if service == "gateway" else {})}
        assert ports == expected, service
        egress_ports = [p["port"] for rule in spec["egress"] for p in rule["ports"]]
        assert egress_ports == [6380, 53, 53] + ([443] if service == "worker" else []), service
        assert spec["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    closed = render(merged(REQUIRED, {"networkPolicy": {"enabled": True}}))
    for service in ("worker", "fanout"):
        assert one(closed, "NetworkPolicy", f"sb-switchboard-{service}")["spec"]["ingress"] == []


def test_ingress_keeps_websockets_open_longer_than_the_heartbeat():
    docs = rendered("everything")
    ingress = one(docs, "Ingress", "sb-switchboard-gateway")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"  # the gateway serves wss:// itself
    [rule] = ingress["spec"]["rules"]
    assert rule["http"]["paths"][0]["path"] == "/ws"
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": "sb-switchboard-gateway", "port": {"name": "ws"}}}
    generic = one(rendered("existing-secrets"), "Ingress", "sb-switchboard-gateway")["metadata"]["annotations"]
    assert generic == EXISTING_SECRETS["ingress"]["annotations"]
    assert "heartbeatInterval" in refuses(merged(REQUIRED, {"ingress": {"enabled": True, "timeoutSeconds": 30}}))


def test_service_monitor_scrapes_the_metrics_port_of_every_tier():
    docs = rendered("everything")
    service = one(docs, "Service", "sb-switchboard-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    for tier in SERVICES:  # the Service selects every tier's pods
        pod_labels = deployment(docs, tier)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(docs, "ServiceMonitor", "sb-switchboard")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics" and monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# -- the JWT key -------------------------------------------------------------------------------------


def test_chart_refuses_the_development_key_and_short_keys():
    from switchboard.shared.settings import DEV_JWT_SECRET, MIN_JWT_SECRET_BYTES

    assert "development key" in refuses(merged(REQUIRED, {"jwt": {"secret": DEV_JWT_SECRET}}))
    assert "at least 32 bytes" in refuses(merged(REQUIRED, {"jwt": {"secret": "k" * (MIN_JWT_SECRET_BYTES - 1)}}))
    assert "jwt.secret" in refuses(merged(REQUIRED, {"jwt": {"secret": ""}}))
    # Go's len counts bytes: 11 three-byte characters are 33 bytes.
    for secret in ("k" * MIN_JWT_SECRET_BYTES, "é" * 16, "€" * 11):
        docs = render(merged(REQUIRED, {"jwt": {"secret": secret}}))
        assert one(docs, "Secret", "sb-switchboard")["stringData"]["jwt-secret"] == secret
    assert "at least 32 bytes" in refuses(merged(REQUIRED, {"jwt": {"secret": "é" * 15}}))  # 15 characters, 30 bytes


def test_the_chart_never_turns_on_development_mode():
    texts = [path.read_text() for path in TEMPLATES.iterdir() if path.is_file()]
    texts.append((CHART / "values.yaml").read_text())
    for name in NEVER_IN_A_CLUSTER:
        assert not any(name in text for text in texts), f"the chart mentions {name}"
        assert any(name in reads for reads in _settings_reads().values()), f"{name} is no longer read: update this test"


def test_gateway_takes_an_identity_providers_key_from_a_mounted_file():
    docs = rendered("public-key")
    env = env_of(docs, "gateway")
    assert "JWT_SECRET" not in env, "one family at a time: no secret with a public key"
    mount = next(m for m in container(docs, "gateway")["volumeMounts"] if m["name"] == "jwt-keys")
    assert env["JWT_PUBLIC_KEY_FILE"]["value"] == f"{mount['mountPath']}/public-key.pem"
    volume = next(v for v in deployment(docs, "gateway")["spec"]["template"]["spec"]["volumes"] if v["name"] == "jwt-keys")
    keys_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    assert keys_map["data"] == {"public-key.pem": PUBLIC_KEY["jwt"]["publicKey"]}
    jwks = render(merged(PUBLIC_KEY, {"jwt": {"publicKey": "", "jwks": '{"keys": []}'}}))
    assert env_of(jwks, "gateway")["JWT_JWKS_FILE"]["value"] == f"{mount['mountPath']}/jwks.json"
    assert "jwtAlgorithms" in refuses(merged(PUBLIC_KEY, {"gateway": {"settings": {"jwtAlgorithms": None}}}))


def test_a_minimum_available_budget_replaces_the_maximum_unavailable():
    pdb = one(rendered("public-key"), "PodDisruptionBudget", "sb-switchboard-gateway")["spec"]
    assert pdb["minAvailable"] == 1 and "maxUnavailable" not in pdb
    assert "not both" in refuses(merged(REQUIRED, {"fanout": {"podDisruptionBudget": {"minAvailable": 1}}}))


def test_templates_name_no_setting_the_code_does_not_read():
    """Env names written literally in the templates (``- name: X`` and the
    ``dict "X" ...`` of the settings helpers), rendered or not."""
    known = set().union(*_settings_reads().values()) | _cli_reads()
    names = set()
    for path in TEMPLATES.iterdir():
        text = path.read_text()
        names |= set(re.findall(r"^\s*-\s*name:\s*([A-Z][A-Z0-9_]*)\s*$", text, re.M))
        for action in re.findall(r"\{\{(?:(?!\}\}).)*\}\}", text, re.S):
            if "dict" in action and "set $" not in action:  # the NAME => value dicts of env and ConfigMap
                names |= set(re.findall(r'"([A-Z][A-Z0-9_]*)"', action))
    assert {"REDIS_URL", "METRICS_PORT", "DRAIN_DELAY"} <= names
    assert not names - known, sorted(names - known)


def test_encryption_keys_reach_the_gateways_and_workers_only_from_a_secret():
    """ENCRYPTION_KEYS come from the Secret ``encryption.existingSecret``
    names, into the two tiers that seal and open text; the fanout forwards
    what is stored and gets no key."""
    assert _values()["encryption"] == {"existingSecret": "", "existingSecretKey": "encryption-keys"}
    plain = rendered("default")
    for service in SERVICES:
        assert "ENCRYPTION_KEYS" not in env_of(plain, service)
    docs = render(merged(REQUIRED, {"encryption": {"existingSecret": "sb-keys"}}))
    for service in ("gateway", "worker"):
        assert env_of(docs, service)["ENCRYPTION_KEYS"]["valueFrom"]["secretKeyRef"] == {
            "name": "sb-keys", "key": "encryption-keys"}
    assert "ENCRYPTION_KEYS" not in env_of(docs, "fanout")
    assert all("ENCRYPTION_KEYS" not in (d.get("data") or {}) for d in find(docs, "ConfigMap"))
    assert "ENCRYPTION_KEYS" not in _settings_reads()["FanoutSettings"]
