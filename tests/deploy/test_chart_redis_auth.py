"""The chart gives each tier its own Redis ACL user (``redis.auth.<tier>``):
that tier's Secret is mounted into that tier's pods only, where
``REDIS_PASSWORD_FILE`` says, and the default usernames are the ones
``switchboard acl`` makes."""

from __future__ import annotations

import re

import pytest

from switchboard.shared import acl
from tests.deploy.test_chart import SERVICES, _container, _manifest, _template, _values


@pytest.mark.parametrize("tier", SERVICES)
def test_each_tier_mounts_only_its_own_redis_password(tier):
    container = _container(tier)
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["REDIS_USERNAME"]["value"] == "TEMPLATED"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "redis-auth")
    assert mount["readOnly"] is True
    assert env["REDIS_PASSWORD_FILE"]["value"] == f"{mount['mountPath']}/password"
    assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]  # the passwordAsEnv branch
    volume = next(v for v in _manifest(f"{tier}-deployment.yaml")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "redis-auth")
    assert volume["secret"]["items"] == [{"key": "TEMPLATED", "path": "password"}]

    text = _template(f"{tier}-deployment.yaml")
    named = set(re.findall(r"\.Values\.redis\.auth\.(\w+)", text))
    assert named == {tier}, f"{tier}-deployment.yaml reads the Redis credentials of {sorted(named - {tier})}"


def test_the_default_usernames_are_the_acl_users():
    auth = _values()["redis"]["auth"]
    assert set(auth) == set(SERVICES)
    for tier, values in auth.items():
        assert values["username"] == acl.USERS[tier].name
        assert values["existingSecret"] == "" and values["passwordAsEnv"] is False
