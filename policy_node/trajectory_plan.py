"""``command_mode: trajectory``: the committed part of the executing chunk as a timed trajectory, without ROS.

In ``tick`` mode the node sends one joint command per arm per control tick, so every command carries
the timer's jitter (and, across a network, the link's). In ``trajectory`` mode the arm drivers play
the actions themselves at their own rate (``drivers/servo/trajectory.py``); the node sends a
trajectory only when there is something new to play:

* a chunk joined the executor since the last trajectory: the actions the executor will command from
  *now* to the end of what it holds (``ChunkExecutor.committed``, the old chunk until the switch, the
  new one after; RTC made them agree there), one point per control period, stamped with the time of
  the first (now). After its end the drivers hold the last point, as tick mode holds a starved chunk.
* the gate stopped sending (e-stop, disabled, stale inputs, no chunk): one empty trajectory, which
  makes the drivers drop what they play and hold.

Every point passes the same rules as a tick's command (``safety.CommandGate``). The first point is
this tick's gated command when nothing plays downstream; while a trajectory plays, it is where that
trajectory is now, so the splice is continuous: the drivers played it on time even if this node's
ticks stalled, while the gate, one max step a tick, then lags it, and starting from the gate would make
the splice jump back by the lag. Each later point is clipped to the joint limits and moves at most the
gate's max step (max velocity x control period) from the one before; a non-finite action repeats the
previous point. The node still runs the gate every tick (e-stop, enable, stale inputs stop the
trajectory at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bimanual_vla.config import ConfigError
from bimanual_vla.policy_node.chunking import ChunkExecutor
from bimanual_vla.policy_node.safety import CommandGate, GateResult

COMMAND_MODES = ('tick', 'trajectory')
MAX_POINTS = 1000
"""Most points in one trajectory (20 s at 50 Hz); a chunk is far shorter."""


@dataclass(frozen=True)
class PlannedTrajectory:
    """Points (k, joints; the checkpoint's order) at ``t0 + i * dt``; no points: stop (the drivers hold)."""

    t0: float
    dt: float
    points: np.ndarray

    @property
    def stop(self) -> bool:
        return len(self.points) == 0


@dataclass
class PlannerCounters:
    trajectories: int = 0
    stops: int = 0
    points: int = 0
    limited_points: int = field(default=0)  # points the gate rules changed (limits or max step)


class TrajectoryPlanner:
    """Decides, at each control tick, whether to send a trajectory and which; not thread-safe (the node's lock)."""

    def __init__(self, gate: CommandGate, period_s: float) -> None:
        """``period_s``: the control period, the spacing of the points (the gate's max step is per period)."""
        if not (period_s > 0 and math.isfinite(period_s)):
            raise ValueError(f'control period must be > 0 s, got {period_s}')
        self.gate = gate
        self.period_s = float(period_s)
        self.counters = PlannerCounters()
        self._sent_key: tuple[int, float] | None = None  # the newest chunk of the trajectory in play downstream
        self._in_play = False
        self._sent: PlannedTrajectory | None = None  # that trajectory

    def plan(self, now: float, result: GateResult, executor: ChunkExecutor) -> PlannedTrajectory | None:
        """What to send at this tick (``result``: the gate's decision for it), or None for nothing."""
        if result.command is None:
            if not self._in_play:
                return None
            self._in_play, self._sent_key, self._sent = False, None, None
            self.counters.stops += 1
            return PlannedTrajectory(now, self.period_s, np.zeros((0, len(self.gate.joint_names))))
        current = executor.current
        key = None if current is None else (current.seq, current.t0)
        if self._in_play and key == self._sent_key:
            return None
        end = executor.end_time()
        steps = 0 if end is None else max(0, math.ceil((end - now) / self.period_s - 1e-9))
        times = now + self.period_s * np.arange(1, min(steps, MAX_POINTS - 1) + 1)
        committed = executor.committed(list(times)) if len(times) else None
        points = [np.asarray(result.command, dtype=np.float64)]
        if self._in_play and self._sent is not None and current is not None:
            points = [_value_at(self._sent, now)]  # continuous at the splice; the next points move on from there
        for action in [] if committed is None else committed:
            points.append(self._gated(points[-1], action))
        self._in_play, self._sent_key = True, key
        self.counters.trajectories += 1
        self.counters.points += len(points)
        self._sent = PlannedTrajectory(now, self.period_s, np.stack(points))
        return self._sent

    def _gated(self, previous: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The gate's rules for one point after ``previous``: limits, max step, non-finite holds."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != previous.shape or not np.all(np.isfinite(action)):
            self.counters.limited_points += 1
            return previous.copy()
        target = np.clip(action, self.gate.lower, self.gate.upper)
        point = previous + np.clip(target - previous, -self.gate.max_step, self.gate.max_step)
        if np.any(point != action):
            self.counters.limited_points += 1
        return point


def _value_at(plan: PlannedTrajectory, t: float) -> np.ndarray:
    """Where a trajectory is at ``t``, as the drivers play it: linear between points, its ends held."""
    x = min(max((t - plan.t0) / plan.dt, 0.0), len(plan.points) - 1.0)
    i = min(int(x), max(len(plan.points) - 2, 0))
    if len(plan.points) == 1:
        return plan.points[0].copy()
    return plan.points[i] + (x - i) * (plan.points[i + 1] - plan.points[i])


def choose_command_mode(policy_host: str | None, value: object) -> str:
    """The ``command_mode`` parameter: ``''`` (the default) is ``trajectory`` on a rig whose policy runs
    on another computer (its ``policy_host``), ``tick`` otherwise.

    Across a link per-tick commands lost the shipped checkpoint's closed loop where trajectories, which
    carry the robot's times, kept it (docs/experiments/2026-12-07-remote-policy-closed-loop.md).
    """
    if value == '':
        return 'trajectory' if policy_host else 'tick'
    return check_command_mode(value)


def check_command_mode(value: object) -> str:
    """The ``command_mode`` parameter's value, or ConfigError naming it (one line at start)."""
    if value not in COMMAND_MODES:
        raise ConfigError(f'node policy_node: parameter command_mode must be tick or trajectory, got {value!r}')
    return str(value)
