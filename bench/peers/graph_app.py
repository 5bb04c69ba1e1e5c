"""The graph every peer server serves: Switchboard's own default graph.

At start the peer copies ``services/conversation-worker/graph.py`` beside this
file as ``switchboard_graph.py`` (it imports only langgraph and langchain-core,
so each peer's own virtualenv can load it); ``langgraph.json`` names
``./graph_app.py:graph``. ``graph`` is compiled *without* a checkpointer: every
server adds its own (in memory, PostgreSQL, ...).

Think time: a peer server loads this module itself, so the environment is the
only way to configure it. ``PEER_THINK_MS`` (default 0) makes the response node
await ``asyncio.sleep`` for that many milliseconds, standing in for a model call.
"""

import os

from switchboard_graph import build

graph = build(float(os.environ.get("PEER_THINK_MS") or 0)).compile()
