"""Fault injection for soak tests: the fault schedule, broken-camera hook, goal-write checks, report sums.

No rclpy here, so every piece is unit-tested without a ROS graph (test/sim/test_fault_injection.py);
`bench/fault_soak_bench.py` drives them against the simulated rig on emulated servo buses.

* :func:`fault_sequence`: an endless, seeded round robin over the fault kinds (every kind once per
  round, in a shuffled order), each with its target (arm, servo, camera), duration and the pause
  before the next one.
* :class:`CameraFaults`: the sim rig's hook for broken cameras (`sim/node.py` calls
  :meth:`CameraFaults.apply` on every rendered frame).
* :func:`tap_goal_writes` and :class:`GoalChecker`: every goal-position write an emulated servo
  receives, checked against the rig's joint limits and the arm's goal velocity bound, and the time
  of the last goal change per arm (how long an arm took to hold after an e-stop).
* :func:`gaps_outside`, :func:`stats`, :func:`summarise_segments`: the report's arithmetic.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

FAULT_KINDS: tuple[str, ...] = (
    'servo_missing',  # one servo stops answering
    'late_replies',  # replies arrive one transaction late
    'corrupt_replies',  # replies with a flipped bit, and line noise
    'port_vanish',  # the serial port (pty and its link) disappears, then comes back
    'camera_gone',  # a camera publishes nothing
    'camera_frozen',  # a camera repeats one image under new stamps
    'camera_stale',  # a camera's images keep the stamp of the moment the fault began
    'policy_sigkill',  # the policy node's process is killed
    'policy_sigstop',  # the policy node's process is stopped, then continued
    'nan_commands',  # a rogue publisher sends NaN/Inf joint commands
    'estop_storm',  # e-stop toggled rapidly, ending released
    'estop_qos',  # e-stop asserted and released from a publisher of each QoS combination
    'episode_reset',  # sim/reset_seed: the sim resets and power-cycles the servos
)

# Seconds a fault lasts (drawn uniformly); (0, 0): an instantaneous fault.
# A memory growth fitted over less than this says little (start-up, caches warming): not judged.
MIN_FIT_MINUTES = 10.0

DURATION_S: dict[str, tuple[float, float]] = {
    'servo_missing': (2.0, 5.0),
    'late_replies': (3.0, 8.0),
    'corrupt_replies': (3.0, 8.0),
    'port_vanish': (2.0, 5.0),
    'camera_gone': (2.0, 5.0),
    'camera_frozen': (2.0, 5.0),
    'camera_stale': (2.0, 5.0),
    'policy_sigkill': (0.0, 0.0),
    'policy_sigstop': (2.0, 5.0),
    'nan_commands': (2.0, 4.0),
    'estop_storm': (0.5, 1.5),
    'estop_qos': (1.0, 1.0),  # each QoS's e-stop is held this long
    'episode_reset': (0.0, 0.0),
}


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: what, on which target, for how long, and the pause after it."""

    kind: str
    arm: str
    servo_id: int
    camera: str
    duration_s: float
    gap_s: float  # from this fault's recovery to the next fault
    seed: int  # for the fault's own random choices (e.g. the e-stop storm's toggles)


def fault_sequence(
    seed: int,
    kinds: Sequence[str],
    servo_ids: dict[str, Sequence[int]],
    cameras: Sequence[str],
    every_s: tuple[float, float] = (30.0, 120.0),
) -> Iterator[Fault]:
    """Faults forever: each round every kind once, in a seeded order, targets and durations seeded."""
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise ValueError(f'unknown or no fault kinds {unknown}; choose from {list(FAULT_KINDS)}')
    rng = random.Random(seed)
    arms = sorted(servo_ids)
    while True:
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            arm = rng.choice(arms)
            low, high = DURATION_S[kind]
            yield Fault(
                kind=kind,
                arm=arm,
                servo_id=rng.choice(list(servo_ids[arm])),
                camera=rng.choice(list(cameras)),
                duration_s=round(rng.uniform(low, high), 2),
                gap_s=round(rng.uniform(*every_s), 2),
                seed=rng.randrange(2**31),
            )


# ----------------------------------------------------------------------------- cameras


class CameraFaults:
    """What a broken camera would publish instead of the rendered frame: the sim rig's fault hook.

    ``set(camera, mode)``: ``gone`` publishes nothing (unplugged), ``frozen`` repeats the image of the
    moment the fault began under new stamps (a stuck capture pipeline: nothing downstream can tell
    from the stamps), ``stale`` publishes new images under the stamp of that moment (a camera clock
    that stopped, or a driver re-sending an old buffer). ``clear(camera)`` restores it. Set and
    clear from any thread; :meth:`apply` runs on the render thread, once per camera and frame.
    """

    MODES = ('gone', 'frozen', 'stale')

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modes: dict[str, str] = {}
        self._first: dict[str, tuple[Any, Any]] = {}  # camera -> (data, stamp) when its fault began

    def set(self, camera: str, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f'camera fault must be one of {self.MODES}, got {mode!r}')
        with self._lock:
            self._modes[camera] = mode
            self._first.pop(camera, None)

    def clear(self, camera: str | None = None) -> None:
        """Restore `camera` (every camera if None)."""
        with self._lock:
            for name in [camera] if camera is not None else list(self._modes):
                self._modes.pop(name, None)
                self._first.pop(name, None)

    def active(self) -> dict[str, str]:
        with self._lock:
            return dict(self._modes)

    def apply(self, camera: str, image: Any) -> Any | None:
        """The image to publish for `camera` (a sensor_msgs/Image, changed in place), or None for nothing."""
        with self._lock:
            mode = self._modes.get(camera)
            if not mode:
                return image
            if mode == 'gone':
                return None
            data, stamp = self._first.setdefault(camera, (image.data, image.header.stamp))
        if mode == 'frozen':
            image.data = data
        else:
            image.header.stamp = stamp
        return image


# ------------------------------------------------------------------------- goal writes


@dataclass(frozen=True)
class GoalWrite:
    """One goal-position write as an emulated servo received it."""

    t: float  # time.monotonic() at receipt
    arm: str
    servo_id: int
    ticks: int  # the goal as written on the bus, before the servo's own limit handling
    present: int  # the servo's present position (ticks) at that moment


def tap_goal_writes(emulator: Any, arm: str, sink: Callable[[GoalWrite], None]) -> None:
    """Call `sink` with every goal-position write `emulator`'s servos receive (WRITE, SYNC_WRITE, any source).

    Wraps each emulated servo's ``write_bytes`` (where every register write lands), so the goal is
    seen as the bus carried it, before the servo clamps or refuses it. Runs on the emulator's thread
    with its lock held: `sink` must only queue. The servos outlive a stop/start of the emulator, so
    one tap lasts the emulator's life.
    """
    table = emulator.table
    reg = table.goal_position
    for servo_id in emulator.ids:
        servo = emulator.servo(servo_id)
        original = servo.write_bytes

        def write_bytes(
            address: int, data: bytes, servo: Any = servo, sid: int = servo_id, write: Any = original
        ) -> int:
            offset = reg.address - address
            if offset >= 0 and offset + reg.length <= len(data):
                ticks = table.decode(reg, bytes(data[offset : offset + reg.length]))
                sink(GoalWrite(time.monotonic(), arm, sid, ticks, servo.present_position))
            return write(address, data)

        servo.write_bytes = write_bytes


class GoalChecker:
    """Checks every goal write against the joint limits and a velocity bound; tracks goal changes per arm.

    Out of limits: a goal outside the joint's ``(low, high)`` ticks (the rig's limits rounded outward
    to whole ticks, as the calibration's range is). Too fast: a goal that moved from the joint's
    previous goal by more than ``v * (dt + jitter_s) + margin_ticks`` ticks' worth, where dt is the
    time between the two writes as received (``jitter_s`` absorbs their delivery jitter) and
    ``margin_ticks`` the rounding to ticks; a take-over write (a change that would be too fast, to
    where the servo is within that slack, as a driver writes on connecting or when a servo returns)
    is no motion and never counts. Every other change counts toward the largest step.
    """

    def __init__(
        self,
        bounds: dict[tuple[str, int], tuple[int, int]],
        max_velocity_rad_s: dict[str, float],
        rad_per_tick: float,
        *,
        jitter_s: float = 0.02,
        margin_ticks: int = 2,
        keep_examples: int = 5,
        t0: float = 0.0,
    ) -> None:
        self.bounds = bounds
        self.t0 = t0  # examples say when, in seconds after t0
        self.max_velocity = max_velocity_rad_s
        self.rad_per_tick = rad_per_tick
        self.jitter_s = jitter_s
        self.margin_ticks = margin_ticks
        self.keep = keep_examples
        self.writes = 0
        self.out_of_limits = 0
        self.too_fast = 0
        self.max_step_rad = 0.0  # largest goal change between successive writes (take-overs excluded)
        self.examples: dict[str, list[dict[str, Any]]] = {'out_of_limits': [], 'too_fast': [], 'largest_step': []}
        self.last_change: dict[str, float] = {}
        self._previous: dict[tuple[str, int], tuple[float, int]] = {}

    def add(self, write: GoalWrite, note: str = '') -> None:
        """Check one write; `note` (e.g. the fault active then) goes into the examples kept."""
        key = (write.arm, write.servo_id)
        self.writes += 1
        low, high = self.bounds.get(key, (-math.inf, math.inf))
        if not low <= write.ticks <= high:
            self.out_of_limits += 1
            self._example('out_of_limits', write, note, limits_ticks=[low, high])
        previous = self._previous.get(key)
        self._previous[key] = (write.t, write.ticks)
        if previous is None or previous[1] == write.ticks:
            return
        self.last_change[write.arm] = max(self.last_change.get(write.arm, -math.inf), write.t)
        v = self.max_velocity.get(write.arm, math.inf)
        slack = v * self.jitter_s + self.margin_ticks * self.rad_per_tick
        dt = write.t - previous[0]
        step = abs(write.ticks - previous[1]) * self.rad_per_tick
        too_fast = step > v * dt + slack
        if too_fast and abs(write.ticks - write.present) * self.rad_per_tick <= slack:
            # A take-over: the goal put where the servo already is, far from the previous goal, is no motion.
            # Only a change that would count as too fast is exempted, so the largest step covers every other
            # change (exempting any goal near the servo hid every step of an arm that tracks closely).
            return
        if step > self.max_step_rad:
            self.max_step_rad = step
            self.examples['largest_step'] = []
            self._example('largest_step', write, note, step_rad=round(step, 4), dt_s=round(dt, 4))
        if too_fast:
            self.too_fast += 1
            self._example('too_fast', write, note, step_rad=round(step, 4), dt_s=round(dt, 4))

    def _example(self, what: str, write: GoalWrite, note: str, **extra: Any) -> None:
        if len(self.examples[what]) < self.keep:
            self.examples[what].append(
                {'at_s': round(write.t - self.t0, 2), 'arm': write.arm, 'servo': write.servo_id, 'ticks': write.ticks}
                | {'present': write.present, 'fault': note or None, **extra}
            )

    def hold_latency(self, arm: str, since: float) -> float:
        """Seconds from `since` to the arm's last goal change after it (0: none changed after it)."""
        return max(0.0, self.last_change.get(arm, -math.inf) - since)

    def moving(self, within_s: float, now: float | None = None) -> bool:
        """Some arm's goal changed in the last `within_s` seconds."""
        now = time.monotonic() if now is None else now
        return any(now - t <= within_s for t in self.last_change.values())

    def report(self) -> dict[str, Any]:
        return {
            'writes': self.writes,
            'out_of_limits': self.out_of_limits,
            'too_fast': self.too_fast,
            'max_step_rad': round(self.max_step_rad, 4),
            'velocity_bound_rad_s': dict(self.max_velocity),
            'jitter_s': self.jitter_s,
            'margin_ticks': self.margin_ticks,
            'examples': self.examples,
        }


# ------------------------------------------------------------------------------ report


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, median, 99th percentile and maximum (nearest-rank), rounded to 0.1 ms."""
    ordered = sorted(values)
    if not ordered:
        return {'n': 0, 'p50': None, 'p99': None, 'max': None}

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 4)

    return {'n': len(ordered), 'p50': rank(0.5), 'p99': rank(0.99), 'max': round(ordered[-1], 4)}


def gaps_outside(
    times_s: Sequence[float], max_gap_s: float, windows: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Gaps between successive `times_s` longer than `max_gap_s` that overlap none of `windows`."""
    ordered = sorted(times_s)
    return [
        (a, b)
        for a, b in zip(ordered, ordered[1:], strict=False)
        if b - a > max_gap_s and not any(a < end and b > start for start, end in windows)
    ]


def summarise_segments(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One soak from several segment reports (JSON lines of `fault_soak_bench.py --report`)."""
    kinds: dict[str, dict[str, Any]] = {}
    for report in reports:
        for kind, entry in report.get('faults', {}).items():
            total = kinds.setdefault(kind, {'injected': 0, 'recovered': 0, 'recovery_s': []})
            total['injected'] += entry['injected']
            total['recovered'] += entry['recovered']
            total['recovery_s'] += entry['recovery_s']
    holds = [h for r in reports for h in r.get('estop', {}).get('hold_s', [])]
    qos: dict[str, dict[str, int]] = {}
    for report in reports:
        for name, entry in report.get('estop', {}).get('by_qos', {}).items():
            total = qos.setdefault(name, {'published': 0, 'reached_drivers': 0})
            total['published'] += entry['published']
            total['reached_drivers'] += entry['reached_drivers']
    growth: dict[str, float] = {}
    steady: dict[str, float] = {}  # second-half fits (segments that have them): a one-time step is not growth
    for report in reports:
        for name, proc in report.get('processes', {}).items():
            if proc.get('minutes', 0.0) < MIN_FIT_MINUTES:
                continue
            for key, worst in (('growth_mb_per_hour', growth), ('steady_growth_mb_per_hour', steady)):
                rate = proc.get('rss_mb', {}).get(key)
                if isinstance(rate, int | float) and math.isfinite(rate):
                    worst[name] = max(worst.get(name, -math.inf), rate)
    goals = [r.get('goal_writes', {}) for r in reports]
    bags = [r['recording'] for r in reports if r.get('recording')]
    return {
        'segments': len(reports),
        'robot_hours': round(sum(r.get('minutes', 0.0) for r in reports) / 60.0, 3),
        'faults_injected': sum(t['injected'] for t in kinds.values()),
        'faults_unrecovered': sum(t['injected'] - t['recovered'] for t in kinds.values()),
        'faults': {
            kind: {
                'injected': t['injected'],
                'recovered': t['recovered'],
                'recovery_s': {k: v for k, v in stats(t['recovery_s']).items() if k != 'n'},
            }
            for kind, t in sorted(kinds.items())
        },
        'goal_writes': sum(g.get('writes', 0) for g in goals),
        'goals_out_of_limits': sum(g.get('out_of_limits', 0) for g in goals),
        'goals_too_fast': sum(g.get('too_fast', 0) for g in goals),
        'estop_hold_s': stats(holds),
        'estop_by_qos': qos,
        'worst_rss_growth_mb_per_hour': {k: round(v, 1) for k, v in sorted(growth.items())},  # fits >= 10 min
        'worst_steady_rss_growth_mb_per_hour': {k: round(v, 1) for k, v in sorted(steady.items())},
        'bag_gaps_outside_faults': sum(len(b.get('gaps_outside_faults', [])) for b in bags),
        'bag_dropped_messages': sum(int(b.get('dropped') or 0) for b in bags),
        'fatal': [f'segment {i}: {r["fatal"]}' for i, r in enumerate(reports) if r.get('fatal')],
        'problems': [f'segment {i}: {p}' for i, r in enumerate(reports) for p in r.get('problems', [])],
    }
