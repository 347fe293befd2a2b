"""The offset between the policy's clock and the robot's, measured as NTP does, without ROS.

On two computers the policy node compares stamps from the robot's clock (camera frames, joint
states) with its own (staleness, where a chunk starts, the RTC latency), and sends trajectories
stamped for the robot's clock. The node therefore probes the robot side's ``clock_responder``
(``bimanual_vla/bringup/clock_responder.py``) a few times a second: the probe leaves at ``t1``
(policy clock), arrives at ``t2`` and is answered at ``t3`` (robot clock), and the answer arrives at
``t4`` (policy clock). As in NTP (RFC 5905):

* offset ``theta = ((t2 - t1) + (t3 - t4)) / 2`` (robot minus policy), exact when both directions
  take as long, and wrong by at most half the round trip otherwise;
* round trip ``delta = (t4 - t1) - (t3 - t2)``.

``ClockOffset`` keeps the last few samples and takes the offset of the one with the shortest round
trip (NTP's clock filter: queueing delay only ever adds, so the fastest exchange is the most
symmetric). The correction it *applies* (``offset_s``) follows that estimate at a bounded slew rate
once it has one, as chrony slews a clock: a correction that changed at once would shift every
later chunk's times at once. Positions never depend on it: stamps only decide staleness and when
actions happen, and the gate and the drivers bound every step.

``check`` says whether motion may be enabled: the offset must be measured (on a remote rig) and
within ``max_offset_s``, itself held to ``MAX_CLOCK_OFFSET_S``. Hosts should run chrony (or
another NTP client): then the offset is well under a millisecond and this is only a check
(docs/remote_policy.md, Clocks).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from bimanual_vla.config import Bound

MAX_CLOCK_OFFSET_S = Bound(0.0, 0.5, 's')
"""Hard bound of ``max_clock_offset_s``: beyond half a second the staleness decisions (0.5 s by
default) would rest on the correction alone, and two hosts that far apart are not synchronised."""
DEFAULT_MAX_OFFSET_S = 0.05
SLEW_S_PER_S = 0.01
"""The applied correction moves at most 10 ms per second once it has a first estimate."""
SAMPLE_TIMEOUT_S = 1.0
"""A probe not answered within this is counted lost."""
TIME_JUMP_S = 0.05
"""The local clock going back further than this (a sim reset) drops the samples."""


@dataclass(frozen=True)
class ClockSample:
    """One exchange: t1, t4 on the policy's clock; t2, t3 on the robot's (seconds)."""

    t1: float
    t2: float
    t3: float
    t4: float

    @property
    def offset_s(self) -> float:
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2.0

    @property
    def round_trip_s(self) -> float:
        return (self.t4 - self.t1) - (self.t3 - self.t2)


class ClockOffset:
    """Probes out, answers in, the offset to apply and whether motion may be enabled; not thread-safe."""

    def __init__(
        self,
        *,
        max_offset_s: float = DEFAULT_MAX_OFFSET_S,
        required: bool = False,
        window: int = 16,
        slew_s_per_s: float = SLEW_S_PER_S,
    ) -> None:
        """``required``: the robot is on another computer (the rig's ``policy_host``): motion waits for
        a measured offset. Otherwise no answer means one clock (offset 0), and a measured one is still checked."""
        self.max_offset_s = MAX_CLOCK_OFFSET_S.check(float(max_offset_s))
        self.required = required
        self.slew_s_per_s = slew_s_per_s
        self.samples: deque[ClockSample] = deque(maxlen=window)
        self.round_trips: deque[float] = deque(maxlen=100)
        self._pending: dict[int, float] = {}  # probe id -> t1
        self._next_id = 0
        self._applied: float | None = None
        self._applied_at: float | None = None
        self._latest_local = -math.inf
        self.probes = 0
        self.answers = 0
        self.lost = 0
        self.foreign = 0  # answers to no probe of ours (another node's, a late one)

    # ------------------------------------------------------------- exchange

    def probe(self, t1: float) -> int:
        """A probe leaves now (``t1``, local clock): its id, to send with it."""
        self._note_local(t1)
        self._expire(t1)
        probe_id = self._next_id
        self._next_id += 1
        self._pending[probe_id] = t1
        self.probes += 1
        return probe_id

    def answer(self, probe_id: int, t2: float, t3: float, t4: float) -> ClockSample | None:
        """The responder's answer to ``probe_id`` (its receive and send stamps) arrived at ``t4``."""
        self._note_local(t4)
        t1 = self._pending.pop(probe_id, None)
        if t1 is None or not all(math.isfinite(t) for t in (t2, t3, t4)) or t4 < t1 or t3 < t2:
            self.foreign += 1
            return None
        sample = ClockSample(t1, t2, t3, t4)
        self.samples.append(sample)
        self.round_trips.append(sample.round_trip_s)
        self.answers += 1
        self._slew(t4)
        return sample

    def _expire(self, now: float) -> None:
        old = [i for i, t1 in self._pending.items() if now - t1 > SAMPLE_TIMEOUT_S]
        for i in old:
            del self._pending[i]
        self.lost += len(old)

    def _note_local(self, now: float) -> None:
        if now < self._latest_local - TIME_JUMP_S:
            # A sim reset: the old timeline's samples and probes mean nothing; the correction in force
            # stays (both clocks jumped) and slews from here.
            self.samples.clear()
            self._pending.clear()
            if self._applied is not None:
                self._applied_at = now
            self._latest_local = now
        else:
            self._latest_local = max(self._latest_local, now)

    # ------------------------------------------------------------- estimate

    @property
    def estimate_s(self) -> float | None:
        """The offset (robot minus policy) of the recent exchange with the shortest round trip (newest of equals)."""
        if not self.samples:
            return None
        return min(reversed(self.samples), key=lambda s: s.round_trip_s).offset_s

    def _slew(self, now: float) -> None:
        target = self.estimate_s
        if target is None:
            return
        if self._applied is None or self._applied_at is None:
            self._applied = target  # the first estimate is taken as it is
        else:
            room = self.slew_s_per_s * max(0.0, now - self._applied_at)
            self._applied += float(np.clip(target - self._applied, -room, room))
        self._applied_at = now

    @property
    def offset_s(self) -> float:
        """The correction in force: robot time = local time + this (0 until measured)."""
        return self._applied if self._applied is not None else 0.0

    @property
    def measured(self) -> bool:
        return self._applied is not None

    def to_local(self, robot_time: float) -> float:
        """A robot stamp on the policy's clock."""
        return robot_time - self.offset_s

    def to_robot(self, local_time: float) -> float:
        """A policy time on the robot's clock (a trajectory's start)."""
        return local_time + self.offset_s

    def one_way_delay_s(self, quantile: float = 0.9) -> float:
        """Half a high quantile of the recent round trips: how long a message to the robot takes (0 unmeasured)."""
        if not self.round_trips:
            return 0.0
        return max(0.0, float(np.quantile(np.asarray(self.round_trips), quantile)) / 2.0)

    # ---------------------------------------------------------------- gate

    def check(self) -> str | None:
        """None if motion may be enabled, else why not (one line)."""
        if not self.measured:
            if self.required:
                return 'clock offset to the robot not measured yet (no answer from its clock_responder)'
            return None
        if abs(self.offset_s) > self.max_offset_s:
            return (
                f'clock offset to the robot {self.offset_s * 1e3:+.1f} ms exceeds max_clock_offset_s '
                f'({self.max_offset_s * 1e3:g} ms): synchronise the hosts (chrony)'
            )
        return None

    def values(self) -> dict[str, object]:
        """For diagnostics (ms)."""
        rt = np.asarray(self.round_trips) if self.round_trips else None
        return {
            'clock_offset_ms': self.offset_s * 1e3 if self.measured else float('nan'),
            'clock_offset_estimate_ms': (self.estimate_s or 0.0) * 1e3 if self.samples else float('nan'),
            'clock_round_trip_ms_p50': float(np.median(rt)) * 1e3 if rt is not None else float('nan'),
            'clock_round_trip_ms_max': float(rt.max()) * 1e3 if rt is not None else float('nan'),
            'clock_probes': self.probes,
            'clock_probes_lost': self.lost,
            'clock_max_offset_ms': self.max_offset_s * 1e3,
            'clock_check': self.check() or 'ok',
        }
