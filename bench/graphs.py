"""Graphs the benchmark's workers load by name (``GRAPH=switchboard.bench.graphs:<name>``)."""

from __future__ import annotations

from switchboard.worker.graph import build

THINK_MS = 200  #: a model's time to its first token
TOKEN_MS = 10  #: then a word every 10 ms (~100 tokens/s, a fast hosted model)

#: Scenario 4's realistic graph: the default assistant speaking through a
#: chat model that thinks 200 ms, then streams its reply word by word.
realistic = build(THINK_MS, stream=True, token_ms=TOKEN_MS)
