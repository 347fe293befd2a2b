"""Scripted motion for emulated servos: a hand that moves a leader arm along recorded angles.

A motion file holds joint angles over time (radians), one column per servo: a CSV with a header
``t,<col>,<col>...`` (``#`` lines are comments) or JSON ``{"t": [...], "joints": {"<col>": [...]}}``.
A column is a servo id (``1``) or a joint name (``shoulder_pan``); names need a calibration file to
say which servo they are and which tick is which angle. An id column uses the identity mapping the
drivers fall back to without calibration (0 rad at tick 2048, 4096 ticks a turn).

:class:`MotionPlayer` puts the emulator in external-motion mode (servos do not move toward their
goals: the hand holds them, as a person holds a leader arm whose torque is off, or pushes a Koch
leader's spring-loaded trigger) and writes each servo's present position, interpolated linearly
between samples, from a thread at ``rate_hz``. After the last sample it holds the last pose, or
starts over with ``loop``. Used by ``bimanual-vla emulate-bus --motion FILE``, the teleop tests and
``bench/teleop_bench.py``.
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bimanual_vla.drivers.servo.calibration import ArmCalibration
from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

IDENTITY_ZERO_TICKS = 2048
IDENTITY_TICKS_PER_TURN = 4096
MAX_MOTION_BYTES = 64 * 1024 * 1024


class MotionError(ValueError):
    """A motion file is missing, unreadable or malformed; the message names the file and where."""


@dataclass(frozen=True)
class Motion:
    """Angles (rad) over time: ``values[i, c]`` is column ``columns[c]`` at ``times[i]`` seconds."""

    times: np.ndarray
    columns: tuple[str, ...]
    values: np.ndarray

    @property
    def duration_s(self) -> float:
        return float(self.times[-1] - self.times[0])

    def at(self, t: float, *, loop: bool = False) -> np.ndarray:
        """Every column's angle at ``t`` seconds from the start (held past the end, or looped)."""
        t0 = float(self.times[0])
        if loop and self.duration_s > 0:
            t = math.fmod(max(t, 0.0), self.duration_s)
        return np.array([np.interp(t0 + t, self.times, self.values[:, c]) for c in range(len(self.columns))])


def _check(path: Path, times: list[float], columns: Sequence[str], rows: list[list[float]]) -> Motion:
    if not columns:
        raise MotionError(f'{path}: no joint columns (expected t and at least one servo id or joint name)')
    if len(set(columns)) != len(columns):
        raise MotionError(f'{path}: a column appears twice: {list(columns)}')
    if len(times) < 1:
        raise MotionError(f'{path}: no samples')
    arr_t = np.asarray(times, dtype=float)
    arr_v = np.asarray(rows, dtype=float).reshape(len(times), len(columns))
    if not (np.all(np.isfinite(arr_t)) and np.all(np.isfinite(arr_v))):
        raise MotionError(f'{path}: every time and angle must be a finite number')
    if np.any(np.diff(arr_t) <= 0):
        i = int(np.argmax(np.diff(arr_t) <= 0)) + 1
        raise MotionError(f'{path}: sample {i}: times must increase (t={arr_t[i]:g} after {arr_t[i - 1]:g})')
    return Motion(arr_t, tuple(columns), arr_v)


def load_motion(path: str | Path) -> Motion:
    """Read a CSV or JSON motion file; MotionError naming the file (and line or field) on any problem."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MotionError(f'{p}: motion file not found')
    if p.stat().st_size > MAX_MOTION_BYTES:
        raise MotionError(f'{p}: larger than {MAX_MOTION_BYTES // 2**20} MiB, not a motion file')
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MotionError(f'{p}: cannot read: {exc}') from None
    if p.suffix.lower() == '.json':
        return _from_json(p, text)
    return _from_csv(p, text)


def _from_csv(path: Path, text: str) -> Motion:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith('#')]
    if not lines:
        raise MotionError(f'{path}: empty (expected a header t,<servo id or joint>,...)')
    header = [c.strip() for c in next(csv.reader([lines[0][1]]))]
    if header[0] != 't':
        raise MotionError(f'{path}: line {lines[0][0]}: the first column must be t (seconds), got {header[0]!r}')
    times, rows = [], []
    for n, line in lines[1:]:
        cells = next(csv.reader([line]))
        if len(cells) != len(header):
            raise MotionError(f'{path}: line {n}: {len(cells)} values, the header has {len(header)}')
        try:
            values = [float(c) for c in cells]
        except ValueError:
            raise MotionError(f'{path}: line {n}: not a number in {line.strip()!r}') from None
        times.append(values[0])
        rows.append(values[1:])
    return _check(path, times, header[1:], rows)


def _from_json(path: Path, text: str) -> Motion:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MotionError(f'{path}: not valid JSON: {exc}') from None
    if not isinstance(data, dict) or set(data) != {'t', 'joints'} or not isinstance(data['joints'], dict):
        raise MotionError(f'{path}: expected {{"t": [...], "joints": {{"<servo id or joint>": [...]}}}}')
    times = data['t']
    columns = list(data['joints'])
    for name in ['t', *columns]:
        series = times if name == 't' else data['joints'][name]
        ok = isinstance(series, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in series)
        if not ok or len(series) != len(times):
            raise MotionError(f'{path}: {name}: expected a list of {len(times)} numbers')
    rows = [[data['joints'][c][i] for c in columns] for i in range(len(times))]
    return _check(path, times, columns, rows)


def save_motion_csv(path: str | Path, times: Sequence[float], columns: Sequence[str], values: np.ndarray) -> Path:
    """Write a motion as CSV (what :func:`load_motion` reads)."""
    p = Path(path)
    with p.open('w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['t', *columns])
        for t, row in zip(times, np.asarray(values, dtype=float), strict=True):
            writer.writerow([repr(float(t)), *(repr(float(v)) for v in row)])
    return p


def identity_ticks(radians: float) -> int:
    """The drivers' uncalibrated mapping: 0 rad at tick 2048, 4096 ticks a turn."""
    return round(IDENTITY_ZERO_TICKS + radians * IDENTITY_TICKS_PER_TURN / (2 * math.pi))


class MotionPlayer:
    """Moves an emulator's servos along a :class:`Motion`; ``start()`` / ``stop()``.

    ``calibration`` maps joint-name columns (and id columns of joints it knows) to ticks; without
    it every column must be a servo id and the identity mapping applies.
    """

    def __init__(
        self,
        emulator: ServoBusEmulator,
        motion: Motion,
        *,
        calibration: ArmCalibration | None = None,
        loop: bool = False,
        rate_hz: float = 500.0,
        where: str = 'motion',
    ) -> None:
        if rate_hz <= 0:
            raise ValueError('rate_hz must be > 0')
        self.emulator = emulator
        self.motion = motion
        self.loop = loop
        self.period_s = 1.0 / rate_hz
        self._calibration = calibration
        self._targets = [self._resolve(column, calibration, where) for column in motion.columns]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.updates = 0

    def _resolve(self, column: str, calibration: ArmCalibration | None, where: str) -> tuple[int, str | None]:
        """(servo id, calibrated joint or None for the identity mapping) of a column."""
        by_id = {j.id: name for name, j in calibration.joints.items()} if calibration is not None else {}
        if column.isdigit():
            sid = int(column)
            joint = by_id.get(sid)
        elif calibration is not None and column in calibration.joints:
            sid, joint = calibration.joints[column].id, column
        else:
            hint = f'calibration joints {sorted(calibration.joints)}' if calibration else 'no calibration given'
            raise MotionError(f'{where}: column {column!r} is neither a servo id nor a joint name ({hint})')
        if sid not in self.emulator.ids:
            raise MotionError(f'{where}: column {column!r}: servo {sid} is not on this bus {self.emulator.ids}')
        return sid, joint

    def ticks_at(self, t: float) -> dict[int, int]:
        """Present-position ticks of every scripted servo ``t`` seconds into the motion."""
        out = {}
        for (sid, joint), rad in zip(self._targets, self.motion.at(t, loop=self.loop), strict=True):
            out[sid] = self._calibration_ticks(joint, float(rad)) if joint else identity_ticks(float(rad))
        return out

    def _calibration_ticks(self, joint: str, rad: float) -> int:
        assert self._calibration is not None
        return self._calibration.to_ticks(joint, rad)

    def start(self) -> None:
        """Hold the servos (external motion), put them at the first pose, then play from now."""
        if self._thread is not None:
            return
        self.emulator.external_motion = True
        self._apply(self.ticks_at(0.0))
        self._stop.clear()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name='motion-player', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._t0

    @property
    def finished(self) -> bool:
        return not self.loop and self.elapsed_s >= self.motion.duration_s

    def _apply(self, ticks: dict[int, int]) -> None:
        for sid, value in ticks.items():
            self.emulator.set_present_position(sid, value)
        self.updates += 1

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self._apply(self.ticks_at(time.monotonic() - self._t0))
            next_t += self.period_s
            delay = next_t - time.monotonic()
            if delay <= 0:
                next_t = time.monotonic()
            else:
                self._stop.wait(delay)
