"""The script home: every script loads into Redis, names only known fields,
and gets each library it includes once."""

import re

import pytest
import redis

from switchboard.shared import scripts
from switchboard.shared.fields import lua_table


def test_every_script_compiles_in_redis(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        for name in scripts.names():
            assert client.script_load(scripts.source(name))  # a syntax error is a ResponseError here
    finally:
        client.close()


def test_scripts_name_only_fields_that_are_defined():
    known = set(lua_table())
    for path in [*scripts.LUA_DIR.glob("*.lua"), *scripts.LUA_DIR.glob("lib/*.lua")]:
        used = set(re.findall(r"\bF\.(\w+)", path.read_text()))
        assert used <= known, f"{path.name} uses undefined fields {used - known}"


def test_each_library_is_included_once_before_the_script():
    text = scripts.source("commit")
    assert text.count("local function append_event") == 1
    assert text.count("local function next_entry") == 1
    assert text.index("local function store_checkpoint") < text.index("-- A turn's reply, exactly once")
    assert text.startswith("local F = {")


def test_a_missing_script_is_a_clear_error():
    with pytest.raises(scripts.ScriptError, match="no Lua script 'nope'"):
        scripts.source("nope")
