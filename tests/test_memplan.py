"""Static memory planning: lifetimes, views, in-place reuse, greedy-by-size offsets."""
from __future__ import annotations

import numpy as np
import pytest

from qcompile.memplan import (Buffer, MemPlanError, Step, build_buffers, check_overlaps,
                              greedy_by_size, lower_bound, plan_buffers, plan_memory)


def chain(sizes):
    """x -> t0 -> t1 -> ... : each step reads the previous tensor."""
    steps, prev = [], "x"
    for i, s in enumerate(sizes):
        steps.append(Step(f"s{i}", {f"t{i}": s}, [prev]))
        prev = f"t{i}"
    return steps


def test_chain_reuses_memory_ping_pong():
    plan = plan_memory(chain([100, 200, 100, 200]), external={"x"})
    assert plan.lower_bound == 300          # two neighbours are live at once
    assert plan.arena_size == 300
    assert not check_overlaps(plan)
    # t0 and t2 are never live together: they may share; t1 and t2 may not
    b1, b2 = plan.buffer_of("t1"), plan.buffer_of("t2")
    assert b1.overlaps(b2)


def test_lifetimes_run_from_definition_to_last_use():
    steps = [Step("a", {"a": 8}, ["x"]), Step("b", {"b": 8}, ["a"]), Step("c", {"c": 8}, ["b", "a"])]
    bufs = {b.name: b for b in build_buffers(steps, external={"x"})}
    assert (bufs["a"].start, bufs["a"].end) == (0, 2)
    assert (bufs["b"].start, bufs["b"].end) == (1, 2)
    assert (bufs["c"].start, bufs["c"].end) == (2, 2)


def test_sizes_are_aligned_and_offsets_respect_alignment():
    plan = plan_memory([Step("a", {"a": 3}, ["x"]), Step("b", {"b": 5}, ["a"]),
                        Step("c", {"c": 1}, ["a", "b"])], external={"x"}, alignment=4)
    assert all(off % 4 == 0 for off in plan.offsets.values())
    assert plan.arena_size == 4 + 8 + 4


def test_a_view_shares_its_source_buffer_and_extends_its_life():
    steps = [Step("conv", {"a": 64}, ["x"]),
             Step("reshape", {"v": 64}, ["a"], aliases={"v": "a"}),
             Step("other", {"o": 64}, ["x"]),
             Step("fc", {"y": 16}, ["v", "o"])]
    plan = plan_memory(steps, external={"x"})
    assert plan.offsets["a"] == plan.offsets["v"]
    buf = plan.buffer_of("a")
    assert "v" in buf.tensors and buf.end == 3
    assert not check_overlaps(plan)


def test_view_of_an_external_tensor_stays_external():
    steps = [Step("reshape", {"v": 64}, ["x"], aliases={"v": "x"}),
             Step("fc", {"y": 16}, ["v"])]
    plan = plan_memory(steps, external={"x", "y"})
    assert plan.arena_size == 0 and "v" not in plan.offsets


def test_in_place_when_the_input_dies_but_not_when_it_is_read_later():
    dies = [Step("conv", {"a": 32}, ["x"]), Step("lut", {"b": 32}, ["a"], inplace={"b": "a"}),
            Step("fc", {"c": 8}, ["b"])]
    plan = plan_memory(dies, external={"x"})
    assert plan.offsets["a"] == plan.offsets["b"] and plan.buffer_of("a") is plan.buffer_of("b")
    lives = [Step("conv", {"a": 32}, ["x"]), Step("lut", {"b": 32}, ["a"], inplace={"b": "a"}),
             Step("add", {"c": 32}, ["a", "b"])]
    plan = plan_memory(lives, external={"x"})
    assert plan.buffer_of("a") is not plan.buffer_of("b")
    assert not check_overlaps(plan)


def test_in_place_refused_when_a_view_of_the_input_is_read_later():
    steps = [Step("conv", {"a": 32}, ["x"]), Step("view", {"v": 32}, ["a"], aliases={"v": "a"}),
             Step("lut", {"b": 32}, ["a"], inplace={"b": "a"}), Step("add", {"c": 32}, ["v", "b"])]
    plan = plan_memory(steps, external={"x"})
    assert plan.buffer_of("b") is not plan.buffer_of("a")
    assert not check_overlaps(plan)


def test_in_place_refused_when_the_output_is_larger():
    steps = [Step("a", {"a": 8}, ["x"]), Step("widen", {"b": 32}, ["a"], inplace={"b": "a"})]
    plan = plan_memory(steps, external={"x"})
    assert plan.buffer_of("b") is not plan.buffer_of("a")


def test_scratch_lives_for_its_step_only():
    steps = [Step("conv1", {"a": 100}, ["x"], scratch=40), Step("conv2", {"b": 100}, ["a"], scratch=60)]
    plan = plan_memory(steps, external={"x"})
    scratch = {b.name: b for b in plan.buffers if not b.tensors}
    assert set(scratch) == {"conv1.scratch", "conv2.scratch"}
    assert scratch["conv2.scratch"].start == scratch["conv2.scratch"].end == 1
    assert plan.lower_bound == 260 and not check_overlaps(plan)


def test_bad_schedules_are_errors():
    with pytest.raises(MemPlanError, match="reads 'nope'"):
        plan_memory([Step("a", {"a": 4}, ["nope"])])
    with pytest.raises(MemPlanError, match="defined twice"):
        plan_memory([Step("a", {"a": 4}, []), Step("b", {"a": 4}, [])])


def test_greedy_by_size_places_largest_first_in_the_tightest_gap():
    bufs = [Buffer("big", 100, 0, 1, ("big",)), Buffer("small", 20, 1, 2, ("small",)),
            Buffer("late", 90, 2, 3, ("late",))]
    off = greedy_by_size(bufs)
    assert off["big"] == 0
    assert off["late"] == 0          # big is dead by step 2
    assert off["small"] == 100       # live with big (step 1) and late (step 2): above both


@pytest.mark.parametrize("seed", range(40))
def test_random_schedules_never_overlap_and_stay_near_the_bound(seed):
    rng = np.random.default_rng(seed)
    steps, live = [], ["x"]
    for i in range(int(rng.integers(3, 30))):
        k = int(rng.integers(1, min(3, len(live)) + 1))
        uses = list(rng.choice(live, size=k, replace=False))
        name = f"t{i}"
        kind = rng.integers(0, 4)
        step = Step(f"s{i}", {name: int(rng.integers(1, 5000))}, uses,
                    scratch=int(rng.integers(0, 500)) if kind == 0 else 0)
        if kind == 1:
            step.aliases = {name: uses[0]}
        elif kind == 2:
            step.inplace = {name: uses[0]}
        steps.append(step)
        live.append(name)
        if len(live) > 4:
            live.pop(int(rng.integers(0, len(live) - 1)))
    plan = plan_memory(steps, external={"x"})
    assert not check_overlaps(plan), check_overlaps(plan)
    assert plan.arena_size >= plan.lower_bound
    # every offset is inside the arena
    for b in plan.buffers:
        assert plan.buffer_offsets[b.name] + b.size <= plan.arena_size


def test_lower_bound_is_the_peak_of_simultaneously_live_bytes():
    bufs = [Buffer("a", 10, 0, 2, ("a",)), Buffer("b", 20, 1, 1, ("b",)),
            Buffer("c", 5, 2, 3, ("c",))]
    assert lower_bound(bufs) == 30
    assert plan_buffers(bufs).arena_size >= 30


# ---- the C backend's schedules ----------------------------------------------------------------

def _c_program(graph, batch=1):
    pytest.importorskip("qcompile.targets.c")
    from qcompile.targets.c import CProgram
    return CProgram(graph, batch=batch)


@pytest.mark.parametrize("seed", range(12))
def test_random_integer_graphs_plan_within_ten_percent_of_the_bound(seed):
    from qcompile.targets.c.testing import random_graph
    prog = _c_program(random_graph(seed))
    plan = prog.plan
    assert not check_overlaps(plan)
    assert plan.arena_size <= 1.10 * plan.lower_bound, (plan.arena_size, plan.lower_bound)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits", "mnist", "rnet"])
@pytest.mark.parametrize("batch", [1, 8])
def test_real_models_plan_within_ten_percent_of_the_bound(name, batch):
    pytest.importorskip("torch")
    from qcompile.targets.c.testing import lowered_model
    try:
        graph, _ = lowered_model(name)
    except (ImportError, FileNotFoundError, OSError) as exc:
        pytest.skip(f"{name} is not available: {exc}")
    prog = _c_program(graph, batch)
    plan = prog.plan
    assert not check_overlaps(plan)
    assert plan.lower_bound > 0
    assert plan.arena_size <= 1.10 * plan.lower_bound, (plan.arena_size, plan.lower_bound)
