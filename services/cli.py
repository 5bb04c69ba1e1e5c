"""``switchboard``: the one command line of the project.

This is the only module that reads the environment; every service gets a
typed settings object built here.

    switchboard run          Redis + gateway + worker + fanout, locally
                             (--gateways N --workers M: several, behind nginx)
    switchboard gateway      one gateway      (WebSocket pods)
    switchboard worker       one worker       (LangGraph turns)
    switchboard fanout       one fanout       (delivery to gateways)
    switchboard redis        the embedded Redis only
    switchboard token USER   print a signed development token for USER (HS256,
                             JWT_SECRET; with JWT_AUDIENCE / JWT_ISSUER if set)
    switchboard deadletters  show messages the workers gave up on (opened with
                             ENCRYPTION_KEYS when it is set)
    switchboard keygen       print a new key for ENCRYPTION_KEYS
    switchboard nodes        every live node by tier (--json)
    switchboard devices USER a user's devices and the gateway each is on
    switchboard chat         a terminal client (switchboard.client), resuming
                             exactly across restarts
    switchboard inspect, export, delete, backup, restore   the operator's
                             commands on one user or the whole Redis
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from switchboard.shared import logs
from switchboard.shared.acl import AclError
from switchboard.embedded_redis import EmbeddedRedisError
from switchboard.shared.settings import (
    DEV_JWT_SECRET, FanoutSettings, GatewaySettings, SettingsError, WorkerSettings,
)


def _run_service(name: str, main: Callable[[asyncio.Event], Awaitable[None]], env: Mapping[str, str]) -> int:
    logs.configure(env.get("LOG_LEVEL", "INFO"), env.get("LOG_FORMAT", "text"), service=name)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # `kill -USR1 PID` logs what every task is waiting on (for operators).
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
        await main(stop)

    loop = _new_event_loop(env.get("EVENT_LOOP", "uvloop"))
    try:
        loop.run_until_complete(runner())
    finally:
        # asyncio.run would wait for leftover tasks without a bound; a service
        # asked to stop must stop, so they get a few seconds, then the loop closes.
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=3.0))
            stuck = [t.get_name() for t in leftovers if not t.done()]
            if stuck:
                logging.getLogger("switchboard").error("exiting with %d stuck tasks: %s", len(stuck), stuck[:10])
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return 0


def _new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop (libuv, in C) where it is installed: each hop of a turn costs a
    process fewer microseconds of loop overhead. ``EVENT_LOOP=asyncio`` picks
    the standard loop."""
    if kind not in ("uvloop", "asyncio"):
        raise SettingsError(f"EVENT_LOOP={kind!r} is not one of uvloop, asyncio")
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # not on this platform (Windows): the standard loop
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _dump_tasks() -> None:
    import io

    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}\n")
        task.print_stack(file=out)
    logging.getLogger("switchboard.tasks").warning("task dump:\n%s", out.getvalue())


def cmd_gateway(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from switchboard.gateway.server import Gateway

    # Refuses the development JWT_SECRET unless SWITCHBOARD_DEV=1 (`switchboard run`
    # sets it), and HMAC secrets under 32 bytes: a SettingsError, exit status 2.
    settings = GatewaySettings.from_env(env)
    if settings.dev_mode:
        print("warning: development mode (SWITCHBOARD_DEV=1): never expose this gateway", file=sys.stderr)
    return _run_service("gateway", lambda stop: Gateway(settings).serve(stop=stop), env)


def cmd_worker(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from switchboard.worker.worker import Worker

    settings = WorkerSettings.from_env(env)
    return _run_service("worker", lambda stop: Worker(settings).serve(stop=stop), env)


def cmd_fanout(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from switchboard.fanout.service import Fanout

    settings = FanoutSettings.from_env(env)
    return _run_service("fanout", lambda stop: Fanout(settings).serve(stop=stop), env)


def cmd_token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from switchboard.gateway import auth

    print(auth.mint(args.user, env.get("JWT_SECRET") or DEV_JWT_SECRET, ttl=args.ttl,
                    audience=env.get("JWT_AUDIENCE") or None, issuer=env.get("JWT_ISSUER") or None))
    return 0


def cmd_chat(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The terminal client: a token given (``--token``) or minted for ``--user``
    with JWT_SECRET (a new one each time the gateway closes with 4004)."""
    import jwt

    from switchboard.client import chat
    from switchboard.gateway import auth

    if args.token:
        try:
            user = str(jwt.decode(args.token, options={"verify_signature": False}).get("sub") or "user")
        except jwt.PyJWTError as exc:
            print(f"switchboard chat: not a token: {exc}", file=sys.stderr)
            return 2
        given = args.token

        def provider() -> str:
            return given
    else:
        user = args.user or "dev-user"
        secret = env.get("JWT_SECRET") or DEV_JWT_SECRET
        audience, issuer = env.get("JWT_AUDIENCE") or None, env.get("JWT_ISSUER") or None

        def provider() -> str:
            return auth.mint(user, secret, ttl=86_400, audience=audience, issuer=issuer)
    state = Path(args.state) if args.state else chat.default_state_path(
        env.get("XDG_STATE_HOME"), env.get("HOME") or str(Path.home()), user)
    port = env.get("WEBSOCKET_PORT", "8765")
    options = chat.ChatOptions(url=args.url or [f"ws://127.0.0.1:{port}/ws"], token_provider=provider,
                               state_path=state, conversation=args.conversation, device_id=args.device,
                               json_lines=args.json)
    return chat.run(options)


def cmd_deadletters(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the newest dead-lettered messages as JSON lines (newest last)."""
    import json

    from switchboard.shared import keys
    from switchboard.shared.connection import make_sync_client
    from switchboard.shared.encryption import CannotOpen
    from switchboard.shared.settings import RedisSettings, encryption_from_env

    keyring = encryption_from_env(env)  # a bad key: SettingsError, exit status 2
    client = make_sync_client(RedisSettings.from_env(env))  # as the operator: REDIS_USERNAME=sb-admin
    entries = client.xrevrange(keys.dead_letters(), count=args.count)
    for entry_id, fields in reversed(entries):
        # Sealed fields are opened; one no key opens stays as stored, and is named.
        unreadable = []
        for name in ("text", "reason"):
            try:
                if name in fields:
                    fields[name] = keyring.open(fields[name])
            except CannotOpen:
                unreadable.append(name)
        print(json.dumps({"id": entry_id, **fields, **({"unreadable": unreadable} if unreadable else {})}))
    client.close()
    return 0


def cmd_keygen(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """A new random key for ENCRYPTION_KEYS (rotation: docs/security.md)."""
    from switchboard.shared.encryption import generate_key

    print(generate_key())
    return 0


def cmd_acl(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the users of ``switchboard.shared.acl`` as an ACL file (or as
    ``ACL SETUSER`` commands): the passwords come from ``--passwords DIR``
    (one file per user, named after it), and ``--generate`` makes the missing
    ones -- written into DIR (0600) when it is given, else printed in the
    output itself (then the output is a secret)."""
    from switchboard.shared import acl

    tiers = list(acl.USERS)
    if args.passwords and args.generate:
        passwords = acl.ensure_passwords(args.passwords, tiers)
    elif args.passwords:
        passwords = acl.read_passwords(args.passwords, tiers)
    elif args.generate:
        passwords = {tier: acl.new_password() for tier in tiers}
    else:
        raise acl.AclError("give --passwords DIR (one file per user), --generate, or both")
    hashed = bool(args.passwords)  # generated passwords printed only here must be readable
    render = acl.setuser_commands if args.commands else acl.acl_file
    sys.stdout.write(render(passwords, hashed=hashed))
    return 0


def _embedded(env: Mapping[str, str]):
    from switchboard.embedded_redis import EmbeddedRedis, free_port, port_in_use

    port = int(env.get("REDIS_PORT") or 6379)
    if port_in_use(port):
        port = free_port()
    return EmbeddedRedis(env.get("DATA_DIR", ".data") + "/redis", port=port)


def cmd_redis(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    redis = _embedded(env)
    redis.start()
    print(f"embedded Redis at {redis.address} (data in {redis.data_dir}); Ctrl-C stops it\n"
          f"  {_users_line(redis)}", flush=True)
    try:
        _wait_for_signal()
    finally:
        redis.stop()
    return 0


def _users_line(redis) -> str:  # noqa: ANN001 - EmbeddedRedis, imported lazily
    """Where the embedded Redis's users find their passwords (never the passwords)."""
    from switchboard.shared import acl

    names = ", ".join(user.name for user in acl.USERS.values())
    return (f"Users:      {names}; each logs in with REDIS_USERNAME=<user> "
            f"REDIS_PASSWORD_FILE={redis.users_dir}/<user>")


def _wait_for_signal() -> None:
    stop = {"now": False}

    def handler(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop["now"]:
        time.sleep(0.2)


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The embedded default: every part of the system on this machine
    (``--gateways N --workers M``: several of each, behind nginx)."""
    from switchboard import localrun

    return localrun.run(localrun.Layout.from_args(args.gateways, args.workers, args.fanouts, args.nginx), env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="switchboard", description="LangGraph conversations over WebSockets.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run Redis and every service locally")
    run.add_argument("--gateways", type=int, default=1, metavar="N", help="gateways (more than one: behind nginx)")
    run.add_argument("--workers", type=int, default=1, metavar="M", help="conversation workers")
    run.add_argument("--fanouts", type=int, default=None, metavar="K",
                     help="fanouts (default: 1 for one gateway and one worker, else 2)")
    run.add_argument("--nginx", action="store_true", help="nginx in front of the gateways even for one")
    run.set_defaults(func=cmd_run)
    sub.add_parser("gateway", help="run one gateway").set_defaults(func=cmd_gateway)
    sub.add_parser("worker", help="run one conversation worker").set_defaults(func=cmd_worker)
    sub.add_parser("fanout", help="run one fanout").set_defaults(func=cmd_fanout)
    sub.add_parser("redis", help="run the embedded Redis only").set_defaults(func=cmd_redis)
    from switchboard import admin

    dead = sub.add_parser("deadletters", help="show messages the workers gave up on (or retry one)")
    dead.add_argument("--count", type=int, default=20)
    dead.set_defaults(func=cmd_deadletters)
    retry = dead.add_subparsers(dest="action").add_parser(
        "retry", help="queue a dead-lettered message again, so a worker answers it (once)")
    retry.add_argument("id", help="the dead letter's id (as `switchboard deadletters` prints it)")
    retry.set_defaults(func=admin.cmd_deadletters_retry)
    export = sub.add_parser("export", help="one user's conversations and events as JSON lines")
    export.add_argument("user")
    export.add_argument("--out", metavar="FILE", help="write to FILE (default: standard output)")
    export.set_defaults(func=admin.cmd_export)
    delete = sub.add_parser("delete", help="erase everything Redis holds of one user (a dry run without --yes)")
    delete.add_argument("user")
    delete.add_argument("--yes", action="store_true", help="delete (without it: only say what would go)")
    delete.add_argument("--force", action="store_true", help="even while devices of the user are connected")
    delete.set_defaults(func=admin.cmd_delete)
    sub.add_parser("keygen", help="print a new key for ENCRYPTION_KEYS").set_defaults(func=cmd_keygen)
    from switchboard import nodes_cli

    listing = sub.add_parser("nodes", help="list every live gateway, worker and fanout (the node registry)")
    listing.add_argument("--json", action="store_true", help="one JSON object: tier -> its nodes")
    listing.set_defaults(func=nodes_cli.cmd_nodes)
    devices = sub.add_parser("devices", help="list a user's connected devices and the gateway each is on")
    devices.add_argument("user")
    devices.add_argument("--json", action="store_true", help="a JSON list")
    devices.set_defaults(func=nodes_cli.cmd_devices)
    inspect = sub.add_parser("inspect", help="everything Redis holds about one user (read only)")
    inspect.add_argument("user")
    inspect.add_argument("--json", action="store_true", help="one JSON object")
    inspect.add_argument("--dead-letters", type=int, default=admin.DEAD_LETTERS_SEARCHED,
                         help="how many of the newest dead letters to search for the user's")
    inspect.set_defaults(func=admin.cmd_inspect)
    from switchboard import backup, restore

    snapshot = sub.add_parser("backup", help="a consistent snapshot of the whole Redis (its RDB) into a directory")
    snapshot.add_argument("--out", required=True, metavar="DIR", help="where dump.rdb and manifest.json go")
    snapshot.add_argument("--force", action="store_true", help="replace a backup already in DIR")
    snapshot.add_argument("--timeout", type=float, default=backup.SILENCE_TIMEOUT, metavar="S",
                          help="give up when Redis sends nothing for S seconds")
    snapshot.set_defaults(func=backup.cmd_backup)
    put_back = sub.add_parser("restore", help="put a backup in place for the embedded Redis's next start")
    put_back.add_argument("dir", metavar="DIR", help="a directory written by `switchboard backup`")
    put_back.add_argument("--data-dir", metavar="D",
                          help="the embedded Redis's data directory (default: $DATA_DIR/redis, i.e. .data/redis)")
    put_back.set_defaults(func=restore.cmd_restore)
    token = sub.add_parser("token", help="print a signed development token")
    token.add_argument("user")
    token.add_argument("--ttl", type=float, default=86_400.0, help="seconds until the token expires")
    token.set_defaults(func=cmd_token)
    talk = sub.add_parser("chat", help="a terminal client: type messages, see replies stream (/help)")
    who = talk.add_mutually_exclusive_group()
    who.add_argument("--user", metavar="U", help="mint a development token for U with JWT_SECRET (default dev-user)")
    who.add_argument("--token", metavar="T", help="connect with this token")
    talk.add_argument("--conversation", metavar="C", default="chat", help="the conversation to start in")
    talk.add_argument("--url", metavar="URL", action="append",
                      help="gateway URL (repeat for several, tried in turn; default ws://127.0.0.1:$WEBSOCKET_PORT/ws)")
    talk.add_argument("--state", metavar="FILE",
                      help="state file: device id and position (default $XDG_STATE_HOME/switchboard/chat-USER.json)")
    talk.add_argument("--device", metavar="D", help="device id (default: the state file's, else a new one)")
    talk.add_argument("--json", action="store_true", help="print each event as a JSON line instead of text")
    talk.set_defaults(func=cmd_chat)
    users = sub.add_parser("acl", help="print the Redis ACL users, one per tier (docs/security.md)")
    users.add_argument("--passwords", metavar="DIR",
                       help="directory of password files named after the users (sb-gateway, sb-worker, ...)")
    users.add_argument("--generate", action="store_true",
                       help="new random passwords for users without a file (written into DIR if given, "
                            "else printed in the output)")
    users.add_argument("--commands", action="store_true",
                       help="ACL SETUSER commands for redis-cli instead of an ACL file")
    users.set_defaults(func=cmd_acl)
    args = parser.parse_args(argv)
    try:
        return args.func(args, os.environ)
    except (SettingsError, AclError, EmbeddedRedisError) as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
