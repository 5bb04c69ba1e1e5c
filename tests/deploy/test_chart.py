"""The Helm chart in deploy/k8s/switchboard agrees with the code it deploys.

No helm binary and no cluster: the templates are read as text. Where structure
matters, a template's *skeleton* is parsed as YAML: every Go-template action
that stands alone on its line(s) is dropped (control flow, ``include ... |
nindent``), every other action becomes the placeholder ``TEMPLATED``. That
keeps what the chart writes literally (commands, env names, probes, ports),
which is what these tests are about.

Env var names are found where the chart writes them: ``- name: NAME`` entries,
and upper-case string literals inside actions (the ``dict "NAME" value``
arguments of the ConfigMap and of the ``switchboard.env`` helper).
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "k8s" / "switchboard"
TEMPLATES = CHART / "templates"
SETTINGS = ROOT / "shared" / "settings.py"
CLI = ROOT / "services" / "cli.py"
WORKER = ROOT / "services" / "conversation-worker" / "worker.py"

SERVICES = {"gateway": "GatewaySettings", "worker": "WorkerSettings", "fanout": "FanoutSettings"}

_ACTION = r"\{\{(?:(?!\}\}).)*\}\}"
_STANDALONE_ACTIONS = re.compile(rf"^[ \t]*(?:{_ACTION}[ \t]*)+\n", re.M | re.S)
_ANY_ACTION = re.compile(_ACTION, re.S)
_ENV_ENTRY = re.compile(r"^\s*-\s*name:\s*([A-Z][A-Z0-9_]*)\s*$", re.M)
_UPPER_LITERAL = re.compile(r'"([A-Z][A-Z0-9_]*)"')


# -- what the code reads ------------------------------------------------------------


def _env_reads(fn: ast.AST) -> tuple[set[str], set[str], set[str]]:
    """(names read directly, settings classes whose from_env is called,
    module-level helpers called) within one function."""
    names, classes, helpers = set(), set(), set()
    for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
        func = call.func
        if (isinstance(func, ast.Name) and func.id in {"_get", "_int", "_float", "_bool", "_list", "_networks"}
                and len(call.args) >= 2 and isinstance(call.args[1], ast.Constant)):
            names.add(call.args[1].value)
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


def _worker_grace() -> float:
    """Seconds a worker may take to stop: the last blocking read, the grace
    for running turns (SHUTDOWN_GRACE), then up to 5 s for hand-back."""
    from switchboard.shared.settings import WorkerSettings

    defaults = WorkerSettings()
    grace = _values()["worker"]["settings"].get("shutdownGrace") or defaults.shutdown_grace
    return defaults.read_block + 1 + grace + 5


# -- what the chart says ------------------------------------------------------------


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def skeleton(text: str) -> str:
    return _ANY_ACTION.sub("TEMPLATED", _STANDALONE_ACTIONS.sub("", text))


def _manifest(name: str) -> dict:
    docs = [doc for doc in yaml.safe_load_all(skeleton(_template(name))) if doc]
    assert len(docs) == 1, f"{name}: expected one manifest, got {len(docs)}"
    return docs[0]


def env_names(text: str) -> set[str]:
    names = set(_ENV_ENTRY.findall(text))
    for action in _ANY_ACTION.findall(text):
        names.update(_UPPER_LITERAL.findall(action))
    return names


def _container(service: str) -> dict:
    deployment = _manifest(f"{service}-deployment.yaml")
    assert deployment["kind"] == "Deployment"
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{service}: expected one container"
    return containers[0]


def _values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


# -- tests ---------------------------------------------------------------------------


def test_chart_metadata_and_values_parse():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "switchboard"
    # The image tag defaults to appVersion: it must name the release being built.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(chart["appVersion"]) == project["version"]
    assert isinstance(_values(), dict)


def test_skeleton_keeps_literal_text_and_drops_actions():
    text = (
        "a:\n"
        "  {{- if .x }}\n"
        "  b: {{ .y | quote }}-z\n"
        '  {{- include "t" (dict\n'
        '      "K" 1) | nindent 2 }}\n'
        "  {{- end }}\n"
    )
    assert yaml.safe_load(skeleton(text)) == {"a": {"b": "TEMPLATED-z"}}
    assert env_names(text) == {"K"}


def test_every_env_name_in_the_templates_is_read_by_the_code():
    known = set().union(*_settings_reads().values()) | _cli_reads()
    assert {"REDIS_URL", "JWT_SECRET", "LOG_FORMAT"} <= known, "settings.py / cli.py parsing found too little"
    used = {path.name: env_names(path.read_text()) for path in TEMPLATES.iterdir() if path.is_file()}
    found = set().union(*used.values())
    assert {"REDIS_URL", "SERVER_ID", "WEBSOCKET_HOST"} <= found, "env extraction found too little"
    unknown = {name: sorted(names - known) for name, names in used.items() if names - known}
    assert not unknown, f"env vars the code never reads (typo, or a removed setting): {unknown}"


@pytest.mark.parametrize("service", SERVICES)
def test_deployment_runs_its_service(service):
    container = _container(service)
    assert container["command"] == ["switchboard"]
    assert container["args"] == [service]
    env = {entry["name"]: entry for entry in container["env"]}
    # SERVER_ID names consumers, channels and liveness keys: it must be unique per pod.
    assert env["SERVER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "secretKeyRef" in env["REDIS_URL"]["valueFrom"], "the Redis URL may carry a password"
    refs = container["envFrom"]
    assert any("configMapRef" in ref for ref in refs), f"{service} does not load the shared ConfigMap"


#: Settings the code reads that a cluster must never get: development mode
#: accepts the development JWT key.
NEVER_IN_A_CLUSTER = {"SWITCHBOARD_DEV"}


@pytest.mark.parametrize("service", SERVICES)
def test_chart_can_set_every_setting_the_service_reads(service):
    reads = _settings_reads()[SERVICES[service]] - NEVER_IN_A_CLUSTER | _cli_reads()
    provided = env_names(_template(f"{service}-deployment.yaml")) | env_names(_template("configmap.yaml"))
    missing = sorted(reads - provided)
    assert not missing, f"{service} reads {missing}, which the chart neither sets nor exposes in values.yaml"


def test_stream_settings_are_shared_by_all_deployments():
    stream = _settings_reads()["StreamSettings"]
    assert stream, "StreamSettings reads no env vars?"
    assert stream <= env_names(_template("configmap.yaml"))
    for service in SERVICES:
        per_tier = stream & env_names(_template(f"{service}-deployment.yaml"))
        assert not per_tier, f"{service} sets {sorted(per_tier)} itself; the tiers could then disagree"


def test_each_tier_has_its_own_replica_count():
    values = _values()
    for service in SERVICES:
        replicas = values[service]["replicas"]
        assert isinstance(replicas, int) and replicas >= 1, f"{service}.replicas={replicas!r}"
        pattern = rf"^\s*replicas:\s*\{{\{{\s*\.Values\.{service}\.replicas\s*\}}\}}\s*$"
        assert re.search(pattern, _template(f"{service}-deployment.yaml"), re.M), \
            f"{service}-deployment.yaml does not take replicas from .Values.{service}.replicas"


def test_gateway_listens_on_all_interfaces_and_is_probed_on_its_port():
    container = _container("gateway")
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["WEBSOCKET_HOST"]["value"] == "0.0.0.0"
    assert "JWT_SECRET" in env and "secretKeyRef" in env["JWT_SECRET"]["valueFrom"]
    assert [port["name"] for port in container["ports"]] == ["ws"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "ws"}, probe

    service = _manifest("gateway-service.yaml")
    assert service["kind"] == "Service"
    assert service["spec"]["ports"][0]["name"] == "ws"
    assert service["spec"]["ports"][0]["targetPort"] == "ws"
    assert re.search(r"type:\s*\{\{\s*\.Values\.gateway\.service\.type\s*\}\}", _template("gateway-service.yaml"))
    assert _values()["gateway"]["service"]["port"] == 8765


def test_worker_grace_period_lets_running_turns_finish():
    needed = _worker_grace()
    assert _values()["worker"]["terminationGracePeriodSeconds"] >= needed
    assert re.search(r"terminationGracePeriodSeconds:\s*\{\{\s*\.Values\.worker\.terminationGracePeriodSeconds\s*\}\}",
                     _template("worker-deployment.yaml"))


# -- the JWT key ----------------------------------------------------------------------
#
# Without helm the guards are read from secret.yaml and evaluated here: each is
# ``{{- if eq $secret "..." }}{{ fail ... }}`` or ``{{- if lt (len $secret) N }}{{ fail ... }}``.

_FAIL_IF_EQ = re.compile(r'\{\{-?\s*if\s+eq\s+\$secret\s+"([^"]*)"\s*\}\}\{\{\s*fail\s+"[^"]+"\s*\}\}\{\{\s*end\s*\}\}')
_FAIL_IF_SHORT = re.compile(r'\{\{-?\s*if\s+lt\s+\(len\s+\$secret\)\s+(\d+)\s*\}\}\{\{\s*fail\s+"[^"]+"\s*\}\}\{\{\s*end\s*\}\}')


def _chart_refuses(secret: str) -> bool:
    """Whether rendering secret.yaml fails for ``jwt.secret=secret`` (Go's
    ``len`` of a string counts bytes)."""
    text = _template("secret.yaml")
    refused = set(_FAIL_IF_EQ.findall(text))
    minimum = [int(n) for n in _FAIL_IF_SHORT.findall(text)]
    assert refused and minimum, "secret.yaml has no guard on jwt.secret"
    assert re.search(r"jwt-secret:\s*\{\{\s*\$secret\s*\|\s*quote\s*\}\}", text), "the guarded value is not what is rendered"
    return not secret or secret in refused or len(secret.encode()) < max(minimum)


def test_chart_refuses_the_development_key_and_short_keys():
    from switchboard.shared.settings import DEV_JWT_SECRET, MIN_JWT_SECRET_BYTES

    assert _chart_refuses(DEV_JWT_SECRET)
    assert _chart_refuses("k")
    assert _chart_refuses("k" * (MIN_JWT_SECRET_BYTES - 1))
    assert _chart_refuses("")
    assert not _chart_refuses("k" * MIN_JWT_SECRET_BYTES)
    assert not _chart_refuses("0123456789abcdef" * 4)


def test_the_chart_never_turns_on_development_mode():
    texts = [path.read_text() for path in TEMPLATES.iterdir() if path.is_file()]
    texts.append((CHART / "values.yaml").read_text())
    for name in NEVER_IN_A_CLUSTER:
        assert not any(name in text for text in texts), f"the chart mentions {name}"
        assert any(name in reads for reads in _settings_reads().values()), f"{name} is no longer read: update this test"


def test_gateway_takes_an_identity_providers_key_from_a_mounted_file():
    template = _template("gateway-deployment.yaml")
    container = _container("gateway")
    env = {entry["name"]: entry for entry in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "jwt-keys")
    assert env["JWT_PUBLIC_KEY_FILE"]["value"] == f"{mount['mountPath']}/public-key.pem"
    assert env["JWT_JWKS_FILE"]["value"] == f"{mount['mountPath']}/jwks.json"
    volume = next(v for v in _manifest("gateway-deployment.yaml")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "jwt-keys")
    keys = _template("jwt-keys-configmap.yaml")
    assert volume["configMap"]["name"] == "TEMPLATED-jwt-keys" and "-jwt-keys" in keys
    assert "public-key.pem:" in keys and "jwks.json:" in keys
    # One family at a time: the secret is rendered only without a public key.
    assert re.search(r"else\s*\}\}\s*- name: JWT_SECRET", template)
    assert 'fail "jwt.publicKey / jwt.jwks need gateway.settings.jwtAlgorithms' in keys


def test_encryption_keys_reach_the_gateways_and_workers_only_from_a_secret():
    """ENCRYPTION_KEYS come from the Secret ``encryption.existingSecret``
    names, into the two tiers that seal and open text; the fanout forwards
    what is stored and gets no key."""
    assert _values()["encryption"] == {"existingSecret": "", "existingSecretKey": "encryption-keys"}
    for service in ("gateway", "worker"):
        env = {entry["name"]: entry for entry in _container(service)["env"]}
        assert env["ENCRYPTION_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "TEMPLATED", "key": "TEMPLATED"}
        assert re.search(r"if \.Values\.encryption\.existingSecret \}\}\s*\n(?:\s*#.*\n)?\s*- name: ENCRYPTION_KEYS",
                         _template(f"{service}-deployment.yaml")), f"{service}: ENCRYPTION_KEYS not conditional"
    assert "ENCRYPTION_KEYS" not in env_names(_template("fanout-deployment.yaml"))
    assert "ENCRYPTION_KEYS" not in env_names(_template("configmap.yaml"))
    assert "ENCRYPTION_KEYS" not in _settings_reads()["FanoutSettings"]
