"""The chart gives each tier its own Redis ACL user (``redis.auth.<tier>``):
that tier's Secret is mounted into that tier's pods only, where
``REDIS_PASSWORD_FILE`` says, and the default usernames are the ones
``switchboard acl`` makes.

The templates are read as text, as ``test_chart.py`` reads them: every
Go-template action alone on its line(s) is dropped (so both branches of an
``if`` stay), every other action becomes ``TEMPLATED``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from switchboard.shared import acl

CHART = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "switchboard"
TIERS = ("gateway", "worker", "fanout")

_ACTION = r"\{\{(?:(?!\}\}).)*\}\}"
_STANDALONE = re.compile(rf"^[ \t]*(?:{_ACTION}[ \t]*)+\n", re.M | re.S)


def _pod(tier: str) -> tuple[str, dict]:
    text = (CHART / "templates" / f"{tier}-deployment.yaml").read_text()
    skeleton = re.sub(_ACTION, "TEMPLATED", _STANDALONE.sub("", text), flags=re.S)
    deployment = next(doc for doc in yaml.safe_load_all(skeleton) if doc and doc.get("kind") == "Deployment")
    return text, deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_mounts_only_its_own_redis_password(tier):
    text, pod = _pod(tier)
    container = pod["containers"][0]
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["REDIS_USERNAME"]["value"] == "TEMPLATED"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "redis-auth")
    assert mount["readOnly"] is True
    assert env["REDIS_PASSWORD_FILE"]["value"] == f"{mount['mountPath']}/password"
    assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]  # the passwordAsEnv branch
    volume = next(v for v in pod["volumes"] if v["name"] == "redis-auth")
    assert volume["secret"]["items"] == [{"key": "TEMPLATED", "path": "password"}]
    named = set(re.findall(r"\.Values\.redis\.auth\.(\w+)", text))
    assert named == {tier}, f"{tier}-deployment.yaml reads the Redis credentials of {sorted(named - {tier})}"


def test_the_default_usernames_are_the_acl_users():
    auth = yaml.safe_load((CHART / "values.yaml").read_text())["redis"]["auth"]
    assert set(auth) == set(TIERS)
    for tier, values in auth.items():
        assert values["username"] == acl.USERS[tier].name
        assert values["existingSecret"] == "" and values["passwordAsEnv"] is False
