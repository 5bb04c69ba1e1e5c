"""A real chat-model graph: an assistant on any OpenAI-compatible chat endpoint,
with tools. ``GRAPH=switchboard.worker.chat:graph``.

The model is LangChain's ``ChatOpenAI`` (PyPI ``langchain-openai``, the
``openai`` extra: ``pip install 'switchboard[openai]'``), configured from
the environment the way the OpenAI client is:

- ``OPENAI_BASE_URL`` -- the endpoint (OpenAI's by default; any compatible
  server: vLLM, Ollama's ``/v1``, LiteLLM, a gateway);
- ``OPENAI_API_KEY`` -- its key;
- ``CHAT_MODEL`` -- the model name (default ``gpt-4o-mini``);
- ``CHAT_SYSTEM_PROMPT`` -- an instruction put before the conversation (optional);
- ``CHAT_TIMEOUT`` -- seconds one model call may take (default 60; the turn's
  own bound is the worker's TURN_TIMEOUT);
- ``CHAT_MAX_TOOL_ROUNDS`` -- model calls that may ask for tools in one turn
  before the model must answer (default 4).

The graph is the usual tool loop: the model answers, or asks for tools; the
tools run and their results go back to the model, until it answers. Its
tokens stream to the devices as ``delta`` events, and each tool call and
result shows as a ``tool_call`` / ``tool_result`` event (the worker's
:mod:`.deltas`), so a person sees what the assistant is doing. Two tools come
with it, both local and safe: the current time, and arithmetic.

The model is built when the graph first runs, not at import: a worker with
the default graph never needs the package, and a missing key is the turn's
error (``turn_error``), named in the worker's log.
"""

from __future__ import annotations

import ast
import datetime as dt
import operator
import os
from typing import Any

from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

DEFAULT_MODEL = "gpt-4o-mini"


@tool
def current_time() -> str:
    """The current date and time (UTC), ISO 8601."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv}
#: Bounds of ``calculate``: the expression's length, and an exponent's size
#: (``9**9**9`` would take the worker's CPU for minutes).
MAX_EXPRESSION = 200
MAX_EXPONENT = 100


def evaluate(expression: str) -> float | int:
    """Arithmetic only (numbers, + - * / // % **, parentheses), never ``eval``."""
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponent above {MAX_EXPONENT}")
            return _OPS[type(node.op)](left, right)
        raise ValueError("only numbers and + - * / // % ** ( ) are allowed")

    return walk(ast.parse(expression, mode="eval"))


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression, e.g. ``(17 + 4) * 3 / 7``."""
    try:
        return str(evaluate(expression))
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError) as exc:
        return f"error: {exc}"


TOOLS = [current_time, calculate]


def _model() -> Any:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError as exc:  # the optional extra
        raise RuntimeError("the chat graph needs langchain-openai: pip install 'switchboard[openai]'") from exc
    return ChatOpenAI(model=os.environ.get("CHAT_MODEL", DEFAULT_MODEL), streaming=True,
                      timeout=float(os.environ.get("CHAT_TIMEOUT", "60")), max_retries=1).bind_tools(TOOLS)


def build() -> StateGraph:
    """The tool loop, on a model made at its first call (see the module notes)."""
    made: list[Any] = []
    system = os.environ.get("CHAT_SYSTEM_PROMPT", "")
    max_rounds = int(os.environ.get("CHAT_MAX_TOOL_ROUNDS", "4"))

    async def model(state: MessagesState) -> dict:
        if not made:
            made.append(_model())
        messages = list(state["messages"])
        if system:
            messages.insert(0, SystemMessage(content=system))
        # Tool rounds since the turn's human message: past the bound, no more tools.
        since = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].type == "human"), 0)
        rounds = sum(1 for m in messages[since:] if isinstance(m, AIMessage) and m.tool_calls)
        runnable = made[0]
        if rounds >= max_rounds:
            runnable = runnable.bind(tool_choice="none")
        return {"messages": [await runnable.ainvoke(messages)]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    builder = StateGraph(MessagesState)
    builder.add_node("model", model)
    builder.add_node("tools", ToolNode(TOOLS))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", route, ["tools", END])
    builder.add_edge("tools", "model")
    return builder


graph = build()
