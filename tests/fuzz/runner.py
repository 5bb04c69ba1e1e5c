"""Send generated cases to a running gateway and judge every answer.

After ``hello``, each input is followed by a *marker* (an invalid ``send``
whose ``client_msg_id`` the gateway echoes in its ``bad_frame`` error): what
arrives before the marker's error is the input's answer, so silence is seen
as silence, not as a slow reply. Before ``hello``, each input is the first
frame of a fresh connection and must be answered by an error and a close.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .generators import Case
from .wire import Answers, FuzzClient

#: Seconds an input may take to be answered (a hang is a failure).
ANSWER_TIMEOUT = 8.0
#: Failures kept with their details (all are counted).
KEEP_FAILURES = 50
#: Error codes that are never a correct answer to a client's input.
NEVER = {"internal", "unavailable"}


def judge(case: Case, a: Answers) -> str | None:
    """None if the answers are the ones the protocol documents for ``case``,
    else what is wrong."""
    expect = case.expect
    if a.timed_out:
        return f"no answer within {ANSWER_TIMEOUT} s (got {a.frames[:3]})"
    errors = [f for f in a.frames if f.get("type") == "error"]
    for f in errors:
        if f.get("code") in NEVER:
            return f"answered {f}"
    if a.closed:
        if a.close_code is None:
            return f"connection ended without a close frame after {a.frames[:3]}"
        if a.close_code not in expect.closes:
            return f"closed with {a.close_code} after {a.frames[:3]}; expected {_expected(expect)}"
        if a.close_code >= 4000:
            if len(a.frames) != 1 or not errors or errors[0].get("code") not in expect.errors:
                return f"closed with {a.close_code} after {a.frames[:3]}; expected one error in {sorted(expect.errors)}"
        elif a.frames:
            return f"answered {a.frames[:3]} before closing with {a.close_code}"
        return None
    if case.phase == "before":
        return f"still open after {a.frames[:3]}; expected {_expected(expect)}"
    if not a.frames:
        return f"no answer (silence); expected {_expected(expect)}"
    if len(a.frames) > 1:
        return f"{len(a.frames)} answers {a.frames[:3]}; expected one of {_expected(expect)}"
    [f] = a.frames
    if f.get("type") == "error":
        return None if f.get("code") in expect.errors else f"answered {f}; expected {_expected(expect)}"
    return None if f.get("type") in expect.replies else f"answered {f}; expected {_expected(expect)}"


def _expected(expect) -> str:
    return f"errors={sorted(expect.errors)} replies={sorted(expect.replies)} closes={sorted(expect.closes)}"


def outcome(a: Answers) -> str:
    """A short label of what happened, for the tallies."""
    if a.timed_out:
        return "timeout"
    labels = [f"error:{f.get('code')}" if f.get("type") == "error" else str(f.get("type")) for f in a.frames]
    if a.closed:
        labels.append(f"close:{a.close_code}")
    return "+".join(labels) or "silence"


@dataclass
class Failure:
    phase: str
    category: str
    index: int  #: the case's position in its (phase, category) sequence: with the seed, it replays the input
    note: str
    problem: str


@dataclass
class Tally:
    tried: Counter = field(default_factory=Counter)  #: (phase, category) -> inputs sent
    outcomes: Counter = field(default_factory=Counter)  #: (phase, category, outcome) -> count
    failures: list[Failure] = field(default_factory=list)
    failed: int = 0
    connections: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.tried.values())

    def record(self, case: Case, answers: Answers, problem: str | None = None) -> None:
        index = self.tried[case.phase, case.category]
        self.tried[case.phase, case.category] += 1
        self.outcomes[case.phase, case.category, "no connection" if problem else outcome(answers)] += 1
        problem = problem or judge(case, answers)
        if problem is not None:
            self.failed += 1
            if len(self.failures) < KEEP_FAILURES:
                self.failures.append(Failure(case.phase, case.category, index, case.note, problem))

    def table(self) -> str:
        lines = [f"{'phase':<7}{'category':<16}{'inputs':>7}  outcomes"]
        for (phase, category), n in sorted(self.tried.items()):
            seen = {o: c for (p, cat, o), c in self.outcomes.items() if (p, cat) == (phase, category)}
            shown = ", ".join(f"{o} x{c}" for o, c in sorted(seen.items(), key=lambda kv: -kv[1])[:4])
            lines.append(f"{phase:<7}{category:<16}{n:>7}  {shown}")
        lines.append(f"total: {self.total} inputs on {self.connections} connections in {self.seconds:.1f} s; "
                     f"{self.failed} failed")
        lines += [f"FAILED {f.phase}/{f.category}#{f.index} ({f.note}): {f.problem}" for f in self.failures]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "inputs": self.total,
            "connections": self.connections,
            "seconds": round(self.seconds, 1),
            "failed": self.failed,
            "tried": {f"{p}/{c}": n for (p, c), n in sorted(self.tried.items())},
            "outcomes": {f"{p}/{c}/{o}": n for (p, c, o), n in sorted(self.outcomes.items())},
            "failures": [vars(f) for f in self.failures],
        }


class Fuzzer:
    """Runs cases against one gateway URL. ``token_for(user)`` signs a token."""

    def __init__(self, url: str, token_for: Callable[[str], str], tally: Tally | None = None):
        self.url = url
        self.token_for = token_for
        self.tally = tally or Tally()
        self._live: FuzzClient | None = None
        self._markers = itertools.count()

    async def run(self, cases: Iterable[Case], *, until: float | None = None) -> Tally:
        """Send every case (or stop at monotonic time ``until``)."""
        started = time.monotonic()
        try:
            for case in cases:
                if until is not None and time.monotonic() >= until:
                    break
                try:
                    answers = await (self._after(case) if case.phase == "after" else self._before(case))
                except (OSError, ConnectionError, TimeoutError) as exc:
                    # The gateway refused the connection itself (or is gone): a failure, counted.
                    self._drop()
                    self.tally.record(case, Answers(), problem=f"could not connect: {exc!r}")
                    continue
                self.tally.record(case, answers)
        finally:
            self._drop()
            self.tally.seconds += time.monotonic() - started
        return self.tally

    async def _connect(self) -> FuzzClient:
        client = FuzzClient(self.url)
        await client.open()
        self.tally.connections += 1
        return client

    async def _after(self, case: Case) -> Answers:
        client = await self._hello_connection()
        await client.send(case.frames)
        marker = f"marker-{next(self._markers)}"
        await client.send_json({"type": "send", "client_msg_id": marker})
        answers = await client.answers(marker=marker, timeout=ANSWER_TIMEOUT)
        if answers.closed or answers.timed_out:
            self._drop()
        return answers

    async def _hello_connection(self) -> FuzzClient:
        if self._live is None:
            client = await self._connect()
            user = f"fuzz-{uuid.uuid4().hex[:8]}"
            welcome = await client.hello(self.token_for(user), "fuzzer", timeout=ANSWER_TIMEOUT)
            if welcome.get("type") != "welcome":
                raise ConnectionError(f"hello was answered by {welcome}")
            self._live = client
        return self._live

    async def _before(self, case: Case) -> Answers:
        client = await self._connect()
        try:
            await client.send(case.frames)
            return await client.answers(marker=None, timeout=ANSWER_TIMEOUT)
        finally:
            client.close()

    def _drop(self) -> None:
        if self._live is not None:
            self._live.close()
            self._live = None
