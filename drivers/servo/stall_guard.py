"""Stall detection: a joint that pushes hard against something and does not move.

A position-controlled servo told to go where it cannot (a hard stop, the table, an
object between the gripper's fingers) drives at full power until it overheats or
strips a gear. Each cycle the driver reads every servo's present load (Feetech) or
current (Dynamixel) together with its position; :class:`StallGuard` turns those into
stall events, and the driver answers an event by holding the joint where it is
(:meth:`bimanual_vla.drivers.servo.command_filter.CommandFilter.block`).

A joint counts as pushing when its effort is at least ``load_fraction`` of full scale
*and* its goal lies beyond its present position in the direction it pushes (a joint
holding against gravity with its goal reached is not stalled). It stalls when it has
pushed for ``time_s`` without getting ``progress_rad`` further (a heavy joint moving
slowly under high load is not stalled). Times are the caller's clock (seconds).

No ROS and no bus here: positions in radians, efforts as signed fractions of full
scale in the joint's direction (positive: pushing toward larger angles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROGRESS_RAD = 0.02  # moving this far in the pushing direction restarts the clock: it is moving, not stalled
MIN_ERROR_RAD = 0.005  # goal closer than this to the position: holding, not pushing
RELEASE_RAD = 0.02  # a held joint is released once goal and position are this far back from the obstacle


@dataclass(frozen=True)
class StallEvent:
    index: int  # joint index
    direction: int  # +1: it pushed toward larger angles, -1: toward smaller
    position: float  # rad, where it is held
    effort: float  # the last effort seen (fraction of full scale, signed)
    pushed_s: float  # how long it pushed


class StallGuard:
    """Per-joint push timers for one arm; not thread-safe (the caller locks)."""

    def __init__(
        self,
        n: int,
        *,
        load_fraction: float,
        time_s: float,
        progress_rad: float = PROGRESS_RAD,
        min_error_rad: float = MIN_ERROR_RAD,
    ) -> None:
        if not 0 < load_fraction <= 1 or time_s <= 0:
            raise ValueError('load_fraction must be in (0, 1] and time_s > 0')
        self.load_fraction = load_fraction
        self.time_s = time_s
        self.progress_rad = progress_rad
        self.min_error_rad = min_error_rad
        # per joint: (since, direction, position where the push started) while pushing
        self._push: list[tuple[float, int, float] | None] = [None] * n

    def reset(self) -> None:
        """Forget every push in progress (torque off, reconnect)."""
        self._push = [None] * len(self._push)

    def update(
        self,
        now: float,
        positions: Sequence[float | None],
        efforts: Sequence[float | None],
        goals: Sequence[float | None],
    ) -> list[StallEvent]:
        """Feed one cycle's readings and the goals the servos hold; returns the joints that stalled now."""
        events = []
        for i, (position, effort, goal) in enumerate(zip(positions, efforts, goals, strict=True)):
            if position is None or effort is None or goal is None:
                continue  # a missed read says nothing: a push in progress keeps its clock
            if abs(effort) < self.load_fraction:
                self._push[i] = None
                continue
            direction = 1 if effort > 0 else -1
            if (goal - position) * direction < self.min_error_rad:
                self._push[i] = None  # the drive is not working toward its goal: not pushing into anything
                continue
            push = self._push[i]
            if push is None or push[1] != direction or (position - push[2]) * direction > self.progress_rad:
                self._push[i] = (now, direction, position)
                continue
            if now - push[0] >= self.time_s:
                events.append(StallEvent(i, direction, position, effort, now - push[0]))
                self._push[i] = None
        return events
