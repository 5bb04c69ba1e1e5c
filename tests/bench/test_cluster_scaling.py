"""bench.cluster_scaling's arithmetic: medians over rounds, per node."""

from bench.cluster_scaling import summarize, table


def _run(rate: float, single_cpu: float, cluster_cpu: tuple[float, float]) -> dict:
    return {"single": {"turns_per_s": rate, "nodes": {"redis": "master"}, "redis_cpu_us_per_turn": {"redis": single_cpu},
                       "redis_cpu_us_per_turn_total": single_cpu},
            "cluster": {"turns_per_s": rate / 2, "nodes": {"n0": "master", "n3": "replica"},
                        "redis_cpu_us_per_turn": {"n0": cluster_cpu[0], "n3": cluster_cpu[1]},
                        "redis_cpu_us_per_turn_total": sum(cluster_cpu)}}


def test_each_figure_is_the_median_of_its_rounds_node_by_node():
    rounds = [_run(100, 500, (200, 40)), _run(300, 700, (100, 60)), _run(200, 600, (300, 50))]
    median = summarize(rounds)
    assert median["single"] == {"turns_per_s": 200, "redis_cpu_us_per_turn": {"redis": 600},
                                "redis_cpu_us_per_turn_total": 600, "nodes": {"redis": "master"}}
    assert median["cluster"]["turns_per_s"] == 100
    assert median["cluster"]["redis_cpu_us_per_turn"] == {"n0": 200, "n3": 50}
    assert median["cluster"]["redis_cpu_us_per_turn_total"] == 240  # the median of the totals (240, 160, 350)
    text = table({"users": 6, "turns": 3, "rounds": 3, "median": median})
    assert "n3 (replica) 50" in text and "200.0 turns/s" in text
