"""command_mode trajectory when the node's control ticks stall (a loaded host, a sim clock arriving over a link).

The drivers play the previous trajectory on time while the node's timer does not fire; the safety gate
moves its command at most one max step per tick, so after a stall its command lags where that trajectory
has taken the arm. A new trajectory must start from where the previous one is at its start, not from the
lagging gate: otherwise the driver's splice jumps back by the lag
(seen as 0.2-0.58 rad splices in bench/remote_bench.py at 60 ms, docs/experiments/2026-12-07-remote-policy.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.policy_node.chunking import Chunk, ChunkExecutor
from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.trajectory_plan import PlannedTrajectory, TrajectoryPlanner

DT = 0.02
STEP = 0.04


def value_at(plan: PlannedTrajectory, t: float) -> np.ndarray:
    x = min(max((t - plan.t0) / plan.dt, 0.0), len(plan.points) - 1.0)
    i = min(int(x), len(plan.points) - 2)
    return plan.points[i] + (x - i) * (plan.points[i + 1] - plan.points[i])


def fast_chunk(t0: float, seq: int) -> Chunk:
    """Faster than the gate allows (0.06 rad a step against 0.04), from 0 at 10.0 s: the gate saturates."""
    col = 0.06 * (np.arange(50) + round((t0 - 10.0) / DT))
    return Chunk(np.stack([col, -col], axis=1), t0=t0, dt=DT, seq=seq)


@pytest.mark.parametrize('stall_ticks', [0, 3, 11])
def test_a_trajectory_after_a_stall_starts_where_the_previous_one_is(stall_ticks: int) -> None:
    gate = CommandGate(['a', 'b'], np.array([-5.0, -5.0]), np.array([5.0, 5.0]), STEP, enabled=True)
    ex = ChunkExecutor('naive')
    planner = TrajectoryPlanner(gate, DT)
    ex.add(fast_chunk(10.0, 0), now=10.0)
    first = None
    now = 10.0
    for k in range(4):  # on time: the first trajectory, then nothing new to send
        now = 10.0 + k * DT
        result = gate.step(ex.step(now).action, measured=np.zeros(2), inputs_fresh=True)
        plan = planner.plan(now, result, ex)
        first = first or plan
    assert first is not None
    now += (1 + stall_ticks) * DT  # the timer did not fire for stall_ticks periods; the driver played on
    ex.add(fast_chunk(10.0 + 2 * DT, 1), now=now)
    result = gate.step(ex.step(now).action, measured=np.zeros(2), inputs_fresh=True)
    plan = planner.plan(now, result, ex)
    assert plan is not None and not plan.stop
    splice = np.max(np.abs(plan.points[0] - value_at(first, now)))
    assert splice <= 1e-12, f'splice jumps {splice:.4f} rad after {stall_ticks} missed ticks'
    assert np.max(np.abs(np.diff(plan.points, axis=0))) <= STEP + 1e-12  # and moves on at the max step
