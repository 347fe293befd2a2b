"""Which clock a bag's timing is read on: the recorder's receive times or the messages' header stamps.

A recording of the simulator run faster than real time (``bimanual-vla collect``, ``real_time_factor``
0) stamps its messages in sim time while the recorder stamps them on arrival, in wall time: an
8.98 s episode arrives in about 2 s. Read on receive times it is squeezed (and every state is
placed at the wrong time); read on header stamps it has its true timing. A live rig stamps on the
same wall clock the recorder uses, where receive times are the robust choice (one clock for every
topic, stamped or not).

Every bag consumer (``BagDataset``, ``export-lerobot``, ``eval``, ``train``, ``replay``) resolves
the time base here, unless the user names one:

1. the bag's metadata.yaml ``custom_data`` key ``bimanual_vla.time_base`` (``header`` or
   ``receive``), which ``collect`` writes for its simulated recordings (:func:`mark_time_base`)
   and ``record --rig`` writes for a simulated rig;
2. else inferred from the first joint states: header stamps more than :data:`SEPARATE_CLOCK_S`
   away from their receive times are on a clock of their own (sim time, or a replayed
   recording's), so the stamps carry the timing -> ``header``, provided they form a usable
   timeline (mostly non-decreasing, advancing in steps of a plausible control period,
   :data:`STEP_RANGE_S`: unset stamps, or a counter in the seconds field, do not); stamps near
   their receive times, or no usable timeline -> ``receive``;
3. else (no joint states) ``receive``.

:func:`resolve_time_base` returns the choice and one line saying which of these decided it.
"""

from __future__ import annotations

import statistics
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bimanual_vla.bags.read import BagReader

TIME_BASE_KEY = 'bimanual_vla.time_base'
"""metadata.yaml custom_data key: the clock the bag's timing is on ('header' or 'receive')."""
TIME_BASES = ('receive', 'header')
AUTO = 'auto'
SEPARATE_CLOCK_S = 60.0
"""Header stamps further than this from their receive times are on another clock (sim time)."""
STEP_RANGE_S = (0.0005, 0.5)
"""The stamps of a usable timeline advance by a median step in this range (a 2 Hz .. 2 kHz topic)."""
_MAX_BACKWARD = 0.1  # fraction of steps that may go back (sim resets) in a usable timeline
_INFER_MESSAGES = 200  # joint_states messages looked at to infer the clock
_JOINT_STATE_TYPE = 'sensor_msgs/msg/JointState'


@dataclass(frozen=True)
class TimeBase:
    """A resolved time base and why: ``source`` is 'user', 'metadata', 'inferred' or 'default'."""

    base: str
    source: str
    reason: str

    @property
    def header(self) -> bool:
        return self.base == 'header'

    def line(self, bag: str | Path) -> str:
        """One line for the user: which clock the bag is read on and what decided it."""
        return f'{bag}: time base {self.base} ({self.reason})'


def header_stamp_ns(data: bytes) -> int:
    """header.stamp of a CDR message that starts with std_msgs/Header, without deserialising it."""
    if len(data) < 12:
        raise ValueError('message too short for a header')
    fmt = '<iI' if data[1] == 1 else '>iI'
    sec, nsec = struct.unpack_from(fmt, data, 4)
    return sec * 1_000_000_000 + nsec


def check_time_base(value: str) -> str:
    """`value` if it is 'auto', 'receive' or 'header', else ValueError naming the choices."""
    if value not in (AUTO, *TIME_BASES):
        raise ValueError(f'time_base must be one of {(AUTO, *TIME_BASES)}, got {value!r}')
    return value


def resolve_time_base(reader: BagReader, requested: str = AUTO) -> TimeBase:
    """The time base to read `reader` on: `requested` unless it is 'auto' (see the module docstring)."""
    check_time_base(requested)
    if requested != AUTO:
        return TimeBase(requested, 'user', 'as asked')
    marked = reader.custom_data.get(TIME_BASE_KEY, '').strip()
    if marked in TIME_BASES:
        return TimeBase(marked, 'metadata', f'from the bag metadata {TIME_BASE_KEY}')
    return infer_time_base(reader)


def infer_time_base(reader: BagReader) -> TimeBase:
    """The time base of a bag without the metadata key, from its joint states' stamps (module docstring)."""
    topics = [t for t, info in reader.topics.items() if info.type == _JOINT_STATE_TYPE and info.count]
    topics.sort(key=lambda t: (not t.endswith('/joint_states'), t))
    recv: list[int] = []
    stamps: list[int] = []
    if topics:
        for msg in reader.messages(topics[:1]):
            try:
                stamps.append(header_stamp_ns(msg.data))
            except (ValueError, struct.error):
                continue
            recv.append(msg.timestamp_ns)
            if len(stamps) >= _INFER_MESSAGES:
                break
    if not stamps:
        return TimeBase('receive', 'default', 'no metadata and no joint states: receive times')
    offset = statistics.median((r - s) * 1e-9 for r, s in zip(recv, stamps, strict=True))
    if abs(offset) <= SEPARATE_CLOCK_S:
        return TimeBase('receive', 'inferred', 'no metadata; joint state stamps follow the receive clock: '
                        'receive times')  # fmt: skip
    steps = [(b - a) * 1e-9 for a, b in zip(stamps, stamps[1:], strict=False)]
    forward = [d for d in steps if d > 0]
    step = statistics.median(forward) if forward else 0.0
    backward = sum(d < 0 for d in steps) / max(1, len(steps))
    if backward > _MAX_BACKWARD or not STEP_RANGE_S[0] <= step <= STEP_RANGE_S[1]:
        return TimeBase('receive', 'inferred', f'no metadata; joint state stamps are {offset:.0f} s from their '
                        f'receive times but no usable timeline (median step {step:g} s): receive times')  # fmt: skip
    return TimeBase('header', 'inferred', f'no metadata; joint state stamps are {offset:.0f} s from their '
                    'receive times, a clock of their own (sim time): header stamps')  # fmt: skip


def mark_time_base(bag: str | Path, base: str) -> None:
    """Write `base` into the closed bag's metadata.yaml custom_data (atomically), for every consumer to read."""
    from ruamel.yaml import YAML

    if base not in TIME_BASES:
        raise ValueError(f'time base must be one of {TIME_BASES}, got {base!r}')
    path = Path(bag) / 'metadata.yaml'
    yaml = YAML(typ='safe')
    yaml.default_flow_style = False
    meta = yaml.load(path.read_text(encoding='utf-8'))
    info = meta['rosbag2_bagfile_information']
    info['custom_data'] = {**(info.get('custom_data') or {}), TIME_BASE_KEY: base}
    tmp = path.with_name('metadata.yaml.tmp')
    with tmp.open('w', encoding='utf-8') as f:
        yaml.dump(meta, f)
    tmp.replace(path)
