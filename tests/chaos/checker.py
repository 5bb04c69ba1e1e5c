"""The invariants a chaos run must keep, checked from what clients recorded
and what Redis holds. Pure functions, tested on their own (test_checker.py)."""

from __future__ import annotations

import bisect
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from switchboard.shared import streamids

REPLY_KINDS = ("assistant", "turn_error", "cancelled")
#: ms a stop (cancel, if_busy: interrupt) may be recorded after the accept of
#: the message it stopped: the client's clock reads the time just before it
#: sends, the accept's is Redis's (one machine: the same clock).
STOP_SLACK_MS = 1_000

#: Default bound, in ms, on the time from an event's commit (its ``ts``) to its
#: arrival at a device that stayed connected meanwhile (:func:`check_delays`).
#: It must stay below the fanout's FANOUT_SWEEP in the run, or a live path
#: that stalls and is healed only by the sweep would pass unseen.
DELAY_BOUND_MS = 5_000


@dataclass
class Segment:
    """What one device received over one connection."""

    mode: str  #: "new", "last_id", "stale" or "offset": how the device resumed
    asked: str | None  #: the last_id it sent (None for "new"/"offset")
    resume_from: str
    recovered: bool
    acked_before: list[str] = field(default_factory=list)  #: ids this device acked before connecting
    confirmed_ack: str | None = None  #: newest ack known to be stored (a later pong came back)
    events: list[dict[str, Any]] = field(default_factory=list)
    hello_at: int = 0  #: wall-clock ms when the hello was sent (0: not recorded)
    welcome_at: int = 0  #: wall-clock ms when the welcome arrived (0: not recorded)
    closed_at: int | None = None  #: wall-clock ms from which the connection was gone (None: open to the end)
    arrived: list[int] = field(default_factory=list)  #: wall-clock ms of each event's arrival


@dataclass
class DeviceLog:
    user: str
    device: str
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Report:
    violations: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, kind: str, example: str) -> None:
        self.violations[kind] += 1
        if self.violations[kind] <= 10 and len(self.examples) < 100:  # every kind gets its examples
            self.examples.append(f"{kind}: {example}")

    @property
    def ok(self) -> bool:
        return not self.violations


def _same(event: dict[str, Any], fields: dict[str, str]) -> bool:
    return (event.get("conversation_id") == fields.get("conv") and event.get("kind") == fields.get("kind")
            and (event.get("client_msg_id") or "") == fields.get("cmid", "")
            and event.get("text") == fields.get("text"))


def check_replies(stream: list[tuple[str, dict[str, str]]], accepted: dict[str, str], user: str,
                  report: Report, stops: dict[str, list[int]] | None = None,
                  outages: Iterable[tuple[int, int]] = ()) -> None:
    """Every accepted message (cmid -> inbound id) has exactly one user event
    and exactly one final event -- ``assistant``, or ``cancelled`` where a stop
    was asked for: the chaos graph never fails, so a ``turn_error`` (a message
    given up on: its attempts used up, or a timeout) is a violation too, and
    so is a ``cancelled`` with no cancel or interrupting send in its
    conversation after the message was accepted (``stops``: conversation ->
    the ms each was asked). A stop asked in an outage (``outages``, as for
    :func:`check_delays`) acts once it is over: it may stop what was
    accepted until then."""
    spans = sorted(outages)
    replies: Counter = Counter()
    users: Counter = Counter()
    for entry_id, fields in stream:
        if fields.get("kind") in REPLY_KINDS:
            replies[fields.get("cmid")] += 1
            if fields.get("kind") == "turn_error":
                report.add("turn_error", f"{user} {fields.get('cmid')}: {entry_id} {fields.get('text')!r}")
            if fields.get("kind") == "cancelled":
                accepted_ms = streamids.parse(fields.get("in") or "0-0")[0]
                asked = (stops or {}).get(fields.get("conv", ""), [])
                if not any(_after_outages(at, spans, STOP_SLACK_MS) + STOP_SLACK_MS >= accepted_ms for at in asked):
                    report.add("unexpected_cancel", f"{user} {fields.get('cmid')}: cancelled ({entry_id}) with no "
                                                    f"stop asked in {fields.get('conv')} after it was accepted")
        elif fields.get("kind") == "user":
            users[fields.get("cmid")] += 1
    for cmid in accepted:
        if replies[cmid] != 1:
            report.add("reply_count", f"{user} {cmid}: {replies[cmid]} replies")
        if users[cmid] != 1:
            report.add("user_event_count", f"{user} {cmid}: {users[cmid]} user events")


def check_deltas(stream: list[tuple[str, dict[str, str]]], user: str, report: Report,
                 streamed: set[str] | None = None) -> None:
    """Streamed replies, in the stream's order: no delta of a message after
    its final event; each attempt's deltas numbered 0, 1, 2 ... (``seq`` 0
    starts an attempt); the last attempt's text, rebuilt by the protocol's
    rule (``seq`` 0 shows its text alone, every later ``seq`` appends its
    text as it is), EQUAL to the final ``assistant`` text -- the writer puts
    the newline between two model runs into the piece that starts the
    second, as the final reply joins its AI messages with one -- and every
    earlier attempt's text a prefix of it (the test graph answers the same
    on every attempt), so no stale attempt's words were interleaved with the
    current one's.

    ``streamed`` (if known) holds the messages whose replies are meant to be
    streamed: each of those needs deltas, and no other message may have any.
    Without it, a reply without deltas passes."""
    finished: set[str] = set()
    last_seq: dict[str, int] = {}
    attempt_text: dict[str, list[str]] = defaultdict(list)  # cmid -> texts of every attempt
    for entry_id, fields in stream:
        cmid = fields.get("cmid", "")
        kind = fields.get("kind")
        if kind in REPLY_KINDS:
            finished.add(cmid)
            texts = attempt_text.pop(cmid, [])
            if kind == "assistant":
                _check_reply_deltas(user, cmid, texts, fields.get("text", ""), streamed, report)
            elif kind == "cancelled" and texts and fields.get("text", "") not in ("", texts[-1]):
                # Stopped while it streamed: the event holds what that attempt's deltas held
                # (or nothing, when it was stopped before another attempt began).
                report.add("cancel_text", f"{user} {cmid}: cancelled with {fields.get('text')!r}, its last "
                                          f"attempt streamed {texts[-1]!r}")
            continue
        if kind != "delta":
            continue
        if cmid in finished:
            report.add("delta_after_reply", f"{user} {cmid}: delta {entry_id} after the final event")
        seq = int(fields.get("seq", "-1"))
        if seq == 0:
            attempt_text[cmid].append("")
        elif seq != last_seq.get(cmid, -2) + 1 or not attempt_text[cmid]:
            report.add("delta_seq", f"{user} {cmid}: delta {entry_id} has seq {seq} after {last_seq.get(cmid)}")
            attempt_text[cmid].append("")
        last_seq[cmid] = seq
        attempt_text[cmid][-1] += fields.get("text", "")


def _check_reply_deltas(user: str, cmid: str, texts: list[str], final: str, streamed: set[str] | None,
                        report: Report) -> None:
    if not texts:
        if streamed is not None and cmid in streamed:
            report.add("delta_missing", f"{user} {cmid}: a streamed reply came without deltas: {final!r}")
        return
    if streamed is not None and cmid not in streamed:
        report.add("delta_unexpected", f"{user} {cmid}: {len(texts)} attempt(s) streamed a reply not meant "
                                       f"to be streamed")
    for text in texts[:-1]:
        if not final.startswith(text):
            report.add("delta_text", f"{user} {cmid}: an earlier attempt streamed {text!r}, the reply is {final!r}")
    if texts[-1] != final:
        report.add("delta_text", f"{user} {cmid}: the last attempt's deltas rebuild {texts[-1]!r}, "
                                 f"the reply is {final!r}")


def check_inbound_ids(stream: list[tuple[str, dict[str, str]]], accepted: dict[str, str], user: str,
                      report: Report) -> None:
    """Every event of a message (``user``, ``assistant``, ``delta``,
    ``turn_error``) names in its ``in`` field the inbound id the gateway
    gave that client_msg_id in the devices' ``accepted`` frames
    (``accepted``: cmid -> id). Wire events do not carry ``in``; it is read
    from the outbound stream's fields."""
    for entry_id, fields in stream:
        cmid = fields.get("cmid")
        if not cmid or fields.get("kind") == "replaced":  # names the message replaced; its `in` is the edit's
            continue
        expected = accepted.get(cmid)
        if expected is None:
            report.add("inbound_id", f"{user} {entry_id}: {fields.get('kind')} of {cmid}, which no device had "
                                     f"accepted")
        elif fields.get("in") != expected:
            report.add("inbound_id", f"{user} {entry_id}: {fields.get('kind')} of {cmid} has in="
                                     f"{fields.get('in')!r}, the message was accepted as {expected}")


def check_dead_letters(entries: list[tuple[str, dict[str, str]]], report: Report) -> None:
    """The chaos graph never fails and no worker dies MAX_ATTEMPTS times on
    one message, so the dead-letter stream must be empty."""
    for entry_id, fields in entries:
        report.add("dead_letter", f"{entry_id}: {fields.get('user')} {fields.get('conv')} {fields.get('entry')} "
                                  f"after {fields.get('attempts')} attempts: {fields.get('reason')}")


_REPLY_NUMBER = re.compile(r"^reply (\d+) to: ")


def check_history(conversation: str, human_ids: list[str], replies: list[tuple[str, str]],
                  report: Report, cancelled: Iterable[str] = (), replaced: Iterable[str] = ()) -> None:
    """The conversation's LangGraph history, as stored: each message at most
    once, in inbound order, and every answered one in it -- at the place its
    reply was computed from (the test graph says ``reply <n> to: ...``, n =
    the human messages in the state it ran on). A turn run twice, a lost or
    forked checkpoint, or a reply committed without its checkpoint breaks one
    of these. ``human_ids`` are the state's ``in-<inbound id>`` message ids;
    ``replies`` the (inbound id, text) of the conversation's assistant events;
    ``cancelled`` the inbound ids of its stopped messages, which the state must
    not hold (a stopped turn leaves no trace); ``replaced`` those an edit
    replaced (:func:`replaced_by_edits`): not in it either, their replies not looked for."""
    counts = Counter(human_ids)
    for inbound_id in cancelled:
        if f"in-{inbound_id}" in counts:
            report.add("history_cancelled", f"{conversation}: the stopped {inbound_id} is in the history")
    gone = set(replaced)
    for inbound_id in gone:
        if f"in-{inbound_id}" in counts:
            report.add("history_replaced", f"{conversation}: {inbound_id}, replaced by an edit, is in the history")
    for message_id, n in counts.items():
        if n > 1:
            report.add("history_duplicate", f"{conversation}: {message_id} {n} times in the history")
    inbound = [m[len("in-"):] for m in human_ids if m and m.startswith("in-")]
    if any(streamids.parse(a) > streamids.parse(b) for a, b in zip(inbound, inbound[1:])):
        report.add("history_order", f"{conversation}: history out of inbound order: {inbound[:10]}...")
    position: dict[str, int] = {}
    for i, message_id in enumerate(human_ids):
        position.setdefault(message_id, i)
    for inbound_id, text in replies:
        if inbound_id in gone:
            continue
        where = position.get(f"in-{inbound_id}")
        if where is None:
            report.add("history_missing", f"{conversation}: answered {inbound_id} is not in the history")
            continue
        match = _REPLY_NUMBER.match(text)
        if match and int(match.group(1)) != where + 1:
            report.add("history_fork", f"{conversation}: the reply to {inbound_id} was computed on "
                                       f"{match.group(1)} messages, the history has it at {where + 1}")


def replaced_by_edits(stream: list[tuple[str, dict[str, str]]], accepted: dict[str, str]) -> dict[str, set[str]]:
    """Conversation -> the inbound ids its edits replaced: from the edited
    message (``accepted``: cmid -> inbound id) up to the edit itself."""
    messages: dict[str, list[str]] = defaultdict(list)
    edits: list[tuple[str, str, str]] = []
    for _, fields in stream:
        if fields.get("kind") == "user":
            messages[fields.get("conv", "")].append(fields.get("in", ""))
        elif fields.get("kind") == "replaced" and fields.get("text") == "message":
            edits.append((fields.get("conv", ""), accepted.get(fields.get("cmid", ""), ""), fields.get("in", "")))
    gone: dict[str, set[str]] = defaultdict(set)
    for conversation, first, edit in edits:
        if not first:
            continue
        low, high = streamids.parse(first), streamids.parse(edit)
        gone[conversation] |= {i for i in messages[conversation] if low <= streamids.parse(i) < high}
    return gone


def check_questions(stream: list[tuple[str, dict[str, str]]], asking: set[str], user: str, report: Report,
                    answer: Any) -> None:
    """Human-in-the-loop, per message: only a turn that asks (``asking``)
    gets an ``interrupt`` event, at most one (the chaos graph asks once),
    at most one ``resumed`` after it, and an ``assistant`` reply only after
    both, its text ending with the answer given (``answer(cmid)``)."""
    seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for _, fields in stream:
        if fields.get("kind") in ("interrupt", "resumed", *REPLY_KINDS):
            seen[fields.get("cmid", "")].append((fields["kind"], fields.get("text", "")))
    for cmid, events in seen.items():
        kinds = [k for k, _ in events]
        if "interrupt" in kinds and cmid not in asking:
            report.add("unexpected_interrupt", f"{user} {cmid}: an interrupt, but its turn does not ask")
        if kinds.count("interrupt") > 1 or kinds.count("resumed") > 1:
            report.add("question_count", f"{user} {cmid}: {kinds}")
        if cmid in asking and "assistant" in kinds:
            expected = ["interrupt", "resumed", "assistant"]
            if [k for k in kinds if k in expected] != expected:
                report.add("question_order", f"{user} {cmid}: {kinds}")
            reply = next(t for k, t in events if k == "assistant")
            if not reply.endswith(f" answered {json.dumps(answer(cmid))}"):
                report.add("question_answer", f"{user} {cmid}: {reply[-60:]!r} does not end with its answer")


def check_device(log: DeviceLog, stream: list[tuple[str, dict[str, str]]], report: Report,
                 *, must_reach_end: bool = True, replay_window: int | None = None,
                 trimmed: str = streamids.ZERO) -> None:
    """Each connection received exactly the stream after its resume point, in
    order, with nothing foreign; resumes were honoured; the last caught up.

    With ``replay_window`` (the gateways' REPLAY_WINDOW) a new device's
    ``resume_from`` is not taken on trust: it must be what the stream says
    (see :func:`_check_new_resume`); ``trimmed`` is the stream's newest
    trimmed id at the end (its meta's ``trimmed``)."""
    ids = [entry_id for entry_id, _ in stream]
    id_ms = [streamids.parse(entry_id)[0] for entry_id in ids]
    by_id = dict(stream)
    position = {entry_id: i for i, entry_id in enumerate(ids)}
    who = f"{log.user}/{log.device}"
    for n, seg in enumerate(log.segments):
        _check_resume(seg, who, n, report)
        if seg.mode == "new" and replay_window is not None:
            _check_new_resume(seg, ids, id_ms, replay_window, trimmed, who, n, report)
        start = _index_after(ids, seg.resume_from)
        received = [e["id"] for e in seg.events]
        for event in seg.events:
            fields = by_id.get(event["id"])
            if fields is None or not _same(event, fields):
                report.add("foreign_event", f"{who} segment {n}: {event['id']} is not this user's event")
        if len(received) != len(set(received)):
            dup = next(i for i, c in Counter(received).items() if c > 1)
            report.add("duplicate", f"{who} segment {n}: {dup} twice")
            continue
        if not received:
            continue
        last = position.get(received[-1])
        if last is None:
            continue  # reported as foreign
        expected = ids[start:last + 1]
        if received != expected:
            missing = [i for i in expected if i not in set(received)]
            kind = "gap" if missing else "reorder"
            report.add(kind, f"{who} segment {n}: expected {len(expected)} events from {seg.resume_from}, "
                             f"got {len(received)}; first missing {missing[:3]}")
    if must_reach_end and log.segments:
        final = log.segments[-1]
        seen = final.events[-1]["id"] if final.events else final.resume_from
        if ids and streamids.later(ids[-1], seen):
            report.add("incomplete", f"{who}: last connection ended at {seen}, stream ends at {ids[-1]}")


def _check_resume(seg: Segment, who: str, n: int, report: Report) -> None:
    if seg.mode in ("last_id", "stale"):
        if not seg.recovered or seg.resume_from != seg.asked:
            report.add("resume", f"{who} segment {n}: asked {seg.asked}, got {seg.resume_from} "
                                 f"recovered={seg.recovered}")
    elif seg.mode == "offset":
        if not seg.recovered:
            report.add("resume", f"{who} segment {n}: stored offset not recovered")
        elif seg.resume_from not in seg.acked_before or (
                seg.confirmed_ack and streamids.later(seg.confirmed_ack, seg.resume_from)):
            report.add("resume", f"{who} segment {n}: resumed from {seg.resume_from}; acked "
                                 f"{seg.acked_before[-3:]}, confirmed {seg.confirmed_ack}")


def _check_new_resume(seg: Segment, ids: list[str], id_ms: list[int], window: int, trimmed: str, who: str,
                      n: int, report: Report) -> None:
    """A new device (no ``last_id``, no stored offset) must be replayed the
    ``window`` newest events of the stream as it was at its hello, or all of
    them if there were fewer: ``resume_from`` is the entry just before them
    (``0-0`` when the stream holds everything it ever had, and only then is
    ``recovered`` true). Computed from the final stream: the gateway read the
    stream between the hello and the welcome, so it held every entry whose id
    (its append time) is before ``hello_at`` and none after ``welcome_at``;
    any length in between is accepted."""
    if not seg.hello_at or not seg.welcome_at:
        return
    lo = bisect.bisect_left(id_ms, seg.hello_at)
    hi = bisect.bisect_right(id_ms, seg.welcome_at)
    expected: set[str] = set()
    for length in range(lo, hi + 1):
        if length > window:
            expected.add(ids[length - window - 1])
        elif trimmed == streamids.ZERO:
            expected.add(streamids.ZERO)
        else:
            return  # the window reached into entries trimmed since: nothing to compare with
    if seg.resume_from not in expected:
        report.add("resume", f"{who} segment {n}: a new device resumed from {seg.resume_from}; the stream "
                             f"had {lo}..{hi} entries then, so it should have been one of {sorted(expected)[:3]}")
    if seg.recovered != (seg.resume_from == streamids.ZERO):
        report.add("resume", f"{who} segment {n}: a new device resumed from {seg.resume_from} with "
                             f"recovered={seg.recovered}")


def _index_after(ids: list[str], resume_from: str) -> int:
    """Index of the first id greater than ``resume_from``."""
    key = streamids.parse(resume_from)
    for i, entry_id in enumerate(ids):
        if streamids.parse(entry_id) > key:
            return i
    return len(ids)


def commit_ms(entry_id: str, fields: dict[str, str]) -> int:
    """When an event was committed: its ``ts`` (ms, written by its writer
    just before the append), else its id's time."""
    ts = fields.get("ts")
    return int(ts) if ts and ts.isdigit() and int(ts) > 0 else streamids.parse(entry_id)[0]


def _after_outages(start: int, outages: list[tuple[int, int]], bound_ms: int) -> int:
    """Where the bound starts counting for an event committed at ``start``:
    past the end of every outage that begins before the bound runs out."""
    for begin, end in outages:  # sorted by begin
        if begin <= start + bound_ms and end > start:
            start = end
    return start


def check_delays(log: DeviceLog, stream: list[tuple[str, dict[str, str]]], report: Report, *,
                 bound_ms: int = DELAY_BOUND_MS, outages: Iterable[tuple[int, int]] = ()) -> list[int]:
    """Live delivery is prompt: an event committed while a connection was
    open (after its welcome) arrives on it within ``bound_ms`` of its commit
    (:func:`commit_ms`), unless the connection was gone before the bound ran
    out. ``outages`` are (begin, end) ms spans in which the run stopped
    delivery on purpose (Redis paused or restarting, a fanout killed and not
    yet known dead): the bound counts from their end.
    Return the delays (ms) as the bound counts them, for the summary."""
    spans = sorted(outages)
    commits = [(entry_id, commit_ms(entry_id, fields)) for entry_id, fields in stream]
    delays: list[int] = []
    who = f"{log.user}/{log.device}"
    for n, seg in enumerate(log.segments):
        if not seg.welcome_at:
            continue
        closed = math.inf if seg.closed_at is None else seg.closed_at
        arrived = {event["id"]: at for event, at in zip(seg.events, seg.arrived)}
        for entry_id, commit in commits:
            if commit < seg.welcome_at or commit > closed:
                continue
            at = arrived.get(entry_id)
            start = _after_outages(commit, spans, bound_ms)
            if at is not None:
                delays.append(max(0, at - start))
            deadline = start + bound_ms
            if (at is not None and at <= deadline) or closed < deadline:
                continue
            late = f"arrived {at - commit} ms after its commit" if at is not None else "never arrived"
            report.add("delay", f"{who} segment {n}: {entry_id} {late} (bound {bound_ms} ms counted from "
                                f"{deadline - bound_ms - commit} ms after the commit; connection open "
                                f"from {seg.welcome_at - commit} to {closed - commit} ms)")
    return delays


def check_accept_ids(accept_ids: dict[tuple[str, str], set[str]], report: Report) -> None:
    """Every resend of a client_msg_id was answered with the same inbound id."""
    for (user, cmid), ids in accept_ids.items():
        if len(ids) != 1:
            report.add("accept_id_changed", f"{user} {cmid}: {sorted(ids)}")


def check_memory(samples: dict[str, list[tuple[float, int]]], report: Report, *, limit_mb: float,
                 growth: float = 1.5, slack_mb: float = 40.0) -> dict[str, dict[str, float]]:
    """Peak RSS under ``limit_mb`` and no steady growth for long-lived processes:
    the last quarter of samples (after warm-up) may not exceed the second
    quarter by more than ``growth`` x + ``slack_mb``."""
    summary: dict[str, dict[str, float]] = {}
    for name, series in samples.items():
        rss = [value / 2**20 for _, value in series]
        if not rss:
            continue
        summary[name] = {"peak_mb": round(max(rss), 1), "samples": len(rss)}
        if max(rss) > limit_mb:
            report.add("memory_limit", f"{name}: {max(rss):.0f} MB > {limit_mb:.0f} MB")
        if len(rss) >= 12:
            q = len(rss) // 4
            early = sum(rss[q:2 * q]) / q
            late = sum(rss[-q:]) / q
            summary[name].update(early_mb=round(early, 1), late_mb=round(late, 1))
            if late > early * growth + slack_mb:
                report.add("memory_growth", f"{name}: {early:.0f} MB -> {late:.0f} MB")
    return summary


def group_accepts(records: list[tuple[str, str, str]]) -> tuple[dict[str, dict[str, str]], dict[tuple[str, str], set[str]]]:
    """From (user, cmid, inbound id) records: accepted per user, and ids per (user, cmid)."""
    accepted: dict[str, dict[str, str]] = defaultdict(dict)
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for user, cmid, inbound in records:
        accepted[user][cmid] = inbound
        ids[(user, cmid)].add(inbound)
    return accepted, ids
