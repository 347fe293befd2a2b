"""Safety between incoming joint commands and the goals written to an arm's servos.

Everything a command must pass before it moves metal lives here, free of ROS and
of the serial bus, so it can be tested exhaustively: names must be this arm's,
positions finite; targets are clamped to the joint limits; each driver tick moves
a goal by at most ``max_step_rad`` towards its target (a far-away command becomes
a ramp, not a jump), and by at most ``max_velocity_rad_s`` times the time since the
previous tick that set goals (ticks that come close together after an I/O overrun
do not add up to a faster motion); with no command for ``command_timeout_s`` the arm holds where
its goal is (watchdog); while the e-stop is active, or torque is off, nothing moves
and commands are refused until released. A joint held at an obstacle (:meth:`CommandFilter.block`,
from the stall guard) takes no target beyond it until a command has moved it back.

Times are ``time.monotonic()`` seconds passed in by the caller.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class JointLimit:
    name: str  # qualified, as on the wire: <arm>_<joint>
    lower: float
    upper: float


class CommandRejected(ValueError):
    """A command was refused; ``reason`` is a short key for counters, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CommandFilter:
    """Turns commands into per-tick goals (radians) for one arm; not thread-safe (the caller locks)."""

    def __init__(
        self,
        joints: Sequence[JointLimit],
        *,
        max_step_rad: float,
        command_timeout_s: float,
        max_velocity_rad_s: float,
        tick_period_s: float,
    ) -> None:
        """``tick_period_s``: the nominal time between ticks, what the first tick after a reset or hold may use."""
        if not all(v > 0 for v in (max_step_rad, command_timeout_s, max_velocity_rad_s, tick_period_s)):
            raise ValueError('max_step_rad, command_timeout_s, max_velocity_rad_s and tick_period_s must be > 0')
        self.joints = list(joints)
        self.index = {j.name: i for i, j in enumerate(self.joints)}
        self.max_step_rad = max_step_rad
        self.command_timeout_s = command_timeout_s
        self.max_velocity_rad_s = max_velocity_rad_s
        self.tick_period_s = tick_period_s
        # when goals were last set (a tick whose goals are all on target counts: the servos hold them);
        # None after a reset or hold, when nothing has moved since
        self.last_goal_time: float | None = None
        n = len(self.joints)
        self.goal: list[float | None] = [None] * n  # what the servos were last told (or hold)
        self.target: list[float | None] = [None] * n  # where the latest command wants them
        self.last_command_time: float | None = None
        self.estopped = False
        self.enabled = True  # torque on
        self.watchdog_active = False
        self.counters: Counter[str] = Counter()
        # per joint, an obstacle the stall guard found: (direction it pushed in, where it holds) or None;
        # targets beyond it in that direction stop there
        self.blocked: list[tuple[int, float] | None] = [None] * n

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        """One word for diagnostics: why the arm is (not) following commands."""
        if self.estopped:
            return 'estop'
        if not self.enabled:
            return 'torque_off'
        if self.last_command_time is None:
            return 'waiting_for_command'
        if self.watchdog_active:
            return 'watchdog_hold'
        return 'following'

    def reset_to(self, positions: Sequence[float | None]) -> None:
        """Start over from measured positions: goals = where the joints are, no target.

        Called at start, after a reconnect and before torque goes on, so the first goal
        written is the present position and nothing jumps.
        """
        if len(positions) != len(self.joints):
            raise ValueError(f'expected {len(self.joints)} positions, got {len(positions)}')
        self.goal = [self._clamp(i, p) if p is not None and math.isfinite(p) else None for i, p in enumerate(positions)]
        self.target = [None] * len(self.joints)
        self.blocked = [None] * len(self.joints)
        self.last_command_time = None
        self.last_goal_time = None
        self.watchdog_active = False

    def set_goal(self, index: int, position: float | None) -> None:
        """Track a joint whose goal is unknown (e.g. a servo that came back) from its measured position."""
        self.goal[index] = None if position is None or not math.isfinite(position) else self._clamp(index, position)
        self.target[index] = None
        self.blocked[index] = None

    def block(self, index: int, position: float, direction: int) -> None:
        """Stop pushing a joint into an obstacle: goal and target := ``position``, no further in ``direction``.

        Commands beyond ``position`` in ``direction`` stop there until :meth:`release_blocks`
        sees a command move the joint away, so a policy that keeps commanding into the
        obstacle (a gripper closed on an object) holds instead of pushing again.
        """
        held = self._clamp(index, position)
        self.goal[index] = held
        self.target[index] = held
        self.blocked[index] = (1 if direction > 0 else -1, held)

    def release_blocks(self, positions: Sequence[float | None], margin: float) -> list[int]:
        """Unblock the joints whose goal and measured position are both ``margin`` away from their obstacle."""
        released = []
        for i, block in enumerate(self.blocked):
            if block is None:
                continue
            direction, at = block
            away = [(at - v) * direction for v in (self.goal[i], positions[i]) if v is not None]
            if len(away) == 2 and min(away) >= margin:
                self.blocked[i] = None
                released.append(i)
        return released

    def set_estop(self, active: bool) -> None:
        """E-stop: freeze targets at the current goals; commands are refused until released."""
        if active and not self.estopped:
            self.counters['estop_activations'] += 1
        self.estopped = active
        self._hold()

    def set_enabled(self, enabled: bool) -> None:
        """Torque on/off. While off nothing is commanded; the caller resets to present positions on re-enable."""
        self.enabled = enabled
        self._hold()

    def _hold(self) -> None:
        self.target = list(self.goal)
        self.last_goal_time = None

    # --------------------------------------------------------------- commands

    def submit(self, names: Sequence[str], positions: Sequence[float], now: float) -> list[str]:
        """Validate a command and make it the new target; return notes about clamping.

        Raises CommandRejected (and counts the reason) for: wrong lengths, unknown or
        duplicate names, NaN/Inf, e-stop active, torque off. A rejected command changes
        nothing: not even part of it is applied.
        """
        try:
            targets = self._validate(names, positions)
        except CommandRejected as exc:
            self.counters['rejected'] += 1
            self.counters[f'rejected_{exc.reason}'] += 1
            raise
        notes = []
        for i, value in targets.items():
            clamped = self._clamp(i, value)
            if clamped != value:
                self.counters['clamped_to_limits'] += 1
                j = self.joints[i]
                notes.append(f'{j.name}: {value:+.4f} rad clamped to [{j.lower:+.4f}, {j.upper:+.4f}]')
            block = self.blocked[i]
            if block is not None and (clamped - block[1]) * block[0] > 0:
                self.counters['held_at_obstacle'] += 1
                clamped = block[1]
            self.target[i] = clamped
        self.last_command_time = now
        self.watchdog_active = False
        self.counters['accepted'] += 1
        return notes

    def _validate(self, names: Sequence[str], positions: Sequence[float]) -> dict[int, float]:
        if self.estopped:
            raise CommandRejected('estop', 'e-stop is active: commands are ignored until it is released')
        if not self.enabled:
            raise CommandRejected('torque_off', 'torque is off: enable it (torque service) before commanding')
        if len(names) == 0:
            raise CommandRejected('empty', 'command has no joint names')
        if len(names) != len(positions):
            raise CommandRejected(
                'length_mismatch', f'{len(names)} names but {len(positions)} positions (need one position per name)'
            )
        unknown = [n for n in names if n not in self.index]
        if unknown:
            raise CommandRejected('unknown_joint', f'unknown joint name(s) {unknown}; this arm has {list(self.index)}')
        if len(set(names)) != len(names):
            raise CommandRejected('duplicate_joint', f'duplicate joint names in {list(names)}')
        bad = [f'{n}={p!r}' for n, p in zip(names, positions, strict=True) if not math.isfinite(p)]
        if bad:
            raise CommandRejected('not_finite', f'non-finite position(s): {", ".join(bad)}')
        return {self.index[n]: float(p) for n, p in zip(names, positions, strict=True)}

    def _clamp(self, i: int, value: float) -> float:
        j = self.joints[i]
        return min(max(value, j.lower), j.upper)

    # ------------------------------------------------------------------ ticks

    def tick(self, now: float) -> dict[int, float] | None:
        """Goals that change this tick (joint index -> rad), or None when nothing should be written.

        Each goal moves toward its target by at most ``max_step_rad`` and at most
        ``max_velocity_rad_s`` times the time since the previous tick (the nominal tick
        period for the first tick after a reset or hold). After ``command_timeout_s``
        without a command the targets collapse onto the goals (hold where we are) until
        a new command arrives.
        """
        if self.estopped or not self.enabled or self.last_command_time is None:
            return None
        if now - self.last_command_time > self.command_timeout_s:
            if not self.watchdog_active:
                self.watchdog_active = True
                self.counters['watchdog_trips'] += 1
                self._hold()
            return None
        elapsed = self.tick_period_s if self.last_goal_time is None else max(0.0, now - self.last_goal_time)
        by_velocity = self.max_velocity_rad_s * elapsed
        max_step = min(self.max_step_rad, by_velocity)
        out: dict[int, float] = {}
        for i, (goal, target) in enumerate(zip(self.goal, self.target, strict=True)):
            if target is None:
                continue
            if goal is None:  # goal unknown (servo not read yet): never jump, wait for a reading
                continue
            delta = target - goal
            if abs(delta) > max_step:
                self.counters['step_limited'] += 1
                if by_velocity < self.max_step_rad:
                    self.counters['velocity_limited'] += 1
                delta = math.copysign(max_step, delta)
            if delta == 0.0:
                continue  # already there: the servo holds its goal, no need to resend it
            new = goal + delta
            self.goal[i] = new
            out[i] = new
        if max_step > 0:  # a tick at the same instant as the last one moves nothing and leaves its time standing
            self.last_goal_time = now
        return out or None


class VelocityEstimator:
    """Joint velocities from successive position readings, low-pass filtered.

    Servo positions are quantised to ~1.5 mrad, so a raw difference at 100 Hz jitters
    by ±0.15 rad/s at rest; an exponential filter (``smoothing`` = weight of the old
    estimate) keeps the estimate readable while following real motion within a few ticks.
    A joint with no reading this tick keeps no history: its next estimate restarts at 0.
    """

    def __init__(self, n: int, smoothing: float = 0.5) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError('smoothing must be in [0, 1)')
        self.smoothing = smoothing
        self._last: list[tuple[float, float] | None] = [None] * n
        self._velocity = [0.0] * n

    def update(self, positions: Sequence[float | None], t: float) -> list[float]:
        for i, p in enumerate(positions):
            prev = self._last[i]
            if p is None:
                self._last[i] = None
                self._velocity[i] = 0.0
                continue
            if prev is not None and t > prev[0]:
                raw = (p - prev[1]) / (t - prev[0])
                self._velocity[i] = self.smoothing * self._velocity[i] + (1.0 - self.smoothing) * raw
            self._last[i] = (t, p)
        return list(self._velocity)
