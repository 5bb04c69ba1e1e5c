"""The embedded default, as a new user runs it: `switchboard run`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import redis

from switchboard.embedded_redis import free_port, port_in_use
from tests.support.client import Device


async def test_switchboard_run_prints_how_to_connect_and_serves_two_devices(tmp_path):
    ws_port, redis_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(DATA_DIR=str(tmp_path / "data"), WEBSOCKET_PORT=str(ws_port), REDIS_PORT=str(redis_port),
               PYTHONUNBUFFERED="1")
    log = open(tmp_path / "run.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "run"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        text = ""
        while "Switchboard is running." not in text:
            assert time.monotonic() < deadline and process.poll() is None, text
            time.sleep(0.1)
            text = (tmp_path / "run.log").read_text()
        url = re.search(r"WebSocket:\s+(\S+)", text).group(1)
        token = re.search(r"Dev token for user 'dev-user'.*\n\s+(\S+)", text).group(1)
        assert url == f"ws://127.0.0.1:{ws_port}/ws"
        assert f"redis://127.0.0.1:{redis_port}/0" in text
        health = dict(re.findall(r"^\s+(gateway|worker|fanout):\s+(http://\S+/readyz)$", text, re.M))
        assert set(health) == {"gateway", "worker", "fanout"} and len(set(health.values())) == 3, text
        for readyz in health.values():  # each tier's own port; the worker may still be loading its graph
            while True:
                try:
                    assert json.loads(urllib.request.urlopen(readyz, timeout=5).read()) == {"status": "ok"}
                    break
                except urllib.error.URLError as exc:  # not listening yet, or 503: not ready yet
                    assert getattr(exc, "code", 503) == 503 and time.monotonic() < deadline, (readyz, exc)
                    time.sleep(0.1)

        laptop, phone = Device(url, token, "laptop"), Device(url, token, "phone")
        await laptop.connect()
        await phone.connect()
        await laptop.send("demo", "m1", "Hello from the laptop")
        reply = await phone.wait_reply("m1", timeout=30)
        assert reply["text"].startswith("Turn 1.")
        await laptop.wait_reply("m1")
        assert laptop.event_ids() == phone.event_ids()
        # Each service logs in as its own tier's user; no password is printed.
        users = tmp_path / "data" / "redis" / "users"
        assert not any(path.read_text().strip() in text for path in users.iterdir())
        admin = redis.Redis(port=redis_port, username="sb-admin", password=(users / "sb-admin").read_text().strip())
        logins = {c["user"] for c in admin.client_list() if c["id"] != str(admin.client_id())}
        admin.close()
        assert logins == {"sb-gateway", "sb-worker", "sb-fanout"}, logins
        await laptop.close()
        await phone.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()
    assert not port_in_use(redis_port) and not port_in_use(ws_port)  # everything stopped
    assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir()  # AOF persistence


def test_switchboard_token_prints_a_token_for_the_configured_secret():
    from switchboard.gateway import auth

    out = subprocess.run([sys.executable, "-m", "switchboard.cli", "token", "carol"], check=True,
                         capture_output=True, text=True, env=dict(os.environ, JWT_SECRET="s3cret-for-this-test-only-0123456789")).stdout
    assert auth.verify(out.strip(), "s3cret-for-this-test-only-0123456789") == "carol"
