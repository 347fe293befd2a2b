"""command_mode trajectory by value: what the planner sends at each tick, and the gate's rules on every point."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.config import ConfigError
from bimanual_vla.policy_node.chunking import Chunk, ChunkExecutor
from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.trajectory_plan import (
    MAX_POINTS,
    TrajectoryPlanner,
    check_command_mode,
    choose_command_mode,
)

DT = 0.02
STEP = 0.04  # the gate's max step per period (2 rad/s at 50 Hz)


def gate() -> CommandGate:
    return CommandGate(['a', 'b'], np.array([-1.0, -1.0]), np.array([1.0, 1.0]), STEP, enabled=True)


def ramp_chunk(t0: float, start: float, per_step: float, n: int = 10, seq: int = 0) -> Chunk:
    col = start + per_step * np.arange(n)
    return Chunk(np.stack([col, -col], axis=1), t0=t0, dt=DT, seq=seq)


def tick(g: CommandGate, ex: ChunkExecutor, now: float, measured=(0.0, 0.0)):
    return g.step(ex.step(now).action, measured=np.array(measured), inputs_fresh=True)


def test_a_new_chunk_is_sent_once_as_what_the_executor_commands_from_now_to_its_end() -> None:
    g, ex = gate(), ChunkExecutor('naive')
    planner = TrajectoryPlanner(g, DT)
    ex.add(ramp_chunk(10.0, 0.0, 0.01), now=10.0)
    now = 10.05  # between steps 2 and 3
    plan = planner.plan(now, tick(g, ex, now), ex)
    assert plan is not None and plan.t0 == now and plan.dt == DT and not plan.stop
    # first point: this tick's gated command (0.025 from 0, the measured pose: within a step); then every period
    # until the chunk's end (10.18): 10.07, ..., 10.19 (the last one past the end holds the last action)
    expected = [0.025] + [min(0.025 + 0.01 * k, 0.09) for k in range(1, 8)]
    assert plan.points[:, 0] == pytest.approx(expected)
    assert plan.points[:, 1] == pytest.approx([-v for v in expected])
    # the same chunk at the next tick: nothing to send (the drivers play it)
    assert planner.plan(now + DT, tick(g, ex, now + DT), ex) is None
    assert planner.counters.trajectories == 1


def test_every_point_keeps_the_gates_limits_and_max_step() -> None:
    g, ex = gate(), ChunkExecutor('naive')
    planner = TrajectoryPlanner(g, DT)
    ex.add(ramp_chunk(10.0, 0.0, 0.3), now=10.0)  # 15 rad/s, and out to 2.7 rad
    plan = planner.plan(10.0, tick(g, ex, 10.0), ex)
    assert plan is not None
    a = plan.points[:, 0]
    assert a[0] == 0.0 and np.max(np.abs(np.diff(a))) == pytest.approx(STEP)
    assert np.all(np.abs(plan.points) <= 1.0) and a[-1] == pytest.approx(min(1.0, STEP * (len(a) - 1)))
    assert planner.counters.limited_points == len(a) - 1


def test_a_joined_chunk_sends_a_new_trajectory_from_the_ticks_command_across_the_switch() -> None:
    g, ex = gate(), ChunkExecutor('naive')
    planner = TrajectoryPlanner(g, DT)
    ex.add(ramp_chunk(10.0, 0.0, 0.01, seq=0), now=10.0)
    planner.plan(10.0, tick(g, ex, 10.0), ex)
    for k in range(1, 4):  # the gate runs every tick; nothing new to send
        assert planner.plan(10.0 + k * DT, tick(g, ex, 10.0 + k * DT), ex) is None
    # a chunk that disagrees (0.19 where the old one says 0.08) joins at its step 1 (10.08)
    ex.add(ramp_chunk(10.06, 0.2, -0.01, seq=1), now=10.065)
    plan = planner.plan(10.08, tick(g, ex, 10.08), ex)
    assert plan is not None and plan.t0 == 10.08
    # from where the playing trajectory is (0.04 at 10.08; test_trajectory_stall.py: not from the gate's command,
    # which lags it when ticks stall) at most a step per period, then the new chunk to its end (10.24)
    assert plan.points[:, 0] == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.15, 0.14, 0.13, 0.12, 0.11])
    assert planner.counters.trajectories == 2


def test_stops_once_when_the_gate_stops_and_starts_again_from_the_next_chunk() -> None:
    g, ex = gate(), ChunkExecutor('naive')
    planner = TrajectoryPlanner(g, DT)
    assert planner.plan(10.0, tick(g, ex, 10.0), ex) is None  # no chunk yet, nothing in play: nothing
    ex.add(ramp_chunk(10.0, 0.0, 0.01), now=10.0)
    assert planner.plan(10.02, tick(g, ex, 10.02), ex) is not None
    g.set_estop(True)
    stop = planner.plan(10.04, tick(g, ex, 10.04), ex)
    assert stop is not None and stop.stop and stop.points.shape == (0, 2)
    assert planner.plan(10.06, tick(g, ex, 10.06), ex) is None  # said once
    g.set_estop(False)
    g.set_enabled(True)
    again = planner.plan(10.08, tick(g, ex, 10.08), ex)  # the same chunk, but nothing is in play downstream
    assert again is not None and not again.stop and again.points[0, 0] == pytest.approx(0.0 + STEP)
    assert (planner.counters.trajectories, planner.counters.stops) == (2, 1)


def test_a_long_chunk_is_cut_to_max_points() -> None:
    g, ex = gate(), ChunkExecutor('naive')
    ex.add(Chunk(np.zeros((MAX_POINTS + 50, 2)), t0=10.0, dt=DT), now=10.0)
    plan = TrajectoryPlanner(g, DT).plan(10.0, tick(g, ex, 10.0), ex)
    assert plan is not None and len(plan.points) == MAX_POINTS


def test_the_default_command_mode_is_trajectory_on_a_remote_rig_and_tick_on_one_host() -> None:
    assert choose_command_mode('gpu-box', '') == 'trajectory'
    assert choose_command_mode(None, '') == 'tick' and choose_command_mode('', '') == 'tick'
    assert choose_command_mode('gpu-box', 'tick') == 'tick'  # what the user sets wins
    with pytest.raises(ConfigError, match='parameter command_mode must be tick or trajectory'):
        choose_command_mode('gpu-box', 'ticks')


def test_command_mode_is_tick_or_trajectory() -> None:
    assert check_command_mode('tick') == 'tick' and check_command_mode('trajectory') == 'trajectory'
    with pytest.raises(ConfigError, match='parameter command_mode must be tick or trajectory, got .ticks.'):
        check_command_mode('ticks')
