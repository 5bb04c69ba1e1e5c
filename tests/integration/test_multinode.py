"""`switchboard run --gateways 2 --workers 2` as a developer runs it: the
embedded Redis, two gateways behind nginx, two workers, two fanouts. Two
devices of one user chat through nginx; one gateway is stopped; its device
comes back through nginx on the other and loses and repeats nothing; then
the run is stopped and every process it started has exited. Skipped where
nginx is not installed (`.ci/run` installs it)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from switchboard import nginx
from switchboard.embedded_redis import free_port, port_in_use
from switchboard.shared import keys
from tests.support.client import Device

pytestmark = pytest.mark.skipif(nginx.binary() is None, reason=f"nginx is not installed: {nginx.INSTALL_HINT}")

_ROW = re.compile(r"^\s+((?:gateway|worker|fanout)-\d+|nginx)\s+(\d+)\s+(\S+)\s+(\S+)$", re.M)


def _free_block(count: int) -> int:
    """The first of ``count`` consecutive free ports below the kernel's
    ephemeral range: `run` gives its services consecutive ports, and one
    inside that range may be taken by any outgoing connection (the
    services' own Redis clients) between the check and the bind."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        base = rng.randrange(20000, low - count)
        if not any(port_in_use(port) for port in range(base, base + count)):
            return base


def _wait_for(path: Path, marker: str, process: subprocess.Popen, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while marker not in (text := path.read_text(errors="replace")):
        assert time.monotonic() < deadline and process.poll() is None, text
        time.sleep(0.1)
    return text


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _using(path: str) -> list[int]:
    """Processes whose command line names ``path`` (nginx's prefix, Redis's data)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if path in (entry / "cmdline").read_bytes().decode(errors="replace") and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _gateway_of(device: Device, by_port: dict[int, str]) -> str:
    return by_port[int(device.ws.response.headers["X-Switchboard-Gateway"].rsplit(":", 1)[1])]


async def test_run_with_two_gateways_behind_nginx_survives_a_gateway_stopping_and_stops_everything(tmp_path):
    data = tmp_path / "data"
    ws_port, redis_port = _free_block(3), free_port()  # nginx, then the two gateways
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(DATA_DIR=str(data), WEBSOCKET_PORT=str(ws_port), REDIS_PORT=str(redis_port),
               METRICS_PORT=str(_free_block(6)), PYTHONUNBUFFERED="1")
    out = tmp_path / "run.log"
    with open(out, "wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "run", "--gateways", "2", "--workers", "2"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    pids: dict[str, int] = {}
    admin = None
    try:
        text = _wait_for(out, "Ctrl-C stops everything.", run)
        url = re.search(r"WebSocket:\s+(\S+)", text).group(1)
        token = re.search(r"Dev token for user 'dev-user'.*\n\s+(\S+)", text).group(1)
        rows = {name: (int(pid), listens, metrics) for name, pid, listens, metrics in _ROW.findall(text)}
        assert sorted(rows) == ["fanout-1", "fanout-2", "gateway-1", "gateway-2", "nginx", "worker-1", "worker-2"]
        pids = {name: pid for name, (pid, _, _) in rows.items()}
        assert url == f"ws://127.0.0.1:{ws_port}/ws" == rows["nginx"][1]
        metrics = [m for name, (_, _, m) in rows.items() if name != "nginx"]
        assert len(set(metrics)) == 6 and all(m.isdigit() for m in metrics), rows  # one METRICS_PORT each
        by_port = {int(listens.rsplit(":", 1)[1].split("/")[0]): name
                   for name, (_, listens, _) in rows.items() if name.startswith("gateway")}

        user = "dev-user"
        phone, tablet = Device(url, token, "phone"), Device(url, token, "tablet")
        await phone.connect()
        await tablet.connect()
        assert {_gateway_of(phone, by_port), _gateway_of(tablet, by_port)} == {"gateway-1", "gateway-2"}
        await phone.send("c", "m1", "one")
        await tablet.wait_reply("m1", timeout=60)  # the workers may still be loading the graph
        await phone.wait_reply("m1")

        leaving = _gateway_of(phone, by_port)
        os.kill(pids[leaving], signal.SIGTERM)
        await phone.wait_for(lambda: phone.close_code is not None)
        assert phone.close_code == 1001
        await tablet.send("c", "m2", "two, while the phone is away")
        await tablet.wait_reply("m2")
        welcome = await phone.connect(last_id=phone.event_ids()[-1], epoch=phone.welcome["epoch"])
        assert welcome["recovered"] is True and _gateway_of(phone, by_port) != leaving
        await phone.wait_reply("m2")
        await phone.send("c", "m3", "three")
        for device in (phone, tablet):
            await device.wait_reply("m3")
        _wait_for(out, f"{leaving} (pid {pids[leaving]}) exited with 0; 1 gateway(s) left", run)
        assert run.poll() is None  # the others go on

        users = data / "redis" / "users"
        admin = aioredis.Redis(port=redis_port, username="sb-admin", password=(users / "sb-admin").read_text().strip(),
                               decode_responses=True)
        stream = [(entry_id, f["kind"], f["cmid"]) for entry_id, f in await admin.xrange(keys.outbound(user))]
        assert [(kind, cmid) for _, kind, cmid in stream] == [
            ("user", "m1"), ("assistant", "m1"), ("user", "m2"), ("assistant", "m2"), ("user", "m3"), ("assistant", "m3")]
        for device in (phone, tablet):  # every event once, in stream order, across the reconnect
            assert device.event_ids() == [entry_id for entry_id, _, _ in stream]

        listing = json.loads(subprocess.run(
            [sys.executable, "-m", "switchboard.cli", "nodes", "--json"], check=True, capture_output=True, text=True,
            env={**env, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "REDIS_USERNAME": "sb-admin",
                 "REDIS_PASSWORD_FILE": str(users / "sb-admin")}).stdout)
        remaining = ({"gateway-1", "gateway-2"} - {leaving}).pop()
        assert {tier: {(n["id"], n["pid"]) for n in found} for tier, found in listing.items()} == {
            "gateway": {(remaining, pids[remaining])}, "worker": {("worker-1", pids["worker-1"]),
                                                                  ("worker-2", pids["worker-2"])},
            "fanout": {("fanout-1", pids["fanout-1"]), ("fanout-2", pids["fanout-2"])}}
        for device in (phone, tablet):
            await device.close()
    finally:
        if admin is not None:
            await admin.aclose()
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
    assert run.returncode == 0, out.read_text()
    assert not [name for name, pid in pids.items() if _alive(pid)], out.read_text()
    assert not _using(str(data)), "nginx or Redis processes left behind"  # nginx's workers, Redis
    assert not any(port_in_use(port) for port in (ws_port, redis_port, *by_port))


def test_ctrl_c_stops_every_process_of_the_run(tmp_path):
    """Ctrl-C in a terminal signals the whole process group: the run and its
    children all get SIGINT at once, and nothing may be left behind."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(DATA_DIR=str(data), WEBSOCKET_PORT=str(_free_block(3)), REDIS_PORT=str(free_port()),
               METRICS_PORT="0", PYTHONUNBUFFERED="1")
    out = tmp_path / "run.log"
    with open(out, "wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "run", "--gateways", "2"], env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = _wait_for(out, "Ctrl-C stops everything.", run)
        pids = [int(pid) for _, pid, _, _ in _ROW.findall(text)]
        assert len(pids) == 6 and "Health:     off (METRICS_PORT=0)" in text  # 2 gateways, 1 worker, 2 fanouts, nginx
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(60) == 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert not [pid for pid in pids if _alive(pid)], out.read_text()
    assert not _using(str(data)), out.read_text()
