"""What a bag says about its episodes beyond their start and end: discarded takes and human takeovers.

`bimanual-vla record-episodes` records every take, including the ones the operator re-records: a
re-recorded episode is not deleted but marked by a message on ``record/discard`` (std_msgs/String,
JSON ``{"label": "episode_003", "reason": "rerecord"}``), written after the episode's end marker.
The discard names the episode of that label that started last before the marker, so a label used
twice in one bag discards only the take it followed. Consumers (training, LeRobot export) leave
discarded episodes out (:func:`kept_episodes`).

Human takeovers (issue 28): the teleop node publishes, latched, on ``teleop/intervention`` the arms a
human has taken over from the policy (JSON ``{"arms": ["left"], "event": "start", "arm": "left"}``;
``"end"`` when an arm is handed back, ``"state"`` for the initial value). Recorded, these messages
are the takeover markers: :func:`intervention_segments` turns them into (arm, start, end) segments
on the bag's receive clock, and :func:`in_interventions` says which sample times fall inside one.

No ROS graph here: plain functions over a :class:`~bimanual_vla.bags.read.BagReader`, and encoders
for the message payloads so publishers and readers cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bimanual_vla import topics as T
from bimanual_vla.bags.read import BagDecodeError, BagReader, Episode
from bimanual_vla.intervention_msgs import END, START, STATE, intervention_payload, parse_intervention

__all__ = [
    'END', 'START', 'STATE', 'Segment', 'discard_payload', 'discarded_episodes', 'in_interventions',
    'intervention_payload', 'intervention_segments', 'kept_episodes', 'parse_intervention',
]  # fmt: skip


@dataclass(frozen=True)
class Segment:
    """An arm under human control from ``start_ns`` to ``end_ns`` (None: until the bag ends)."""

    arm: str
    start_ns: int
    end_ns: int | None


def discard_payload(label: str, reason: str = 'rerecord') -> str:
    """The ``record/discard`` message text for the episode ``label``."""
    return json.dumps({'label': label, 'reason': reason})


def _topic(bag: BagReader, name: str, namespace: str) -> str | None:
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    full = f'{ns}/{name}'
    return full if full in bag.topics else None


def _strings(bag: BagReader, topic: str | None) -> list[tuple[int, str]]:
    if topic is None:
        return []
    out = []
    for msg in bag.messages([topic]):
        try:
            out.append((msg.timestamp_ns, str(bag.decode(msg).data)))
        except BagDecodeError as exc:
            bag.problems.append(str(exc))
    return out


def discarded_episodes(bag: BagReader, namespace: str = '/') -> set[int]:
    """Indices (``Episode.index``) of the episodes of ``bag`` that a ``record/discard`` marker discards."""
    found: set[int] = set()
    for stamp, text in _strings(bag, _topic(bag, T.RECORD_DISCARD, namespace)):
        try:
            label = json.loads(text)['label'] if text.strip().startswith('{') else text.strip()
        except (ValueError, KeyError, TypeError):
            bag.problems.append(f'record/discard at t={stamp} ns is not {{"label": ...}}: {text!r}')
            continue
        takes = [e for e in bag.episodes if e.label == label and e.start_ns <= stamp]
        if takes:
            found.add(max(takes, key=lambda e: e.start_ns).index)
        else:
            bag.problems.append(f'record/discard at t={stamp} ns names no earlier episode {label!r}')
    return found


def kept_episodes(bag: BagReader, namespace: str = '/') -> tuple[list[Episode], list[Episode]]:
    """(episodes to use, episodes discarded) of ``bag``; a bag without markers is one episode."""
    episodes = bag.episodes or [Episode(0, bag.path.name, bag.start_ns, None)]
    gone = discarded_episodes(bag, namespace) if bag.episodes else set()
    return [e for e in episodes if e.index not in gone], [e for e in episodes if e.index in gone]


def intervention_segments(bag: BagReader, namespace: str = '/') -> list[Segment]:
    """Every takeover in ``bag``: per arm, from the message that added it to the one that removed it."""
    segments: list[Segment] = []
    open_at: dict[str, int] = {}
    for stamp, text in _strings(bag, _topic(bag, T.TELEOP_INTERVENTION, namespace)):
        try:
            arms = parse_intervention(text)
        except ValueError as exc:
            bag.problems.append(f'teleop/intervention at t={stamp} ns: {exc}')
            continue
        for arm in sorted(arms - set(open_at)):
            open_at[arm] = stamp
        for arm in sorted(set(open_at) - arms):
            segments.append(Segment(arm, open_at.pop(arm), stamp))
    segments += [Segment(arm, t, None) for arm, t in sorted(open_at.items())]
    return sorted(segments, key=lambda s: (s.start_ns, s.arm))


def source_switches(segments: Sequence[Segment]) -> np.ndarray:
    """Sorted receive times (ns) at which an arm's commands change publisher: every takeover's start and end."""
    times = [t for seg in segments for t in (seg.start_ns, seg.end_ns) if t is not None]
    return np.array(sorted(times), dtype=np.int64)


def in_interventions(times_ns: Sequence[int] | np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """bool per time: inside some takeover segment (start inclusive, end exclusive)."""
    t = np.asarray(times_ns, dtype=np.int64)
    inside = np.zeros(t.shape, dtype=bool)
    for seg in segments:
        end = np.iinfo(np.int64).max if seg.end_ns is None else seg.end_ns
        inside |= (t >= seg.start_ns) & (t < end)
    return inside
