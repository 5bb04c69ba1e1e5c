"""GRAPH names a graph as ``module:attribute``, ``./file.py:attribute`` or a
``langgraph.json``: loading accepts builders, compiled graphs and factories,
applies a project's import paths and environment, and refuses anything else
with a clear error."""

import json
import sys
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from switchboard.worker import loader
from switchboard.worker.graph import build

COMPILED = build().compile()


def test_loader_accepts_graphs_and_rejects_what_is_not_one():
    saver = InMemorySaver()
    compiled = loader.load("switchboard.worker.graph:graph", saver)
    assert compiled.checkpointer is saver
    assert loader.load("switchboard.worker.graph:build", saver).checkpointer is saver
    precompiled = loader.load("tests.worker.test_loader:COMPILED", saver)
    assert precompiled.checkpointer is saver
    for spec, message in [("nocolon", "expected"), ("no.such.module:g", "cannot import"),
                          ("switchboard.worker.graph:nothing", "no attribute"),
                          ("switchboard.worker.graph:_STOP", "not a StateGraph")]:
        with pytest.raises(loader.GraphLoadError, match=message):
            loader.load(spec, saver)


# -- files and langgraph.json --------------------------------------------------------------------

GRAPH_FILE = '''
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from {helper} import prefix

def answer(state: MessagesState):
    return {{"messages": [AIMessage(content=prefix() + state["messages"][-1].content)]}}

builder = StateGraph(MessagesState)
builder.add_node("answer", answer)
builder.add_edge(START, "answer")
builder.add_edge("answer", END)
graph = builder.compile()
'''


def _project(root: Path, name: str, helper_text: str = "def prefix():\n    return 'echo: '\n") -> Path:
    """A project as the LangGraph CLI lays one out: the graph in a file that
    imports a sibling module (its own helper module name, so projects of
    different tests do not share one)."""
    (root / "agent").mkdir(parents=True)
    (root / "agent" / f"{name}_helper.py").write_text(helper_text)
    (root / "agent" / "graph.py").write_text(GRAPH_FILE.format(helper=f"{name}_helper"))
    return root / "agent" / "graph.py"


async def _reply(compiled, text: str) -> str:
    out = await compiled.ainvoke({"messages": [("user", text)]}, {"configurable": {"thread_id": "t"}})
    return out["messages"][-1].content


async def test_a_graph_file_loads_with_its_siblings_on_the_import_path(tmp_path, monkeypatch):
    graph_file = _project(tmp_path, "files")
    monkeypatch.chdir(tmp_path)
    compiled = loader.load("./agent/graph.py:graph", InMemorySaver())
    assert await _reply(compiled, "hi") == "echo: hi"
    assert loader.load(f"{graph_file}:builder", InMemorySaver()).checkpointer is not None  # absolute, a builder
    with pytest.raises(loader.GraphLoadError, match="no such file"):
        loader.load("./agent/missing.py:graph", InMemorySaver())
    with pytest.raises(loader.GraphLoadError, match="has no attribute"):
        loader.load("./agent/graph.py:nothing", InMemorySaver())


def test_a_graph_file_that_fails_to_import_says_which_and_why(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('no model key')\n")
    with pytest.raises(loader.GraphLoadError, match=r"broken.py failed: RuntimeError: no model key"):
        loader.load(f"{tmp_path}/broken.py:graph", InMemorySaver())


async def test_langgraph_json_graphs_dependencies_and_env(tmp_path, monkeypatch):
    _project(tmp_path, "proj")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "proj_shared.py").write_text("VALUE = 7\n")
    (tmp_path / ".env").write_text("# keys\nexport SB_TEST_MODEL='tiny'\nSB_TEST_KEPT=from-file\n")
    (tmp_path / "langgraph.json").write_text(json.dumps({
        "dependencies": [".", "./lib", "langgraph"], "graphs": {"agent": "./agent/graph.py:graph"}, "env": ".env"}))
    environ = {"SB_TEST_KEPT": "from-environment"}
    compiled = loader.load(str(tmp_path / "langgraph.json"), InMemorySaver(), environ)
    assert await _reply(compiled, "hello") == "echo: hello"
    assert environ == {"SB_TEST_KEPT": "from-environment", "SB_TEST_MODEL": "tiny"}  # the environment wins
    assert str((tmp_path / "lib").resolve()) in sys.path
    import proj_shared  # a local dependency is importable

    assert proj_shared.VALUE == 7
    monkeypatch.chdir(tmp_path)
    assert await _reply(loader.load("./langgraph.json:agent", InMemorySaver(), {}), "x") == "echo: x"


def test_a_project_offers_every_graph_by_name_the_first_listed_the_default(tmp_path):
    path = tmp_path / "langgraph.json"
    path.write_text(json.dumps({"graphs": {"support": "./a.py:graph", "sales": "pkg.graphs:sales"}}))
    choice = loader.graph_choice(str(path))
    assert (choice.names, choice.default) == (("support", "sales"), "support")
    pinned = loader.graph_choice(f"{path}:sales")
    assert (pinned.specs, pinned.default) == ({"sales": "pkg.graphs:sales"}, "sales")
    with pytest.raises(loader.GraphLoadError, match=r"no graph 'billing' \(it has sales, support\)"):
        loader.graph_choice(f"{path}:billing")
    single = loader.graph_choice("pkg.module:graph")
    assert (single.specs, single.default, single.project) == ({"default": "pkg.module:graph"}, "default", None)
    with pytest.raises(loader.GraphLoadError, match="No such file"):
        loader.graph_choice(str(tmp_path / "missing.json"))


async def test_every_graph_of_a_project_is_compiled(tmp_path):
    _project(tmp_path, "many")
    (tmp_path / "langgraph.json").write_text(json.dumps(
        {"dependencies": ["."], "graphs": {"one": "./agent/graph.py:graph", "two": "./agent/graph.py:builder"}}))
    graphs = loader.load_all(str(tmp_path / "langgraph.json"), InMemorySaver(), {})
    assert set(graphs.by_name) == {"one", "two"} and graphs.default == "one"
    assert graphs.get("") is graphs.by_name["one"] and graphs.get("three") is None
    assert await _reply(graphs.get("two"), "hi") == "echo: hi"


def test_several_graphs_need_a_name_and_an_unknown_name_is_refused(tmp_path):
    path = tmp_path / "langgraph.json"
    text = json.dumps({"graphs": {"support": "./a.py:graph", "sales": {"path": "pkg.graphs:sales"}}, "env": {"N": 1}})
    project = loader.read_project(path, text)
    assert project.graphs == {"support": f"{tmp_path.resolve()}/a.py:graph", "sales": "pkg.graphs:sales"}
    assert project.env == {"N": "1"} and project.spec("sales") == "pkg.graphs:sales"
    with pytest.raises(loader.GraphLoadError, match=r"has 2 graphs \(sales, support\): name one"):
        project.spec(None)
    with pytest.raises(loader.GraphLoadError, match=r"no graph 'billing' \(it has sales, support\)"):
        project.spec("billing")


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not JSON"),
    ("[]", "expected an object"),
    ('{"graphs": {}}', "'graphs' must map"),
    ('{"graphs": {"a": "nocolon"}}', "expected 'path.py:attribute'"),
    ('{"graphs": {"a": "m:g"}, "dependencies": "."}', "'dependencies' must be a list"),
    ('{"graphs": {"a": "m:g"}, "env": ["A"]}', "'env' must be"),
    ('{"graphs": {"a": "m:g"}, "env": "missing.env"}', "env file"),
])
def test_a_malformed_langgraph_json_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(loader.GraphLoadError, match=message):
        loader.read_project(tmp_path / "langgraph.json", text)


def test_a_dependency_that_is_not_installed_is_named(tmp_path):
    (tmp_path / "langgraph.json").write_text(json.dumps(
        {"graphs": {"a": "switchboard.worker.graph:graph"}, "dependencies": ["no-such-package-sb>=1.0", "langgraph"]}))
    with pytest.raises(loader.GraphLoadError, match=r"not installed: no-such-package-sb \(pip install"):
        loader.load(str(tmp_path / "langgraph.json"), InMemorySaver(), {})


def test_env_files_parse_as_dotenv_does():
    assert loader.parse_env('A=1\n\n# c\nexport B = "two words"\nC=x # note\nD=\'#kept\'\n') == {
        "A": "1", "B": "two words", "C": "x", "D": "#kept"}
    with pytest.raises(loader.GraphLoadError, match=r"\.env:2: expected NAME=value"):
        loader.parse_env("A=1\nnot a line\n")
