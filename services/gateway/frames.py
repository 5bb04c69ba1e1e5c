"""The frames a device sends after ``hello``, answered: each decoded, checked
against the limits, turned into a store call and its reply (docs/protocol.md).

The connection's life -- admission, ``hello``, token expiry and ``refresh``
-- is the server's (:mod:`.server`); here is what one frame does.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from switchboard.shared import connection as redisconn
from switchboard.shared import protocol as p
from switchboard.shared import streamids
from switchboard.shared.encryption import CannotOpen
from switchboard.shared.metrics import GatewayMetrics
from switchboard.shared.project import GraphChoice
from switchboard.shared.settings import GatewaySettings

from . import forks
from .history import HistoryReader
from .hub import Connection
from .store import Fork, GatewayStore, NotInterrupted, NotRunning, OverLimit

log = logging.getLogger(__name__)


class Frames:
    def __init__(self, settings: GatewaySettings, store: GatewayStore, history: HistoryReader, graphs: GraphChoice,
                 metrics: GatewayMetrics, *, refresh: Callable[[Connection, str], Awaitable[None]]):
        self.settings = settings
        self.store = store
        self.history = history
        self.graphs = graphs
        self.metrics = metrics
        self._refresh = refresh  #: a ``refresh`` frame: the server's, which owns the token deadlines

    async def handle(self, conn: Connection, data: str | bytes) -> None:
        """Decode one frame and answer it; every failure is an ``error`` frame
        to the client (a storage outage: ``unavailable``), never an exception."""
        try:
            frame = p.decode_client_frame(data, self.settings.max_message_size)
        except p.FrameError as exc:
            self.metrics.received["invalid"].inc()
            await conn.reply(exc.to_frame())
            return
        self.metrics.frame_received(frame)
        try:
            await self._dispatch(conn, frame)
        except p.FrameError as exc:
            await conn.reply(exc.to_frame())
        except redisconn.NotReplicated as exc:  # REDIS_WAIT_REPLICAS: stored, not yet on enough replicas; a resend is safe
            log.warning("not replicated for user=%s conn=%s: %s", conn.user, conn.id, exc, extra=conn.log_context)
            await conn.reply(p.Error(code=p.ErrorCode.UNAVAILABLE, message="storage not replicated in time, retry",
                                     client_msg_id=getattr(frame, "client_msg_id", None)))
        except (RedisError, OSError) as exc:
            log.warning("storage error for user=%s conn=%s: %s", conn.user, conn.id, exc, extra=conn.log_context)
            await conn.reply(p.Error(code=p.ErrorCode.UNAVAILABLE, message="storage unavailable, retry",
                                     client_msg_id=getattr(frame, "client_msg_id", None)))
        except Exception:
            log.exception("frame handling failed for user=%s conn=%s", conn.user, conn.id, extra=conn.log_context)
            await conn.reply(p.Error(code=p.ErrorCode.INTERNAL, message="internal error",
                                     client_msg_id=getattr(frame, "client_msg_id", None)))

    async def _conversations(self, conn: Connection, limit: int, before: str | None) -> p.ConversationsResult:
        """A page of the user's conversations; titles opened (one no key opens: None)."""
        cursor = None
        if before is not None:
            score, _, conversation = before.partition("|")
            cursor = (int(score), conversation)
        rows, more = await self.store.list_conversations(conn.user, limit=limit, before=cursor)

        def title(stored: str | None) -> str | None:
            try:
                return self.settings.encryption.open(stored) if stored else None
            except CannotOpen:
                return None

        def pending(row) -> p.PendingInterrupt | None:  # noqa: ANN001
            if row.interrupt_cmid is None or row.interrupt_text is None:
                return None
            try:
                asked = json.loads(self.settings.encryption.open(row.interrupt_text))
            except (CannotOpen, ValueError):
                asked = {"id": "", "value": None}
            return p.PendingInterrupt(client_msg_id=row.interrupt_cmid, id=asked.get("id", ""),
                                      value=asked.get("value"))

        listed = [p.ConversationInfo(conversation_id=r.id, title=title(r.title), created_at=r.created_ms,
                                     updated_at=r.updated_ms, message_count=r.count, graph=r.graph,
                                     pending_interrupt=pending(r)) for r in rows]
        return p.ConversationsResult(conversations=listed,
                                     next=f"{rows[-1].updated_ms}|{rows[-1].id}" if more and rows else None)

    async def _fork(self, conn: Connection, conv: str, cmid: str, *, regenerate: bool) -> tuple[Fork, forks.Target]:
        """Where a ``regenerate``/``edit`` of message ``cmid`` forks (:mod:`.forks`)."""
        done, generation = await self.store.progress(conn.user, conv)
        try:
            latest = await self.history.latest(conn.user, conv, generation)
        except CannotOpen:
            raise p.FrameError(p.ErrorCode.UNREADABLE, "this conversation's state cannot be decrypted with this "
                               "server's keys", cmid) from None
        if latest is None:
            raise p.FrameError(p.ErrorCode.UNKNOWN_MESSAGE, f"no message {cmid!r} in {conv!r}", cmid)
        target = forks.locate(latest.checkpoint.get("channel_values", {}).get("messages", []), cmid,
                              last=regenerate)
        base = await forks.fork_base(self.history.saver, latest, target.id, cmid)
        return Fork("regenerate" if regenerate else "edit", cmid, base, done, generation), target

    async def _repeated(self, conn: Connection, cmid: str, dedup_id: str) -> bool:
        """A fork resent after it was accepted: answered as then (its message
        is no longer where it was, so it is not looked for again)."""
        known = await self.store.known(conn.user, dedup_id)
        if known is None:
            return False
        self.metrics.accepted_repeat.inc()
        await conn.reply(p.Accepted(client_msg_id=cmid, id=known))
        return True

    async def _accept_fork(self, conn: Connection, conv: str, cmid: str, text: str, fork: Fork) -> None:
        try:
            in_id, fresh = await self.store.accept(conn.user, conn.device, conv, cmid, text,
                                                   default_graph=self.graphs.default, if_busy="reject", fork=fork)
        except OverLimit as refused:
            message = (f"{conv!r} has a turn running or waiting (or one ran meanwhile): {fork.kind} it when the "
                       f"conversation is idle" if refused.code == "busy" else _over_limit_message(refused))
            raise p.FrameError(p.ErrorCode(refused.code), message, cmid,
                               retry_after_ms=refused.retry_after_ms or None) from None
        (self.metrics.accepted_new if fresh else self.metrics.accepted_repeat).inc()
        await conn.reply(p.Accepted(client_msg_id=cmid, id=in_id))

    async def _dispatch(self, conn: Connection, frame: p.ClientFrame) -> None:
        match frame:
            case p.Send(conversation_id=conv, client_msg_id=cmid, text=text, graph=graph, if_busy=if_busy):
                limit = self.settings.quotas.max_text_length
                if limit and len(text) > limit:
                    raise p.FrameError(p.ErrorCode.TEXT_TOO_LONG,
                                       f"text of {len(text)} characters exceeds the limit of {limit}", cmid)
                if graph is not None and graph not in self.graphs.specs:
                    raise p.FrameError(p.ErrorCode.UNKNOWN_GRAPH, f"no graph {graph!r} (there are: "
                                       f"{', '.join(self.graphs.names)})", cmid)
                try:
                    in_id, fresh = await self.store.accept(conn.user, conn.device, conv, cmid, text,
                                                           graph=graph or "", default_graph=self.graphs.default,
                                                           if_busy=if_busy)
                except OverLimit as refused:
                    raise p.FrameError(p.ErrorCode(refused.code), _over_limit_message(refused), cmid,
                                       retry_after_ms=refused.retry_after_ms or None) from None
                (self.metrics.accepted_new if fresh else self.metrics.accepted_repeat).inc()
                if not fresh:
                    log.debug("repeated send user=%s cmid=%s -> %s", conn.user, cmid, in_id,
                              extra={**conn.log_context, "conversation": conv, "entry": in_id})
                await conn.reply(p.Accepted(client_msg_id=cmid, id=in_id))
            case p.Cancel(conversation_id=conv, client_msg_id=cmid):
                answer = await self.store.cancel(conn.user, conv, cmid)
                if isinstance(answer, NotRunning):
                    raise p.FrameError(p.ErrorCode.NOT_RUNNING, (
                        f"message {cmid!r} is not the one running in {conv!r} (answered already, or queued behind "
                        f"another: cancel that first)" if answer.running else f"nothing runs or waits in {conv!r}"),
                        cmid)
                log.info("cancel user=%s conversation=%s entry=%s", conn.user, conv, answer.id,
                         extra={**conn.log_context, "conversation": conv, "entry": answer.id})
            case p.Resume(conversation_id=conv, client_msg_id=cmid, value=value, interrupt_id=interrupt_id):
                value_json = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
                limit = self.settings.quotas.max_text_length
                if limit and len(value_json) > limit:
                    raise p.FrameError(p.ErrorCode.TEXT_TOO_LONG, f"value of {len(value_json)} characters (as JSON) "
                                       f"exceeds the limit of {limit}", cmid)
                answer = await self.store.resume(conn.user, conn.device, conv, cmid, interrupt_id, value_json)
                if isinstance(answer, NotInterrupted):
                    if answer.resumed is not None:
                        raise p.FrameError(p.ErrorCode.ALREADY_RESUMED,
                                           f"the interrupt of {cmid!r} was answered already", cmid)
                    raise p.FrameError(p.ErrorCode.NOT_INTERRUPTED, f"no interrupt of {cmid!r} waits for an answer in "
                                       f"{conv!r}" + (f" with id {interrupt_id!r}" if interrupt_id else ""), cmid)
                await conn.reply(p.Accepted(client_msg_id=cmid, id=answer.id))
            case p.Regenerate(conversation_id=conv, client_msg_id=cmid, request_id=request_id):
                if request_id is not None and await self._repeated(conn, cmid, request_id):
                    return
                fork, target = await self._fork(conn, conv, cmid, regenerate=True)
                fork = fork._replace(human=target.id, dedup_id=request_id or f"regenerate-{uuid.uuid4().hex}")
                await self._accept_fork(conn, conv, cmid, target.text, fork)
            case p.Edit(conversation_id=conv, client_msg_id=cmid, text=text, new_client_msg_id=new_cmid):
                # An edit is answered as the new message: its errors carry new_client_msg_id.
                limit = self.settings.quotas.max_text_length
                if limit and len(text) > limit:
                    raise p.FrameError(p.ErrorCode.TEXT_TOO_LONG,
                                       f"text of {len(text)} characters exceeds the limit of {limit}", new_cmid)
                if await self._repeated(conn, new_cmid, new_cmid):
                    return
                try:
                    fork, _ = await self._fork(conn, conv, cmid, regenerate=False)
                except p.FrameError as refused:
                    refused.client_msg_id = new_cmid
                    raise
                await self._accept_fork(conn, conv, new_cmid, text, fork)
            case p.Ack(id=entry_id):
                if streamids.later(entry_id, conn.last):
                    raise p.FrameError(p.ErrorCode.INVALID_ACK,
                                       f"ack of {entry_id}, but this connection was sent events up to {conn.last}")
                await self.store.store_offset(conn.user, conn.device, conn.epoch, entry_id)
            case p.History(conversation_id=conv, limit=limit, before=before):
                try:
                    page = await self.history.page(conn.user, conv, limit, before,
                                                   await self.store.generation(conn.user, conv))
                except CannotOpen as exc:
                    log.error("history of user=%s conversation=%s cannot be decrypted: %s", conn.user, conv, exc,
                              extra={**conn.log_context, "conversation": conv})
                    raise p.FrameError(p.ErrorCode.UNREADABLE, "this conversation's history cannot be "
                                       "decrypted with this server's keys") from None
                if page is None and await self.store.generation(conn.user, conv):
                    page = ([], False)  # cleared, and no turn since
                if page is None:
                    raise p.FrameError(p.ErrorCode.UNKNOWN_CONVERSATION, f"no conversation {conv!r}")
                await conn.reply(p.HistoryResult(conversation_id=conv, messages=page[0], has_more=page[1]))
            case p.Conversations(limit=limit, before=before):
                await conn.reply(await self._conversations(conn, limit, before))
            case p.Clear(conversation_id=conv, client_msg_id=cmid):
                cleared = await self.store.clear(conn.user, conn.device, conv, cmid)
                if cleared is None:
                    raise p.FrameError(p.ErrorCode.UNKNOWN_CONVERSATION, f"no conversation {conv!r}", cmid)
                if cmid is not None:
                    await conn.reply(p.Accepted(client_msg_id=cmid, id=cleared))
            case p.Rename(conversation_id=conv, title=title):
                if await self.store.rename(conn.user, conn.device, conv, title) is None:
                    raise p.FrameError(p.ErrorCode.UNKNOWN_CONVERSATION, f"no conversation {conv!r}")
            case p.Ping():
                await conn.reply(p.Pong())
            case p.Refresh(token=token):
                await self._refresh(conn, token)
            case p.Hello():
                raise p.FrameError(p.ErrorCode.DUPLICATE_HELLO, "hello was already received on this connection")


_LIMIT_MESSAGES = {
    p.ErrorCode.RATE_LIMITED: "too many messages or bytes per minute (SENDS_PER_MINUTE, SEND_BYTES_PER_MINUTE); "
                              "retry in {seconds:.1f} s",
    p.ErrorCode.TOO_MANY_CONVERSATIONS: "too many conversations (MAX_SESSIONS_PER_USER)",
    p.ErrorCode.CONVERSATION_FULL: "this conversation holds the most messages allowed (MAX_MESSAGES_PER_SESSION)",
    p.ErrorCode.BACKLOG_FULL: "too many messages wait for replies (MAX_UNANSWERED); retry when some are answered",
    p.ErrorCode.BUSY: "this conversation has a turn running or waiting (if_busy: reject)",
    p.ErrorCode.GRAPH_MISMATCH: "this conversation runs another graph (a conversation keeps the graph of its "
                                "first message)",
}


def _over_limit_message(refused: OverLimit) -> str:
    code = p.ErrorCode(refused.code)
    if code is p.ErrorCode.RATE_LIMITED and not refused.retry_after_ms:
        return "this text is larger than a minute's allowance (SEND_BYTES_PER_MINUTE)"
    return _LIMIT_MESSAGES.get(code, refused.code).format(seconds=refused.retry_after_ms / 1000)
