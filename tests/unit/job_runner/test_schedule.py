"""The scheduling rules as tables: readiness, strategies, failures, waiting."""

from job_runner.dag import build_graph
from job_runner.schedule import Schedule, Strategy

from .test_dag import h, names, node


def diamond() -> Schedule:
    # a <- (b, c) <- d ; e independent; x is an input from outside
    return Schedule(
        build_graph(
            [node("a", "x"), node("b", "a"), node("c", "a"), node("d", "b", "c"), node("e", "x")]
        ),
        available={h("x")},
    )


def run_all(schedule: Schedule, workers: int, strategy: Strategy) -> list[list[str]]:
    waves = []
    while not schedule.finished:
        wave = schedule.next_batch(workers, strategy)
        assert wave, "stuck"
        for handle in wave:
            schedule.started(handle)
        for handle in wave:
            schedule.finished_node(handle)
        waves.append(names(wave))
    return waves


def test_max_parallelism_fills_the_workers_with_ready_nodes():
    assert run_all(diamond(), 4, Strategy.MAX_PARALLELISM) == [["a", "e"], ["b", "c"], ["d"]]


def test_max_locality_runs_one_node_per_chain_at_a_time():
    waves = run_all(diamond(), 4, Strategy.MAX_LOCALITY)
    assert waves == [["a", "e"], ["b"], ["c"], ["d"]]


def test_nothing_starts_before_its_inputs_exist():
    schedule = Schedule(build_graph([node("a", "x"), node("b", "a")]))
    assert schedule.next_batch(4, Strategy.MAX_PARALLELISM) == []
    assert schedule.awaited() == {h("x")}
    schedule.arrived(h("x"))
    assert names(schedule.next_batch(4, Strategy.MAX_PARALLELISM)) == ["a"]


def test_a_failure_fails_everything_downstream_and_nothing_else():
    schedule = diamond()
    for handle in schedule.next_batch(4, Strategy.MAX_PARALLELISM):
        schedule.started(handle)
    lost = schedule.failed_node(h("a"), "bad ciphertext")
    assert sorted(names(lost)) == ["b", "c", "d"]
    assert schedule.failed[h("d")].endswith("failed: bad ciphertext")
    schedule.finished_node(h("e"))
    assert schedule.finished and schedule.done == {h("e")}


def test_previous_runs_state_is_respected():
    graph = build_graph(
        [
            node("a", "x", completed=True),
            node("b", "a"),
            node("c", "x", error="boom"),
            node("d", "c"),
        ]
    )
    schedule = Schedule(graph, available={h("x")})
    assert names(schedule.next_batch(4, Strategy.MAX_PARALLELISM)) == ["b"]
    assert schedule.failed[h("d")] == "input 0x" + h("c").hex() + " failed: boom"


def test_a_node_held_elsewhere_is_awaited_then_counts_as_done():
    schedule = diamond()
    schedule.started(h("a"))
    schedule.held_elsewhere(h("a"))
    assert h("a") in schedule.awaited() and not schedule.finished
    schedule.arrived(h("a"))
    assert h("a") in schedule.done
    assert sorted(names(schedule.next_batch(4, Strategy.MAX_PARALLELISM))) == ["b", "c", "e"]


def test_a_failed_outside_input_fails_its_consumers():
    schedule = Schedule(
        build_graph([node("a", "x"), node("b", "a"), node("c", "y")]), available={h("y")}
    )
    direct = schedule.input_failed(h("x"), "producer failed")
    assert names(direct) == ["a"]
    assert set(schedule.failed) == {h("a"), h("b")}
    assert names(schedule.next_batch(4, Strategy.MAX_PARALLELISM)) == ["c"]
