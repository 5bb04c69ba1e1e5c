"""`switchboard run`'s plan (services/localrun.py): how many of each, their
SERVER_IDs, ports and health ports, before anything starts."""

from __future__ import annotations

import pytest

from switchboard.localrun import Layout, Spec, plan, processes_table
from switchboard.shared.settings import SettingsError


def test_the_default_is_one_of_each_without_nginx_on_todays_ports():
    layout = Layout.from_args(1, 1, None, False)
    assert layout == Layout(1, 1, 1, False)
    assert plan(layout, 8765, 9101) == [Spec("fanout", "fanout-1", "fanout", None, 9103),
                                        Spec("worker", "worker-1", "worker", None, 9102),
                                        Spec("gateway", "gateway-1", "gateway", 8765, 9101)]


def test_several_gateways_go_behind_nginx_on_the_ports_after_its_own():
    layout = Layout.from_args(3, 2, None, False)
    assert layout == Layout(3, 2, 2, True)
    specs = plan(layout, 8765, 9101)
    assert [(s.server_id, s.label, s.port) for s in specs if s.tier == "gateway"] == [
        ("gateway-1", "gateway-1", 8766), ("gateway-2", "gateway-2", 8767), ("gateway-3", "gateway-3", 8768)]
    assert sorted(s.metrics_port for s in specs) == list(range(9101, 9108))  # one each, consecutive
    assert [s.server_id for s in specs][:4] == ["fanout-1", "fanout-2", "worker-1", "worker-2"]  # fanouts first
    assert {s.metrics_port for s in plan(layout, 8765, 0)} == {0}  # METRICS_PORT=0: none
    assert Layout.from_args(1, 1, None, True) == Layout(1, 1, 2, True)
    assert Layout.from_args(1, 3, 1, False) == Layout(1, 3, 1, False)


@pytest.mark.parametrize("gateways,workers,fanouts", [(0, 1, None), (1, 0, None), (1, 1, 0), (33, 1, None)])
def test_counts_out_of_range_are_refused(gateways, workers, fanouts):
    with pytest.raises(SettingsError):
        Layout.from_args(gateways, workers, fanouts, False)


def test_the_processes_table():
    table = processes_table([("gateway-1", 10, "ws://127.0.0.1:8766/ws", "9101"), ("nginx", 12345, "ws://x", "-")])
    assert table.splitlines() == ["    SERVER_ID  PID    LISTENS                 METRICS",
                                  "    gateway-1  10     ws://127.0.0.1:8766/ws  9101",
                                  "    nginx      12345  ws://x                  -"]
