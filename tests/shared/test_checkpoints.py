import importlib
import traceback

from langchain_core.messages import HumanMessage

from switchboard.shared.checkpoints import CachingSerializer


def test_class_lookups_are_cached_and_failures_do_not_accumulate(monkeypatch):
    calls = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: calls.append(name) or real(name, *a))
    serde = CachingSerializer()
    missing = {"id": ["no_such_package_here", "messages", "Thing"]}
    depths = []
    for _ in range(50):
        try:
            serde._constructor_class(missing)
        except ValueError as exc:
            depths.append(len(traceback.extract_tb(exc.__traceback__)))
    assert len(depths) == 50 and len(set(depths)) == 1  # a fresh, short traceback every time
    assert calls.count("no_such_package_here.messages") == 1  # searched once
    found = {"id": ["langchain_core", "messages", "HumanMessage"]}
    assert serde._constructor_class(found) is serde._constructor_class(found) is HumanMessage


def test_messages_still_round_trip():
    serde = CachingSerializer()
    message = HumanMessage("hello", id="in-1-0")
    for _ in range(3):
        assert serde.loads_typed(serde.dumps_typed({"m": [message]}))["m"][0] == message
