"""Coaching in eval-sim: a schedule of subtasks put on ``policy/subtask``, and whether the arms follow them.

A coach (``eval-sim --coach "t=2.0:release the cube from the right gripper"``) overrides the subtask
the policy writes; the policy node then conditions its action chunks on the coached text instead of
its own. Whether the *arms* follow is a question about motion, not text (the text follows by
construction), so it is measured against the scripted expert's own motion for that subtask on the
same seed:

* the **motion of a subtask** is the expert's joint displacement over its first run of steps with
  that label (all arms' joints, grippers weighted as in the aligned agreement, see eval_report);
* the arms **follow** a subtask coached at ``t_c`` from the first tick ``t`` at which their
  displacement since ``t_c`` has gone at least ``progress`` (30 %) of that motion's length along it
  and points within ``max_angle_deg`` (60°) of it; the **response time** is ``t - t_c``.

The same measure taken for the subtask the model itself was writing at ``t_c`` is the reference: a
model that ignores the coach follows its own text and not the coached one. A subtask the expert never
performs on that seed (a label of another task, a typo) has no motion to compare with and is reported
as such. eval_runner publishes the schedule and hands each episode's ticks to these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bimanual_vla.learning.eval_observer import normalise_text

PROGRESS = 0.3  # of the expert's displacement, along it
MAX_ANGLE_DEG = 60.0  # between the arms' displacement and the expert's


@dataclass(frozen=True)
class CoachEvent:
    """Put `text` on policy/subtask `at_s` sim seconds into every episode (empty text: hand back to the model)."""

    at_s: float
    text: str


def parse_timed(spec: str, what: str) -> tuple[float, str]:
    """``"t=2.0:TEXT"`` -> (2.0, 'TEXT'): an event of `what` (coach, perturb) at a sim time; ValueError if not."""
    head, sep, text = spec.partition(':')
    key, eq, value = head.partition('=')
    if not sep or not eq or key.strip() != 't':
        raise ValueError(f'{what} {spec!r}: expected "t=SECONDS:TEXT"')
    try:
        at_s = float(value)
    except ValueError:
        raise ValueError(f'{what} {spec!r}: {value!r} is not a time in seconds') from None
    if not math.isfinite(at_s) or at_s < 0:
        raise ValueError(f'{what} {spec!r}: the time must be >= 0 s')
    return at_s, text.strip()


def parse_coach(spec: str) -> CoachEvent:
    """``"t=2.0:release the cube"`` -> CoachEvent(2.0, 'release the cube'); ValueError naming the problem."""
    return CoachEvent(*parse_timed(spec, 'coach'))


def subtask_motion(joints: np.ndarray, labels: Sequence[str], text: str, weights: np.ndarray) -> np.ndarray | None:
    """The weighted joint displacement of the expert's first run of steps labelled `text`; None if it has none."""
    wanted = normalise_text(text)
    steps = [k for k, label in enumerate(labels) if normalise_text(label) == wanted]
    if not steps:
        return None
    first = steps[0]
    last = first
    while last + 1 < len(labels) and normalise_text(labels[last + 1]) == wanted:
        last += 1
    start = joints[first - 1] if first > 0 else joints[first]  # where the arms were when the subtask began
    return (np.asarray(joints[last], dtype=np.float64) - np.asarray(start, dtype=np.float64)) * weights


def follow_time(
    times: np.ndarray,
    joints: np.ndarray,
    at_s: float,
    motion: np.ndarray,
    weights: np.ndarray,
    *,
    progress: float = PROGRESS,
    max_angle_deg: float = MAX_ANGLE_DEG,
) -> float | None:
    """Seconds from `at_s` to the first tick whose displacement since `at_s` follows `motion`; None if none does.

    `times` (n,) and `joints` (n, d) are the episode's ticks (NaN rows: no joint state yet, skipped).
    """
    length = float(np.linalg.norm(motion))
    if length == 0.0:
        return None
    direction = motion / length
    after = np.flatnonzero(times >= at_s)
    finite = np.all(np.isfinite(joints), axis=1)
    start = next((i for i in after if finite[i]), None)
    if start is None:
        return None
    cos_min = math.cos(math.radians(max_angle_deg))
    for i in after[after >= start]:
        if not finite[i]:
            continue
        moved = (joints[i] - joints[start]) * weights
        along = float(moved @ direction)
        norm = float(np.linalg.norm(moved))
        if along >= progress * length and norm > 0 and along / norm >= cos_min:
            return round(float(times[i] - at_s), 3)
    return None


def coaching_outcomes(
    events: Sequence[CoachEvent],
    ticks: list,
    expert_joints: np.ndarray,
    expert_labels: Sequence[str],
    weights: np.ndarray,
) -> list[dict]:
    """Per coaching event of one episode: the coached and the model's own subtask, and when the arms followed each.

    `ticks` are EvalObserver.tick_log entries (sim time, policy subtask, expert label, joints).
    """
    if not ticks:
        return []
    times = np.array([t[0] for t in ticks], dtype=np.float64)
    joints = np.array([t[3] for t in ticks], dtype=np.float64)
    out = []
    for event in events:
        if not event.text:
            continue
        before = [t for t in ticks if t[0] < event.at_s]
        own = normalise_text(before[-1][1]) if before else ''
        row: dict = {'at_s': event.at_s, 'coached': event.text, 'own': own}
        for key, text in (('coached', event.text), ('own', own)):
            motion = subtask_motion(expert_joints, expert_labels, text, weights) if text else None
            row[f'{key}_has_expert_motion'] = motion is not None
            row[f'{key}_followed_s'] = (
                follow_time(times, joints, event.at_s, motion, weights) if motion is not None else None
            )
        out.append(row)
    return out


def summarise_coaching(rows: Sequence[dict]) -> dict:
    """Over every coaching event with an expert motion: how often and how fast the arms followed the coached
    subtask, and the model's own."""
    out = {}
    for key in ('coached', 'own'):
        measurable = [r for r in rows if r[f'{key}_has_expert_motion'] and normalise_text(r['coached']) != r['own']]
        followed = [r[f'{key}_followed_s'] for r in measurable if r[f'{key}_followed_s'] is not None]
        out[key] = {
            'events': len(measurable),
            'followed': len(followed),
            'follow_rate': round(len(followed) / len(measurable), 3) if measurable else None,
            'median_response_s': round(float(np.median(followed)), 3) if followed else None,
        }
    out['events'] = len(rows)
    out['coached_equals_own'] = sum(1 for r in rows if normalise_text(r['coached']) == r['own'])
    return out
