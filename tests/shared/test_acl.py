"""The ACL table (shared/acl.py): patterns that match exactly their key
family, the checkpointer's real keys, command names Redis knows, the
rendered file, and the password files. What the rules allow and refuse on a
real server is tests/integration/test_redis_acl.py."""

from __future__ import annotations

import os
import stat
from fnmatch import fnmatchcase

import pytest
import redis
import redis.asyncio as aioredis
from langgraph.checkpoint.redis import base as library_base
from langgraph.checkpoint.redis.key_registry import WRITE_KEYS_ZSET_PREFIX, CheckpointKeyRegistry

from switchboard.shared import acl, keys
from switchboard.shared.checkpoints import SwitchboardRedisSaver

THREAD = keys.thread_id("alice", "c:1")

#: One real key (or channel) of each family, by the pattern that must match it.
EXAMPLES = {
    acl.DEDUP: keys.dedup("alice", "m-1"),
    acl.INBOUND: keys.inbound("alice", "c:1"),
    acl.CONVERSATION: keys.conversation("alice", "c:1"),
    acl.CONVERSATIONS: keys.conversations("alice"),
    acl.USAGE: keys.usage("alice"),
    acl.LEASE: keys.lease("alice", "c:1"),
    acl.STAGED: keys.staged_checkpoint("alice", "c:1", "a1b2c3.d4e5f6"),
    acl.THREAD_CHECKPOINTS: keys.thread_checkpoints(keys.thread_id("alice", "c:1", 2)),
    acl.OUTBOUND: keys.outbound("alice"),
    acl.META: keys.meta("alice"),
    acl.OFFSETS: keys.offsets("alice"),
    acl.DEVICES: keys.devices("alice"),
    acl.DEVICE_OWNERS: keys.device_owners("alice"),
    acl.IP_CONNECTIONS: keys.ip_connections("10.0.0.1"),
    acl.WORK: keys.work(3),
    acl.DEAD_LETTERS: keys.dead_letters(),
    acl.DEAD_COPIES: keys.dead_copies("alice"),
    acl.FANOUTS: keys.fanout_members(),
    acl.FANOUT_ALIVE: keys.fanout_alive("fanout-1"),
    acl.NOTIFY: keys.notify("alice"),
    acl.CANCELS: keys.cancels(),
    acl.FANOUT_CONTROL: keys.fanout_control("fanout-1"),
    acl.GATEWAY_DELIVERY: keys.gateway_delivery("gw-1"),
    acl.CHECKPOINTS: f"checkpoint:{THREAD}:__empty__:1f0",
    acl.CHECKPOINT_LATEST: f"checkpoint_latest:{THREAD}:__empty__",
    acl.CHECKPOINT_WRITES: f"checkpoint_write:{THREAD}:__empty__:1f0:task:0",
    acl.WRITE_REGISTRY: f"write_keys_zset:{THREAD}:__empty__:1f0",
    **{index: index for index in acl.CHECKPOINT_INDEXES},
    **{keys.node(tier, acl.ANY): keys.node(tier, f"{tier}-1") for tier in acl.SERVICE_TIERS},
    **{keys.node_members(tier): keys.node_members(tier) for tier in acl.SERVICE_TIERS},
}


def _patterns(user: acl.User) -> set[str]:
    return {k.pattern for grant in user.grants for k in grant.keys} | {c for g in user.grants for c in g.channels}


def test_every_pattern_in_the_table_has_an_example():
    used = set().union(*(_patterns(user) for user in acl.USERS.values()))
    assert used <= EXAMPLES.keys(), f"patterns without an example key: {sorted(used - EXAMPLES.keys())}"


@pytest.mark.parametrize("pattern", sorted(EXAMPLES))
def test_a_pattern_matches_its_family_and_no_other(pattern):
    # Redis's glob, like fnmatch, has `*`, `?` and `[...]`; braces are literal.
    assert fnmatchcase(EXAMPLES[pattern], pattern), (pattern, EXAMPLES[pattern])
    others = [key for other, key in EXAMPLES.items() if other != pattern and fnmatchcase(key, pattern)]
    assert not others, f"{pattern} also matches {others}"


def test_the_checkpoint_patterns_match_the_keys_the_library_makes():
    saver = SwitchboardRedisSaver(redis_client=aioredis.Redis())
    made = {
        acl.CHECKPOINTS: saver._make_redis_checkpoint_key(THREAD, "", "1f0"),
        acl.CHECKPOINT_LATEST: saver._make_redis_checkpoint_latest_key(THREAD, ""),
        acl.CHECKPOINT_WRITES: saver._make_redis_checkpoint_writes_key(THREAD, "", "1f0", "task", 0),
        acl.WRITE_REGISTRY: CheckpointKeyRegistry.make_write_keys_zset_key(THREAD, "", "1f0"),
    }
    for pattern, key in made.items():
        assert fnmatchcase(key, pattern), (pattern, key)
        assert key == EXAMPLES[pattern]
    subgraph = saver._make_redis_checkpoint_key(THREAD, "child:1", "1f1")  # a subgraph's namespace
    assert fnmatchcase(subgraph, acl.CHECKPOINTS)
    assert (saver.checkpoints_index.name, saver.checkpoint_writes_index.name) == acl.CHECKPOINT_INDEXES
    assert (library_base.CHECKPOINT_PREFIX, library_base.CHECKPOINT_WRITE_PREFIX, WRITE_KEYS_ZSET_PREFIX) == (
        acl.CHECKPOINT_PREFIX, acl.CHECKPOINT_WRITE_PREFIX, acl.WRITE_REGISTRY_PREFIX)


def test_every_command_in_the_table_is_one_redis_knows(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for user in acl.USERS.values():
            for command in sorted(user.commands()):
                # COMMAND INFO takes `command|subcommand` and answers nil for an unknown one.
                info = client.execute_command("COMMAND", "INFO", command)
                assert any(info.values()), f"{user.name}: Redis has no {command}"
    finally:
        client.close()


def test_rights_are_named_commands_not_categories():
    for user in (acl.GATEWAY, acl.WORKER, acl.FANOUT):
        for grant in user.grants:
            assert grant.commands and all(c == c.lower() and not c.startswith("@") for c in grant.commands), grant
            assert grant.why


def test_the_file_disables_default_and_holds_no_password_when_hashed():
    passwords = {tier: f"pw-{tier}-0123456789" for tier in acl.USERS}
    text = acl.acl_file(passwords)
    lines = text.splitlines()
    assert lines[0] == "user default reset off ~* &* +@all"
    assert [line.split()[1] for line in lines[1:]] == [u.name for u in acl.USERS.values()]
    for tier, password in passwords.items():
        assert password not in text
        assert acl.password_hash(password) in text
    assert not any(line.startswith("#") for line in lines)  # an ACL file may not have comments
    plain = acl.acl_file({"fanout": "secret-1"}, hashed=False)
    assert ">secret-1" in plain and "sb-gateway" not in plain


def test_the_commands_quote_each_selector():
    line = acl.setuser_commands({"fanout": "x"}).strip()
    assert line.startswith("ACL SETUSER sb-fanout reset on #")
    assert '"(%R~sb:{u:*}:out +xrange)"' in line


def test_an_unknown_tier_or_a_missing_password_is_a_typed_error(tmp_path):
    with pytest.raises(acl.AclError):
        acl.setuser_rules("cache", "x")
    with pytest.raises(acl.AclError):
        acl.read_passwords(tmp_path)
    (tmp_path / "sb-gateway").write_text("\n")
    with pytest.raises(acl.AclError, match="empty"):
        acl.read_passwords(tmp_path, ["gateway"])


def test_password_files_are_made_once_private_and_read_without_their_line_end(tmp_path):
    directory = tmp_path / "users"
    first = acl.ensure_passwords(directory)
    assert set(first) == set(acl.USERS) and len(set(first.values())) == len(first)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for tier in acl.USERS:
        path = acl.password_path(directory, tier)
        assert path.name == acl.USERS[tier].name
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(acl.password_path(directory, "worker"), 0o644)  # a copy that left it readable
    assert acl.ensure_passwords(directory) == first
    assert stat.S_IMODE(os.stat(acl.password_path(directory, "worker")).st_mode) == 0o600
    (directory / "sb-fanout").write_text("from-a-secret\r\n")
    assert acl.read_passwords(directory)["fanout"] == "from-a-secret"
