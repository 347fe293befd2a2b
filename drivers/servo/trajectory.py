"""Timed joint trajectories played out by a driver at its own read/write rate, without ROS.

A client (the policy node in ``command_mode: trajectory``, a planner) sends the arm a
trajectory_msgs/JointTrajectory-like value: joint names, a start time (``header.stamp``) and
points with ``time_from_start``. The driver calls :meth:`TrajectoryPlayer.sample` at every
read/write cycle and gets the goal for *that* moment, so the goals written to the servos keep the
trajectory's times however late or irregularly the client's messages arrive; only a new
trajectory has to arrive before the old one runs out.

Rules (those of ros2_controllers' joint trajectory controller where it has one):

* **interpolation**: linear between neighbouring points. The policy's chunks are what a model
  produced at the control period, not a smooth plan with velocities; a cubic through them would
  overshoot between noisy points, and linear is what the policy node's own chunk executor commands
  (``policy_node.chunking.Chunk.sample``), so driver-executed and per-tick streaming follow the
  same path.
* **start**: at ``start`` (a zero stamp means "now"); before it the player gives nothing and the
  arm keeps doing what it did.
* **splice**: a new trajectory takes over at ``max(now, start)`` (the splice time). The old one
  plays until then; the new one's points before it are dropped; from the splice time the goal runs
  in a straight line from where the old one was (or the driver's goal, if nothing was playing) to
  the new trajectory's first point at/after it, so a new trajectory never makes the goal jump
  (a point exactly at the splice time is taken as it is; the driver's ramp limits that step).
  Joints a trajectory does not name keep their value at the splice time.
* **run out**: past the last point the player holds it and says so once (``finished``).
* **empty** (no points): stop; the player forgets the trajectory and the driver holds its goal.
* **refused** (:class:`TrajectoryRejected`, counted by reason in ``counters``): unknown or
  duplicate joint names, a point whose positions do not match the names, NaN/Inf, times that are
  negative or not strictly increasing, a start that is not finite, too many points, and a
  trajectory that ends before now. A refused trajectory changes nothing.
* **time jump**: the clock going back (a sim reset) drops the trajectory (its times belong to the
  old timeline).

Times are seconds of the clock the driver runs on (ROS time: sim time under sim), the clock the
client stamps with.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

MAX_POINTS = 10_000
"""Largest trajectory taken (200 s at 50 Hz): bounds what one message may make the driver hold."""

TIME_JUMP_TOLERANCE_S = 0.05
"""The clock further back than this from the latest seen counts as a jump (as the policy node's scheduler)."""

_EPS_S = 1e-9

State = Literal['idle', 'waiting', 'playing', 'holding']


class TrajectoryRejected(ValueError):
    """A trajectory was refused; ``reason`` is a short key for counters, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Trajectory:
    """A JointTrajectory's content: ``start`` (header.stamp, s; 0 = now), per point ``times`` (time_from_start, s)
    and ``positions`` (one row per point, one value per name)."""

    joint_names: tuple[str, ...]
    start: float
    times: tuple[float, ...]
    positions: tuple[tuple[float, ...], ...]

    @classmethod
    def from_message(cls, msg: object) -> Trajectory:
        """From a trajectory_msgs/JointTrajectory (read by attribute: no ROS import here)."""
        stamp = msg.header.stamp  # type: ignore[attr-defined]
        points = msg.points  # type: ignore[attr-defined]
        return cls(
            joint_names=tuple(msg.joint_names),  # type: ignore[attr-defined]
            start=stamp.sec + stamp.nanosec * 1e-9,
            times=tuple(p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in points),
            positions=tuple(tuple(float(v) for v in p.positions) for p in points),
        )


@dataclass(frozen=True)
class PlayerSample:
    """The goal for one cycle: ``positions`` per joint of the arm (NaN: the trajectory does not know it)."""

    positions: np.ndarray
    state: State  # 'playing' or 'holding' (past the last point)
    finished: bool  # this sample is the first past the last point


class TrajectoryPlayer:
    """One arm's trajectory in time; not thread-safe (the driver calls it under its lock)."""

    def __init__(self, joint_names: Sequence[str], *, log: Callable[[str, str], None] | None = None) -> None:
        """``joint_names``: the arm's joints as on the wire (``<arm>_<joint>``), in the driver's order."""
        self.joint_names = list(joint_names)
        self.index = {n: i for i, n in enumerate(self.joint_names)}
        self._log = log or (lambda level, message: None)
        self.counters: Counter[str] = Counter()
        self._times = np.zeros(0)  # absolute times of the points in play
        self._points = np.zeros((0, len(self.joint_names)))  # (k, n), NaN where unknown
        self._holding = False
        self._latest_now = -math.inf

    # ------------------------------------------------------------------ state

    @property
    def active(self) -> bool:
        """A trajectory is in play (waiting for its start, playing, or holding its last point)."""
        return len(self._times) > 0

    def state(self, now: float | None = None) -> State:
        if not self.active:
            return 'idle'
        if self._holding:
            return 'holding'
        if now is not None and now < self._times[0]:
            return 'waiting'
        return 'playing'

    def end_time(self) -> float | None:
        return float(self._times[-1]) if self.active else None

    def clear(self, reason: str = '') -> bool:
        """Forget the trajectory (e-stop, torque off, a joint command took over); True if one was in play."""
        was = self.active
        if was and reason:
            self.counters[f'cleared_{reason}'] += 1
        self._times = np.zeros(0)
        self._points = np.zeros((0, len(self.joint_names)))
        self._holding = False
        return was

    # --------------------------------------------------------------- submit

    def submit(self, trajectory: Trajectory, now: float, current: Sequence[float | None]) -> str:
        """Validate ``trajectory`` and splice it in at ``max(now, start)``; returns 'stop', 'started' or 'spliced'.

        ``current``: the driver's goals now (the arm's order, None where unknown), where the goal starts
        from when no trajectory is in play. Raises TrajectoryRejected (counted) and changes nothing then.
        """
        self._note_time(now)
        try:
            columns, times, rows = self._validate(trajectory, now)
        except TrajectoryRejected as exc:
            self.counters['rejected'] += 1
            self.counters[f'rejected_{exc.reason}'] += 1
            raise
        if len(times) == 0:
            self.counters['stops'] += 1
            self.clear()
            return 'stop'
        start = trajectory.start if trajectory.start > 0 else now  # zero stamp: start now
        splice = max(now, start)
        replaced = self.active
        from_old = replaced and splice >= self._times[0]  # the old one plays until the splice
        if from_old:
            anchor = self._value_at(splice)
            upto = self._times < splice - _EPS_S
            old_times, old_points = self._times[upto], self._points[upto]
        else:  # nothing playing (or the old one not started yet): from the driver's goal
            anchor = np.array([np.nan if c is None else float(c) for c in current])
            old_times, old_points = np.zeros(0), np.zeros((0, len(self.joint_names)))
        keep_new = times >= splice - _EPS_S
        new_times = times[keep_new]
        new_rows = np.tile(anchor, (len(new_times), 1))
        new_rows[:, columns] = rows[keep_new]
        if len(new_times) and new_times[0] <= splice + _EPS_S:
            head_t, head_p = np.zeros(0), np.zeros((0, len(self.joint_names)))  # a point at the splice: taken as is
        else:
            head_t, head_p = np.array([splice]), anchor[None, :]
        self._times = np.concatenate([old_times, head_t, new_times])
        self._points = np.concatenate([old_points, head_p, new_rows])
        self._holding = False
        self.counters['accepted'] += 1
        if replaced:
            self.counters['spliced'] += 1
        self._prune(now)
        return 'spliced' if replaced else 'started'

    def _validate(self, trajectory: Trajectory, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(columns of the named joints, absolute times, positions (k, names)); raises TrajectoryRejected."""
        names, points = list(trajectory.joint_names), trajectory.positions
        if len(trajectory.times) != len(points):
            raise TrajectoryRejected('length_mismatch', f'{len(trajectory.times)} times but {len(points)} points')
        if len(points) > MAX_POINTS:
            raise TrajectoryRejected('too_many_points', f'{len(points)} points (at most {MAX_POINTS})')
        if not math.isfinite(trajectory.start) or trajectory.start < 0:
            raise TrajectoryRejected('bad_start', f'start time {trajectory.start!r} is not a finite time')
        if not points:
            return np.zeros(0, dtype=int), np.zeros(0), np.zeros((0, 0))
        if not names:
            raise TrajectoryRejected('empty', 'trajectory has points but no joint names')
        unknown = [n for n in names if n not in self.index]
        if unknown:
            raise TrajectoryRejected(
                'unknown_joint', f'unknown joint name(s) {unknown}; this arm has {self.joint_names}'
            )
        if len(set(names)) != len(names):
            raise TrajectoryRejected('duplicate_joint', f'duplicate joint names in {names}')
        for k, row in enumerate(points):
            if len(row) != len(names):
                raise TrajectoryRejected(
                    'length_mismatch', f'point {k} has {len(row)} positions for {len(names)} joint names'
                )
        rows = np.array(points, dtype=np.float64).reshape(len(points), len(names))
        if not np.all(np.isfinite(rows)):
            k = int(np.flatnonzero(~np.all(np.isfinite(rows), axis=1))[0])
            raise TrajectoryRejected('not_finite', f'point {k} has a non-finite position: {list(points[k])}')
        rel = np.array(trajectory.times, dtype=np.float64)
        if not np.all(np.isfinite(rel)) or np.any(rel < 0):
            raise TrajectoryRejected('bad_time', f'time_from_start must be finite and >= 0, got {list(rel)}')
        if np.any(np.diff(rel) <= 0):
            k = int(np.flatnonzero(np.diff(rel) <= 0)[0]) + 1
            raise TrajectoryRejected(
                'times_not_increasing',
                f'time_from_start must increase: point {k} at {rel[k]:.6f} s after {rel[k - 1]:.6f} s',
            )
        start = trajectory.start if trajectory.start > 0 else now  # zero stamp: start now
        times = start + rel
        if times[-1] < now - _EPS_S:
            raise TrajectoryRejected(
                'ended',
                f'trajectory ended {now - times[-1]:.3f} s before it arrived (start {start:.3f}, now {now:.3f})',
            )
        return np.array([self.index[n] for n in names]), times, rows

    # --------------------------------------------------------------- sample

    def sample(self, now: float) -> PlayerSample | None:
        """The goal at ``now``: interpolated, or the last point held; None when idle or before the start."""
        if self._note_time(now) or not self.active or now < self._times[0] - _EPS_S:
            return None
        finished = False
        if now >= self._times[-1] - _EPS_S:
            positions = self._points[-1].copy()
            if not self._holding:
                self._holding = finished = True
                self.counters['finished'] += 1
        else:
            positions = self._value_at(now)
        self._prune(now)
        return PlayerSample(positions, 'holding' if self._holding else 'playing', finished)

    def _value_at(self, t: float) -> np.ndarray:
        """The trajectory in play at ``t`` (its first point before it, its last after it)."""
        times = self._times
        if t <= times[0]:
            return self._points[0].copy()
        if t >= times[-1]:
            return self._points[-1].copy()
        hi = int(np.searchsorted(times, t, side='right'))
        lo = hi - 1
        frac = (t - times[lo]) / (times[hi] - times[lo])
        return (1.0 - frac) * self._points[lo] + frac * self._points[hi]

    def _prune(self, now: float) -> None:
        """Drop points before the one at or before ``now`` (they can no longer be reached)."""
        lo = int(np.searchsorted(self._times, now, side='right')) - 1
        if lo > 0:
            self._times, self._points = self._times[lo:], self._points[lo:]

    def _note_time(self, now: float) -> bool:
        """True (and the trajectory dropped) when the clock went back."""
        if now >= self._latest_now - TIME_JUMP_TOLERANCE_S:
            self._latest_now = max(self._latest_now, now)
            return False
        back = self._latest_now - now
        self._latest_now = now
        self.counters['time_jumps'] += 1
        if self.clear('time_jump'):
            self._log('warn', f'clock went back {back:.2f} s: trajectory dropped, holding')
        return True


__all__ = ['MAX_POINTS', 'PlayerSample', 'Trajectory', 'TrajectoryPlayer', 'TrajectoryRejected']
