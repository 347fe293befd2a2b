"""Recovery in eval-sim: perturbations scheduled mid-episode, and whether the text and the arms go back.

``eval-sim --perturb t=3.8:drop`` asks the simulator (``sim/perturb``, sim/perturbation.py) to knock the
task object out of the gripper (``drop``) or put it down elsewhere (``move``) at that sim time of every
episode. A policy that reasons in text should then write an earlier subtask again (reach, grasp) and
retry. Per perturbation this measures:

* **text went back**: seconds from the perturbation to the first tick whose subtask comes earlier in
  the task's subtask order (the scripted expert's labels in the order they first appear) than the one
  in force when it happened; None if it never did;
* **success**: whether the episode still ended in success (the episode's own outcome).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bimanual_vla.learning.coaching import parse_timed
from bimanual_vla.learning.eval_observer import normalise_text
from bimanual_vla.sim.perturbation import PERTURBATIONS


@dataclass(frozen=True)
class PerturbEvent:
    """Ask for perturbation `kind` (``drop`` | ``move``) `at_s` sim seconds into every episode."""

    at_s: float
    kind: str


def parse_perturb(spec: str) -> PerturbEvent:
    """``"t=3.8:drop"`` -> PerturbEvent(3.8, 'drop'); ValueError naming the problem."""
    at_s, kind = parse_timed(spec, 'perturb')
    if kind not in PERTURBATIONS:
        raise ValueError(f'perturb {spec!r}: {kind!r} is not one of {", ".join(PERTURBATIONS)}')
    return PerturbEvent(at_s, kind)


def subtask_order(labels: Sequence[str]) -> list[str]:
    """The task's subtasks (normalised) in the order the expert first performs them."""
    return list(dict.fromkeys(normalise_text(label) for label in labels if label))


def text_went_back_s(ticks: list, at_s: float, order: Sequence[str]) -> float | None:
    """Seconds from `at_s` to the first tick whose subtask is earlier in `order` than the one in force at `at_s`.

    `ticks`: EvalObserver.tick_log entries (sim time, policy subtask, ...). None if the text never went
    back, or if the subtask in force at `at_s` is not one of `order` (nothing to go back from).
    """
    rank = {text: i for i, text in enumerate(order)}
    before = [t for t in ticks if t[0] <= at_s and normalise_text(t[1]) in rank]
    if not before:
        return None
    then = rank[normalise_text(before[-1][1])]
    for t in ticks:
        if t[0] > at_s and rank.get(normalise_text(t[1]), then) < then:
            return round(float(t[0] - at_s), 3)
    return None


def recovery_outcomes(applied: Sequence[tuple], ticks: list, labels: Sequence[str], success: bool) -> list[dict]:
    """Per perturbation the simulator applied in one episode (sim_rig.perturbations entries): what it did,
    the subtask in force, when the text went back, and the episode's outcome."""
    order = subtask_order(labels)
    out = []
    for at_s, kind, before, after in applied:
        in_force = [t[1] for t in ticks if t[0] <= at_s]
        out.append(
            {
                'at_s': at_s,
                'kind': kind,
                'object_before': before,
                'object_after': after,
                'subtask_then': normalise_text(in_force[-1]) if in_force else '',
                'text_went_back_s': text_went_back_s(ticks, at_s, order),
                'episode_success': success,
            }
        )
    return out


def summarise_recovery(per_episode: Sequence[Sequence[dict]]) -> dict:
    """Over the episodes (each its recovery rows): how many were perturbed and still succeeded, and how often
    and how fast the text went back."""
    perturbed = [rows for rows in per_episode if rows]
    rows = [r for episode in perturbed for r in episode]
    back = [r['text_went_back_s'] for r in rows if r['text_went_back_s'] is not None]
    successes = sum(1 for episode in perturbed if episode[0]['episode_success'])
    return {
        'episodes_perturbed': len(perturbed),
        'successes_after_perturbation': successes,
        'success_rate_after_perturbation': round(successes / len(perturbed), 3) if perturbed else None,
        'perturbations': len(rows),
        'text_went_back': len(back),
        'median_text_went_back_s': round(float(np.median(back)), 3) if back else None,
    }
