"""Running a conversation's turns: in inbound order, exactly one reply each.

Under the conversation's lease (:mod:`.lease`), :meth:`Turns.drain` runs the
next entry after ``done`` until none is left: take the lease and the first
entry (:meth:`WorkerStore.begin`), run the graph, commit the reply with the
turn's checkpoint and find the next entry (:meth:`WorkerStore.commit`), and
so on; the commit that finds nothing left releases the lease.

Re-running a turn is safe: the user's message enters the graph with the id
``in-<entry id>``, so a worker that finds that message already in the
checkpoint (its predecessor died after checkpointing, before committing)
reuses the reply the checkpoint holds instead of running the graph again.

*Attempts.* Each attempt at an entry is counted in Redis before it runs, so a
message that kills its worker is given up on after ``MAX_ATTEMPTS`` (a poison
message: dead-lettered, answered with ``turn_error``). A Redis outage is not
the message's fault: the attempt it cut short is retried by this process
without being counted again. A message or conversation state that no key of
ENCRYPTION_KEYS opens will not open on a retry either: it is dead-lettered at
once, with the reason, and answered with ``turn_error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from langchain_core.messages import HumanMessage
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from switchboard.shared import keys, outbound, streamids
from switchboard.shared.connection import is_outage
from switchboard.shared.encryption import CannotOpen
from switchboard.shared.checkpoints import CMID_KEY
from switchboard.shared.metrics import WorkerMetrics
from switchboard.shared.project import DEFAULT_GRAPH
from switchboard.shared.protocol import EventKind
from switchboard.shared.settings import WorkerSettings

from . import checkpoint_format
from .deltas import DeltaWriter
from .fencing import FORK, FencedRedisSaver, fence_config
from .lease import Lease, LeaseLostError, LeaseState, Tokens
from .loader import Graphs
from .outcomes import (
    Interrupted, Outcome, TurnCancelled, TurnFailed, unreadable_state, first_interrupt, holds_unanswered,
    message_id, reply_after,
)
from .slots import FairSlots, Slot
from .stopping import WORK_EXIT_GRACE, Stopped, stoppable
from .stops import Stops
from .store import (
    AlreadyDone, Attempt, Begun, Busy, Committed, DoneMoved, FindAfter, InboundEntry, LeaseLost, NoneLeft,
    WorkerStore,
)

log = logging.getLogger(__name__)

#: Conversations whose turns since their last prune are counted (a bound).
UNPRUNED_MAX = 100_000
#: Conversations whose cut-short attempt is remembered (a bound; see ``_resumed``).
RESUMED_MAX = 100_000


def _observe(task: asyncio.Task) -> None:
    """Mark a task's exception as seen; the caller reports it (or has moved on)."""
    if not task.cancelled():
        task.exception()


class _Progress:
    """What a drain is attempting now: the entry an outage would cut short."""

    __slots__ = ("entry", "started", "thread")

    def __init__(self, thread: str) -> None:
        self.entry: str | None = None
        self.started = 0.0  #: when the turn of ``entry`` began (perf_counter)
        #: The LangGraph thread the drain's turns run on now (the generation of
        #: the entry last taken); its kept copy in the saver is up to date.
        self.thread = thread


class Turns:
    def __init__(self, redis: aioredis.Redis, graph: CompiledStateGraph | Graphs, settings: WorkerSettings,
                 slots: FairSlots | None = None, *, metrics: WorkerMetrics | None = None):
        #: The graphs conversations run, by name (one graph: named ``default``).
        self.graphs = graph if isinstance(graph, Graphs) else Graphs({DEFAULT_GRAPH: graph}, DEFAULT_GRAPH)
        self.graph = self.graphs.by_name[self.graphs.default]  #: the default graph (all share one checkpointer)
        self.metrics = metrics or WorkerMetrics()
        self.settings = settings
        #: The worker's turn slots, shared fairly between users (:mod:`.slots`).
        self.slots = slots or FairSlots(settings.concurrency)
        self.store = WorkerStore(redis, settings.streams, lease_ttl=settings.lease_ttl, keyring=settings.encryption,
                                 replicas=settings.redis)
        self.tokens = Tokens()
        self.deltas = DeltaWriter(self.store, interval=settings.delta_interval) if settings.stream_deltas else None
        saver = self.graph.checkpointer
        self.saver = saver if isinstance(saver, FencedRedisSaver) else None
        self._unpruned: dict[str, int] = {}  # turns committed per thread since its last prune
        # (user, conversation) -> the entry whose attempt this process gave up
        # because Redis went away: its retry is not counted again.
        self._resumed: dict[tuple[str, str], str] = {}
        #: the entry each conversation runs now, for cancel notices (:mod:`.stops`)
        self.stops = Stops()
        # (user, conversation) -> the generation its turns last ran in here
        # (``clear`` moves it on): which thread's kept copy a begin validates.
        self._generations: dict[tuple[str, str], int] = {}

    def cancel(self, user: str, conversation: str, up_to: str) -> bool:
        """A cancel notice: stop the graph run of ``conversation`` if it runs an
        entry at or before ``up_to`` here. True if one was stopped. (Only a
        nudge: the commit script writes a cancelled entry as ``cancelled``
        whether or not its run was stopped.)"""
        return self.stops.cancel((user, conversation), up_to)

    # -- a drain ---------------------------------------------------------------------

    async def drain(self, user: str, conversation: str) -> bool:
        """Run every pending turn of the conversation. Return False if another
        worker holds the lease (it will run them), True when all are done."""
        # Kept until a begin has seen it: a begin that fails (Redis still
        # down) must not cost the cut-short attempt its resumption.
        resumed = self._resumed.get((user, conversation))
        slot = Slot(self.slots, user)
        await slot.take()
        try:
            return await self._drain(user, conversation, slot, resumed)
        finally:
            slot.give_back()

    async def _drain(self, user: str, conversation: str, slot: Slot, resumed: str | None) -> bool:
        taken = await self._take(user, conversation, slot, resumed=resumed, max_wait=self.settings.lease_ttl * 2)
        if taken is None:
            return False
        self._resumed.pop((user, conversation), None)
        lease, begun = taken
        self.tokens.active.add(lease.token)
        progress = _Progress(keys.thread_id(user, conversation, self._generations.get((user, conversation), 0)))
        work = asyncio.create_task(self._run_turns(user, conversation, lease, begun, progress, resumed, slot))
        work.add_done_callback(_observe)
        try:
            await self._keep(user, conversation, lease, work)
            await work
        except BaseException as exc:
            if progress.entry is not None and is_outage(exc):
                self._remember_resumed((user, conversation), progress.entry)
            if not work.done():
                work.cancel()
                # The graph may still write on its way out (a checkpoint at
                # exit): let it, then drop what it left.
                await asyncio.wait([work], timeout=WORK_EXIT_GRACE)
            if self.saver is not None:
                self.saver.forget(progress.thread)
            raise
        finally:
            if not work.done():
                work.cancel()
            if lease.must_release:
                try:
                    await self.store.release(user, conversation, lease.token)
                except Exception:  # noqa: BLE001 - it expires, or this process takes it back
                    log.debug("lease release failed for %s/%s", user, conversation)
            self.tokens.active.discard(lease.token)
        slot.give_back()  # pruning needs no slot
        await self._prune(progress.thread)
        return True

    def _remember_generation(self, key: tuple[str, str], generation: int) -> None:
        if len(self._generations) >= RESUMED_MAX and key not in self._generations:
            self._generations.clear()  # bounded; a forgotten one costs one read of the checkpoint
        self._generations[key] = generation

    async def _delete_thread(self, thread: str) -> None:
        """A cleared generation's checkpoints go: those its index lists, then
        any it does not (written by a stock saver, or before the index
        existed) by the library's own, search-based deletion (not on a Redis
        Cluster, which has no search index: those expire); should it fail,
        they expire with CHECKPOINT_TTL like any idle thread's."""
        self._unpruned.pop(thread, None)
        if self.saver is None:
            return
        self.saver.forget(thread)
        try:
            await self.saver.prune_thread(thread, keep=0)
            if not self.settings.redis.cluster:  # no search index on a cluster (setup_saver)
                await self.saver.adelete_thread(thread)
        except Exception as exc:  # noqa: BLE001 - reclaimed by retention
            log.warning("deleting the cleared thread %s failed: %s", thread, exc)

    def _remember_resumed(self, key: tuple[str, str], entry_id: str) -> None:
        if len(self._resumed) >= RESUMED_MAX:
            self._resumed.clear()  # bounded; a forgotten entry only counts one attempt more
        self._resumed[key] = entry_id

    async def _take(self, user: str, conversation: str, slot: Slot, *, resumed: str | None,
                    max_wait: float) -> tuple[Lease, Begun] | None:
        """Take the lease (waiting with back-off up to ``max_wait`` seconds)
        and learn, in the same call, ``done`` and the next entry to run."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        delay = 0.01
        # The thread of the generation this process last ran the conversation
        # in (a clear moves it on; :meth:`_run_turns` forgets the kept copy of
        # a thread it did not validate here).
        thread = keys.thread_id(user, conversation, self._generations.get((user, conversation), 0))
        # Without the fenced saver there is no kept copy to check; the script
        # still needs a key of the user's slot in that place (its answer is unused).
        latest_key = self.saver.latest_key(thread) if self.saver is not None else keys.lease(user, conversation)
        while True:
            token = self.tokens.new()
            answer = await self.store.begin(user, conversation, token=token, latest_key=latest_key, resumed=resumed)
            if isinstance(answer, Begun):
                if self.saver is not None:
                    self.saver.validate(thread, answer.latest)
                return Lease(keys.lease(user, conversation), token), answer
            assert isinstance(answer, Busy)
            if self.tokens.is_orphan(answer.holder):
                log.info("taking back %s/%s: its lease was left by this process", user, conversation)
                await self.store.release(user, conversation, answer.holder)
                continue
            if loop.time() >= deadline:
                return None
            slot.give_back()  # waiting for another worker uses no slot here
            await asyncio.sleep(delay)
            await slot.take()
            delay = min(delay * 2, 0.25)

    async def _keep(self, user: str, conversation: str, lease: Lease, work: asyncio.Task) -> None:
        """Renew the lease while ``work`` runs; stop it if the lease is lost."""
        while not work.done():
            await asyncio.wait([work], timeout=self.settings.lease_ttl / 3)
            if work.done():
                return
            if lease.state is LeaseState.COMMITTING:
                # The commit in flight may release the lease: its answer decides.
                settled = asyncio.ensure_future(lease.settled())
                await asyncio.wait([work, settled], return_when=asyncio.FIRST_COMPLETED)
                settled.cancel()
                continue
            if lease.state is not LeaseState.HOLDING:
                continue  # released by the last commit: the work is finishing
            if await self.store.renew(user, conversation, lease.token):
                continue
            if lease.renewal_refused():
                work.cancel()
                raise LeaseLostError(f"lease of {user}/{conversation} lost")

    async def _run_turns(self, user: str, conversation: str, lease: Lease, begun: Begun, progress: _Progress,
                         resumed: str | None, slot: Slot) -> None:
        """Run the turns until none is left (the last commit releases the
        lease), one slot-turn at a time when others wait (:mod:`.slots`):
        between turns the lease stays ours and is renewed."""
        done, found = begun.done, begun.found
        first = True
        while True:
            if isinstance(found, FindAfter):
                found = await self.store.find_next(user, conversation, after=found.cursor, token=lease.token)
            if isinstance(found, NoneLeft):
                return
            assert isinstance(found, Attempt)
            # Watched for cancel notices from the moment the entry is known,
            # before anything is awaited: a notice arriving while the turn is
            # prepared must stop it too (the mark alone would only label it
            # `cancelled` once its run had ended).
            stop = self.stops.watch((user, conversation), found.entry.id)
            try:
                outcome = await self._attempt(user, conversation, lease, found, progress, resumed, slot,
                                              first=first, stop=stop)
            finally:
                self.stops.unwatch((user, conversation), found.entry.id)
            first = False
            entry = found.entry
            thread = progress.thread
            kind = outcome.kind
            result = await self._commit(user, entry, lease, done, outcome)
            progress.entry = None
            self.metrics.turn_duration.observe(time.perf_counter() - progress.started)
            match result:
                case Committed(found=found):
                    if result.cancelled and self.saver is not None:
                        self.saver.forget(thread)  # its checkpoint was not stored
                    self.metrics.turns["cancelled" if result.cancelled else kind.value].inc()
                    lease.commit_answered(released=result.released)
                    if kind is EventKind.INTERRUPT and not result.cancelled:
                        return  # held until resumed (the commit released the lease)
                    done = entry.id
                    if kind is EventKind.CLEARED and not result.cancelled:
                        await self._delete_thread(thread)
                    else:
                        self._count_unpruned(thread)
                case AlreadyDone(holds_lease=holds):
                    # Committed before: by this very call, retried after its
                    # answer was lost, or by another worker that had the lease.
                    self.metrics.turns["already_done"].inc()
                    lease.commit_answered(released=not holds)
                    if not holds:
                        return
                    done, found = entry.id, FindAfter(entry.id)
                case DoneMoved(done=moved):
                    self.metrics.turns["moved"].inc()
                    lease.commit_answered(released=False)
                    if self.saver is not None:  # the turn's checkpoint was not stored
                        self.saver.forget(thread)
                    done, found = moved, FindAfter(moved)
                case LeaseLost():
                    self.metrics.turns["lease_lost"].inc()
                    lease.lose()
                    raise LeaseLostError(f"lease of {user}/{conversation} lost before commit")

    def _count_unpruned(self, thread: str) -> None:
        if len(self._unpruned) >= UNPRUNED_MAX and thread not in self._unpruned:
            self._unpruned.clear()  # bounded; a forgotten count only delays a prune
        self._unpruned[thread] = self._unpruned.get(thread, 0) + 1

    async def _attempt(self, user: str, conversation: str, lease: Lease, found: Attempt, progress: _Progress,
                       resumed: str | None, slot: Slot, *, first: bool, stop: asyncio.Event) -> Outcome:
        """The outcome of the entry ``found`` names, for its commit: run, or not
        (a clear, an entry cancelled before it ran)."""
        if not first:
            await slot.pass_on()
        entry = found.entry
        progress.entry = entry.id
        thread = keys.thread_id(user, conversation, entry.gen)
        if thread != progress.thread:
            # Another generation than the one validated at begin: its kept
            # copy may be stale; read it from Redis (under our lease it then stays right).
            if self.saver is not None:
                self.saver.forget(thread)
            progress.thread = thread
            self._remember_generation((user, conversation), entry.gen)
        progress.started = time.perf_counter()
        if found.number == 1:  # accept -> first attempt (the entry id is the accept's Redis time)
            self.metrics.queue_wait.observe(max(0.0, time.time() - streamids.parse(entry.id)[0] / 1000))
        if entry.kind == "clear":  # nothing runs: the next generation starts empty (never cancelled)
            return Outcome(EventKind.CLEARED, "")
        if found.cancelled:  # stopped before it ran (or while it waited for a resume): nothing to run
            return Outcome(EventKind.CANCELLED, "")
        return await self._turn(user, found, lease.token, fresh=found.number == 1 and entry.id != resumed, stop=stop)

    # -- one turn ----------------------------------------------------------------------

    async def _turn(self, user: str, attempt: Attempt, token: str, *, fresh: bool, stop: asyncio.Event) -> Outcome:
        """Run one turn with bounded attempts (``attempt`` is already counted);
        after the last failed attempt the message is dead-lettered and
        answered with ``turn_error``. ``fresh``: no earlier attempt can have
        left a checkpoint (so the state need not be read first)."""
        limit = self.settings.max_attempts
        entry, number = attempt.entry, attempt.number
        while True:
            if number > limit:
                # Every earlier attempt ended with the worker gone (killed,
                # crashed, out of memory) before it could record the outcome.
                await self._dead_letter(user, entry, f"the worker stopped during each of {limit} attempts", limit)
                return Outcome(EventKind.TURN_ERROR, "the assistant could not process this message")
            try:
                ran = await self._run(user, entry, token, fresh=fresh, stop=stop)
                if isinstance(ran, Interrupted):
                    return Outcome(EventKind.INTERRUPT, ran.event_text(), interrupt_id=ran.id, base=ran.base)
                return Outcome(EventKind.ASSISTANT, ran)
            except TurnCancelled as cancelled:
                if self.saver is not None:  # what the stopped run left is dropped
                    self.saver.forget(keys.thread_id(user, entry.conversation, entry.gen))
                return Outcome(EventKind.CANCELLED, cancelled.partial, base=cancelled.base)
            except TurnFailed as failed:
                self.metrics.attempts_failed.inc()
                log.warning("turn failed user=%s entry=%s attempt %d/%d: %s", user, entry.id, number, limit,
                            failed.reason, extra={"user": user, "conversation": entry.conversation,
                                                  "entry": entry.id})
                if self.saver is not None:
                    # A failed attempt's output is discarded: a checkpoint it
                    # left waiting (say, it timed out just after LangGraph handed
                    # it over) is neither retried from nor committed.
                    self.saver.forget(keys.thread_id(user, entry.conversation, entry.gen))
                if number >= limit or failed.permanent:
                    await self._dead_letter(user, entry, failed.reason, number)
                    return Outcome(EventKind.TURN_ERROR, failed.public)
                await asyncio.sleep(min(0.25 * 2 ** (number - 1), 5.0))
            fresh = False
            number = await self.store.count_attempt(user, entry.conversation, entry.id, seen=number)

    async def _run(self, user: str, entry: InboundEntry, token: str, *, fresh: bool,
                   stop: asyncio.Event) -> str | Interrupted:
        """One attempt: the reply text, :class:`Interrupted`, or
        :class:`TurnFailed`. A Redis outage propagates: it is not the
        message's fault, the drain is retried.

        Only a repeated attempt can find the turn already checkpointed (by a
        worker that died before committing), so only then is the state read
        first -- the first attempt saves that round trip and its decoding. A
        resumed turn always reads it: an earlier attempt may have run on to
        its next interrupt, which is then what the turn commits."""
        config = {"configurable": {"thread_id": keys.thread_id(user, entry.conversation, entry.gen),
                                   **fence_config(keys.lease(user, entry.conversation), token)}}
        human_id = entry.human or message_id(entry.id)
        graph = self.graphs.get(entry.graph)
        if graph is None:
            raise TurnFailed(f"the conversation's graph {entry.graph!r} is not one this worker runs "
                             f"({', '.join(self.graphs.by_name)}): GRAPH differs between gateway and worker?",
                             "the assistant for this conversation is not available", permanent=True)
        thread = config["configurable"]["thread_id"]
        graph_input = self._input(entry, human_id)
        if entry.forks and not entry.interrupt_id:
            # Time travel: the run forks from the checkpoint before the message
            # replaced. Only the commit moves the thread's pointer, so a retry
            # forks again from there (never reusing the old branch's reply).
            config["configurable"][FORK] = entry.base
        elif not fresh or entry.interrupt_id:
            earlier = await self._left_by_earlier(user, entry, graph, config, human_id)
            if earlier is not None:
                return earlier
        reply_stream = None
        if self.deltas is not None:
            reply_stream = self.deltas.reply(user, entry.conversation, token=token,
                                             client_msg_id=entry.client_msg_id, inbound_id=entry.id)
            config["callbacks"] = [reply_stream]
        started = time.perf_counter()
        if self.saver is not None:
            self.saver.run_started(thread)
        try:
            result = await stoppable(graph.ainvoke(graph_input, config, durability="exit"),
                                      stop, timeout=self.settings.turn_timeout)
        except Stopped:
            result = _STOPPED  # the partial reply is read once its deltas are all written (below)
        except TimeoutError:  # first: TimeoutError is an OSError too
            raise TurnFailed(f"no answer within TURN_TIMEOUT={self.settings.turn_timeout:g} s",
                             f"the assistant did not answer within {self.settings.turn_timeout:g} s") from None
        except (asyncio.CancelledError, LeaseLostError):
            raise
        except CannotOpen as exc:  # the checkpoint (or a pending write) no key opens
            raise unreadable_state(exc) from None
        except Exception as exc:  # noqa: BLE001 - a graph bug must not stop the conversation
            if is_outage(exc):  # Redis went away under the graph (its checkpointer)
                raise
            raise TurnFailed(f"{type(exc).__name__}: {exc}"[:500],
                             f"the assistant failed on this message ({type(exc).__name__})") from None
        finally:
            self.metrics.graph_duration.observe(time.perf_counter() - started)
            if reply_stream is not None:
                await reply_stream.close()  # no delta may follow the final event
                if reply_stream.first_written is not None:
                    self.metrics.first_delta.observe(reply_stream.first_written - started)
        stored_base = (self.saver.stored_base(thread, token) if self.saver is not None else None) or ""
        if result is _STOPPED:
            # After close(): a delta write in flight when the run stopped is in
            # the stream, so it is in the text too (the event equals the deltas).
            raise TurnCancelled("".join(reply_stream.written) if reply_stream is not None else "", stored_base)
        if reply_stream is not None and reply_stream.error is not None:
            # A delta write failed after the graph's last token (Redis went
            # away, or the lease): the attempt's deltas miss part of the reply,
            # so it is not committed. An outage retries it from seq 0 (not
            # counted); a lost lease ends the drain.
            raise reply_stream.error
        asked = result.get("__interrupt__") if isinstance(result, dict) else None
        if asked:
            return Interrupted(asked[0].id, asked[0].value, stored_base)
        return reply_after(result.get("messages", []) if isinstance(result, dict) else [], human_id) or ""

    def _input(self, entry: InboundEntry, human_id: str) -> Any:
        """What the graph is run with: the user's message (its client_msg_id
        kept with it, for ``history``, ``regenerate`` and ``edit``), or the
        answer to the question the turn asked."""
        try:
            if entry.interrupt_id:
                return Command(resume={entry.interrupt_id: json.loads(self.store.keyring.open(entry.resume))})
            text = self.store.keyring.open(entry.text)
        except CannotOpen as exc:
            raise TurnFailed(f"the message cannot be decrypted: {exc}", "the assistant cannot decrypt this message",
                             permanent=True) from None
        message = HumanMessage(content=text, id=human_id, response_metadata={CMID_KEY: entry.client_msg_id})
        return {"messages": [message]}

    async def _left_by_earlier(self, user: str, entry: InboundEntry, graph: Any, config: dict,
                               human_id: str) -> str | Interrupted | None:
        """What an earlier attempt at the turn left in its checkpoint, that
        this one commits instead of running the graph: the reply (it died
        after checkpointing), its question (it died after asking), or, for a
        resumed turn, the next question (it ran on to it). None: run."""
        thread = config["configurable"]["thread_id"]
        try:
            snapshot = await graph.aget_state(config)
        except CannotOpen as exc:
            raise unreadable_state(exc) from None
        asked = first_interrupt(snapshot)
        messages = (snapshot.values or {}).get("messages", [])
        if entry.interrupt_id:
            if asked is None:
                raise TurnFailed(f"the interrupted state of {thread} is gone (expired, or deleted)",
                                 "the assistant no longer has the question it asked", permanent=True)
            return Interrupted(asked.id, asked.value) if asked.id != entry.interrupt_id else None
        reply = reply_after(messages, human_id)
        if reply is not None:
            log.info("reusing checkpointed reply user=%s entry=%s", user, entry.id,
                     extra={"user": user, "conversation": entry.conversation, "entry": entry.id})
            return reply
        if asked is not None and holds_unanswered(messages, human_id):
            return Interrupted(asked.id, asked.value, _base_of(self.saver, thread, snapshot))
        return None

    async def _commit(self, user: str, entry: InboundEntry, lease: Lease, done: str, outcome: Outcome):
        """Commit the reply (and the turn's checkpoint): the store's answer."""
        kind = outcome.kind
        fields = outbound.event_fields(kind.value, entry.conversation, self.store.keyring.seal(outcome.text),
                                       client_msg_id=entry.client_msg_id, device_id=None, ts=outbound.now_ms(),
                                       inbound_id=entry.id)
        thread = keys.thread_id(user, entry.conversation, entry.gen)
        checkpoint = (self.saver.take(thread, lease.token)
                      if self.saver is not None and kind not in (EventKind.CANCELLED, EventKind.CLEARED) else None)
        lease.commit_sent()
        try:
            return await self.store.commit(
                user, entry.conversation, token=lease.token, expected_done=done, entry_id=entry.id, fields=fields,
                checkpoint=checkpoint, latest_key=self.saver.latest_key(thread) if self.saver is not None else None,
                checkpoint_ttl_ms=self.saver.ttl_ms if self.saver is not None else 0,
                interrupt_id=outcome.interrupt_id, base=outcome.base)
        except BaseException:
            lease.commit_unanswered()
            raise

    async def _dead_letter(self, user: str, entry: InboundEntry, reason: str, attempts: int) -> None:
        await self.store.dead_letter(user=user, entry=entry, reason=reason, attempts=attempts,
                                     worker=self.settings.server_id, maxlen=self.settings.dead_letter_maxlen,
                                     per_user=self.settings.dead_letters_per_user)
        self.metrics.dead_letters.inc()
        log.error("dead-lettered user=%s conv=%s entry=%s after %d attempts: %s",
                  user, entry.conversation, entry.id, attempts, reason,
                  extra={"user": user, "conversation": entry.conversation, "entry": entry.id})

    # -- storage -----------------------------------------------------------------------

    async def _prune(self, thread_id: str) -> None:
        """Keep the newest ``CHECKPOINT_KEEP`` checkpoints of a conversation.

        Every checkpoint holds the whole conversation, so keeping them all
        costs storage that grows with the *square* of its length. The saver
        prunes (documents, pending writes, registry:
        ``SwitchboardRedisSaver.prune_thread``); it is asked once every
        ``CHECKPOINT_KEEP / 2`` turns, so the cost per turn stays small and at
        most ``1.5 * CHECKPOINT_KEEP`` checkpoints exist. Pruning only ever
        removes older checkpoints, so it needs no lease."""
        keep = self.settings.checkpoint_keep
        if keep <= 0 or self.saver is None:
            return
        count = self._unpruned.get(thread_id, 0)
        if count < max(1, keep // 2):
            return
        self._unpruned.pop(thread_id, None)
        try:
            await self.saver.prune_thread(thread_id, keep=keep)
        except Exception as exc:  # noqa: BLE001 - storage is reclaimed on a later turn
            log.warning("pruning checkpoints of %s failed: %s", thread_id, exc)


def _base_of(saver: FencedRedisSaver | None, thread: str, snapshot: Any) -> str:
    """The latest pointer before the snapshot's checkpoint: its parent's key ('-': none)."""
    if saver is None:
        return ""
    parent = (getattr(snapshot, "parent_config", None) or {}).get("configurable", {}).get("checkpoint_id")
    return checkpoint_format.checkpoint_key(saver, thread, parent) if parent else "-"


_STOPPED = object()  #: what a stopped graph run returned (see :meth:`Turns._run`)
