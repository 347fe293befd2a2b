"""Observations as `train` pairs them, even when some inputs arrive late.

A training sample at time t pairs the latest inputs *stamped* at or before t with the commands
from t (`bimanual_vla.learning.dataset`). Online, the node only has what has *arrived*. A camera frame is
stamped when the image was taken but arrives later: rendering three cameras in the simulator,
or a USB camera's exposure and transfer on a rig, takes tens of milliseconds. The latest frame
in hand is therefore older than the one training paired with "now". The
joint states, meanwhile, are only a few milliseconds old. The model has never seen such a mixture.
Its chunk, anchored at "now", then plans from a scene that is already gone, and every chunk starts
a little behind. In closed loop those lags add up: the policy moves more slowly than its
demonstrations.

`chunk_start: synchronized` (docs/policy_node.md, Timing) observes at `now - D` instead. D is how
late the slowest camera's frames arrive (a high percentile of arrival clock minus header stamp,
over the last few seconds). By then every input stamped at or before that time has arrived. The
node takes, for each input, the latest one stamped at or before it, from the short histories kept
here. This is exactly a training sample's pairing. The chunk starts at that time, and the
real-time-chunking guide freezes the steps already executed before it arrives.

It is an experiment, not the default. In eval-sim it kept the demonstrations' pace better, but it
succeeded less often (80 against 91 of 100 episodes): the policy decides on an older scene.
The default policy's `chunk_start: arrival_compensated` uses the same measurements differently: it
keeps the latest inputs and starts the chunk earlier by the cameras' median arrival delays (averaged),
which is when training would have paired those frames with the chunk.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

import numpy as np

T = TypeVar('T')


class ArrivalDelay:
    """How late one input's messages arrive: a percentile of (arrival clock - header stamp) over a window.

    Negative delays (a stamp ahead of the receiver's clock, e.g. /clock itself arriving a moment
    later) count as 0. Non-finite ones are ignored.
    """

    def __init__(self, window: int = 45, percentile: float = 90.0) -> None:
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f'percentile must be in [0, 100], got {percentile}')
        self.percentile = float(percentile)
        self._delays: deque[float] = deque(maxlen=window)

    def add(self, arrival_s: float, stamp_s: float) -> None:
        delay = arrival_s - stamp_s
        if math.isfinite(delay):
            self._delays.append(max(0.0, delay))

    def __len__(self) -> int:
        return len(self._delays)

    def percentile_s(self, q: float) -> float | None:
        return float(np.percentile(np.asarray(self._delays), q)) if self._delays else None

    def estimate_s(self) -> float | None:
        return self.percentile_s(self.percentile)

    def median_s(self) -> float | None:
        return self.percentile_s(50.0)


class StampedHistory(Generic[T]):
    """The last few stamped items of one input, oldest first; `at(t)` is the latest stamped at or before t."""

    def __init__(self, maxlen: int) -> None:
        self._items: deque[tuple[float, T]] = deque(maxlen=maxlen)

    def add(self, stamp_s: float, item: T) -> None:
        self._items.append((float(stamp_s), item))

    def at(self, t: float) -> tuple[float, T] | None:
        # items usually arrive in stamp order, but DDS does not promise it: pick the latest stamp <= t
        best: tuple[float, T] | None = None
        for stamp, item in self._items:
            if stamp <= t and (best is None or stamp >= best[0]):
                best = (stamp, item)
        return best

    def newest_first(self) -> Iterator[tuple[float, T]]:
        """Items in reverse arrival order (for readers that stop early)."""
        return reversed(self._items)

    def drop_after(self, t: float) -> None:
        """Forget items stamped after ``t`` (another timeline: the sim was reset, a bag looped)."""
        kept = [(s, i) for s, i in self._items if s <= t]
        self._items.clear()
        self._items.extend(kept)

    def __len__(self) -> int:
        return len(self._items)


class JointHistory:
    """Joint positions as they arrived, message by message, to read back every joint's latest value at or before t.

    A rig publishes its arms' joint states as separate messages, so one message updates only some
    columns. Each entry keeps the columns it updated and their values.
    """

    def __init__(self, n_joints: int, maxlen: int = 400) -> None:
        self.n_joints = n_joints
        self._entries: StampedHistory[tuple[np.ndarray, np.ndarray]] = StampedHistory(maxlen)

    def add(self, stamp_s: float, cols: np.ndarray, positions: np.ndarray) -> None:
        self._entries.add(stamp_s, (np.asarray(cols, dtype=np.int64), np.asarray(positions, dtype=np.float64)))

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(positions, stamps) of every joint's latest value stamped at or before ``t``: NaN / -inf where none."""
        pos = np.full(self.n_joints, np.nan)
        stamps = np.full(self.n_joints, -np.inf)
        # newest first, stopping once every joint has a value: a few entries, not the whole window
        for stamp, (cols, values) in self._entries.newest_first():
            if stamp > t:
                continue
            newer = stamp > stamps[cols]
            pos[cols[newer]] = values[newer]
            stamps[cols[newer]] = stamp
            if not np.isinf(stamps).any():
                break
        return pos, stamps

    def drop_after(self, t: float) -> None:
        self._entries.drop_after(t)
