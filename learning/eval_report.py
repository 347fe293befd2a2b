"""eval-sim's scoring and report: per-episode agreement, pace and latency, and the summary in report.json."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bimanual_vla.config import RigConfig
from bimanual_vla.learning.eval_observer import normalise_text

if TYPE_CHECKING:
    from bimanual_vla.learning.eval_observer import EvalObserver


@dataclass
class EpisodeReport:
    index: int
    seed: int
    success: bool = False
    max_stage: int = 0
    final_stage: int = 0
    sim_time_s: float = 0.0
    first_success_s: float | None = None
    stage_first_s: dict[str, float] = field(default_factory=dict)  # sim time each reward stage was first reached
    expert_stage_first_s: dict[str, float] = field(default_factory=dict)  # the same, the expert on this seed
    ticks: int = 0
    subtask_agreement_steps: float | None = None  # fraction of ticks whose subtask equals the expert's
    subtask_agreement_inferences: float | None = None  # fraction of inferences naming the expert's label
    # ticks whose subtask is the expert's label at the step of its own run the arms are at (see trajectory_alignment)
    subtask_agreement_aligned: float | None = None
    # the agreement with the expert's clock that text naming exactly those aligned labels would score:
    # the ceiling this episode's pace puts on subtask_agreement_steps
    subtask_agreement_steps_ceiling: float | None = None
    # sim seconds from an observation to the new subtask the model wrote on it reaching the observer
    # (policy/reasoning; median, 90th pct; over the inferences that changed the text), and from every
    # observation to its chunk (its markers): the machine's speed as the closed loop feels it. The pace,
    # and so the clock agreement, depend on it
    observation_to_subtask_s: dict[str, float] = field(default_factory=dict)
    observation_to_chunk_s: dict[str, float] = field(default_factory=dict)
    inferences: int = 0
    subtasks: list[str] = field(default_factory=list)
    # [sim time, policy subtask in force, expert label] at every tick where either changes
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    # per coaching event (eval-sim --coach): the coached and the model's own subtask and when the arms
    # followed each (learning/coaching.py)
    coaching: list[dict] = field(default_factory=list)
    # per perturbation the simulator applied (eval-sim --perturb): what, when the text went back (learning/recovery.py)
    recovery: list[dict] = field(default_factory=list)
    perturbations_asked: int = 0
    wall_s: float = 0.0


def _changes(ticks: list[tuple[float, str, str, np.ndarray]]) -> list[tuple[float, str, str]]:
    """The ticks where the policy's subtask or the expert's label changes: where they disagree, at a glance."""
    out: list[tuple[float, str, str]] = []
    for t, policy, expert, _ in ticks:
        if not out or (policy, expert) != out[-1][1:]:
            out.append((round(t, 2), policy, expert))
    return out


@dataclass
class ExpertReplay:
    """The scripted expert played on one seed: when it reached each stage, its measured joints, its labels."""

    stage_first_s: dict[str, float]
    joints: np.ndarray  # (steps, joints) measured after each step, EvalObserver.joint_names order
    labels: list[str]  # its label at each step


def joint_weights(rig: RigConfig) -> np.ndarray:
    """Per joint (EvalObserver.joint_names order): grippers 30, arm joints 1, so a gripper's ~0.036 m of
    stroke counts on the scale of the arm joints' radians when motions are compared."""
    return np.array([30.0 if j.name == a.gripper else 1.0 for a in rig.arms for j in a.joints])


def aligned_labels(ticks: list, replay: ExpertReplay, rig: RigConfig) -> list[str] | None:
    """Per tick, the expert's label at the step of its own run the measured joints align with (DTW).

    Ticks before the first joint state take that state's place. Grippers (metres, ~0.036 m of
    stroke) weigh 30x, on the scale of the arm joints' radians. None if no joint state came.
    """
    from bimanual_vla.learning.alignment import dtw_align

    if not ticks:
        return None
    q = np.array([tick[3] for tick in ticks], dtype=np.float64)
    finite = np.all(np.isfinite(q), axis=1)
    if not finite.any():
        return None
    q[~finite] = q[np.argmax(finite)]  # before the first state: the first state
    steps = dtw_align(q, replay.joints, joint_weights(rig))
    return [replay.labels[k] for k in steps]


def score_subtasks(report: EpisodeReport, ticks: list, infs: list, aligned: list[str] | None) -> None:
    """Fill the report's agreement fields from the episode's ticks and inferences."""
    same = lambda a, b: normalise_text(a) == normalise_text(b)  # noqa: E731
    report.ticks = len(ticks)
    report.inferences = len(infs)
    if ticks:
        report.subtask_agreement_steps = float(np.mean([same(p, e) for _, p, e, _ in ticks]))
    if ticks and aligned is not None:
        report.subtask_agreement_aligned = float(np.mean([same(t[1], a) for t, a in zip(ticks, aligned, strict=True)]))
        report.subtask_agreement_steps_ceiling = float(
            np.mean([same(a, t[2]) for t, a in zip(ticks, aligned, strict=True)])
        )
    if infs:
        report.subtask_agreement_inferences = float(np.mean([same(p, e) for _, _, p, e in infs]))
    report.subtasks = list(dict.fromkeys(p for _, _, p, _ in infs))
    report.timeline = _changes(ticks)


def tick_log_line(
    report: EpisodeReport, ticks: list, infs: list, aligned: list[str] | None, changes: list[tuple[float, float]]
) -> dict:
    """One ticks.jsonl line: every tick (time, subtask, expert label, aligned label, joints) and inference."""
    aligned = aligned if aligned is not None else [''] * len(ticks)
    times = [t[0] for t in ticks]

    def aligned_at(stamp: float) -> str:  # the aligned label of the last tick at or before an observation
        i = int(np.searchsorted(times, stamp, side='right')) - 1
        return aligned[i] if i >= 0 else ''

    return {
        'seed': report.seed,
        'success': report.success,
        'ticks': [[round(t, 3), p, e, a, _joints_json(q)] for (t, p, e, q), a in zip(ticks, aligned, strict=True)],
        'inferences': [[round(t, 3), round(at, 3), p, e, aligned_at(t)] for t, at, p, e in infs],
        'subtask_changes': [[round(t, 3), round(at, 3)] for t, at in changes],
    }


def _joints_json(q: np.ndarray) -> list[float | None]:
    """Joints rounded to 0.1 mrad; null (not NaN, which is not JSON) before the first joint state."""
    return [round(float(v), 4) if math.isfinite(v) else None for v in q]


def _pace_vs_expert(reports: list[EpisodeReport]) -> dict[str, dict[str, float]]:
    """Per reward stage, over successful episodes: policy's first-reach time minus the expert's (s)."""
    out: dict[str, dict[str, float]] = {}
    for stage in ('1', '2', '3', '4'):
        d = [
            r.stage_first_s[stage] - r.expert_stage_first_s[stage]
            for r in reports
            if r.success and stage in r.stage_first_s and stage in r.expert_stage_first_s
        ]
        if d:
            out[stage] = {'mean': round(float(np.mean(d)), 3), 'std': round(float(np.std(d)), 3), 'episodes': len(d)}
    return out


def latency_percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p90 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90])
    return {'p50': round(float(p50), 3), 'p90': round(float(p90), 3)}


def summarise(
    reports: list[EpisodeReport],
    checkpoint: Path,
    task: str,
    seed: int,
    rtf: float,
    observer: EvalObserver,
    outputs: dict[str, str],
    latencies: Sequence[float] = (),
    chunk_latencies: Sequence[float] = (),
) -> dict:
    """report.json without the run's own keys (evaluate_closed_loop adds those): the episodes summed up."""

    def mean(values: list[float | None]) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    stages = [r.max_stage for r in reports]
    return {
        'checkpoint': str(checkpoint),
        'task': task,
        'first_seed': seed,
        'episodes': len(reports),
        'real_time_factor': rtf,
        'success_rate': mean([float(r.success) for r in reports]),
        'successes': sum(r.success for r in reports),
        'max_stage_histogram': {str(s): stages.count(s) for s in range(5)},
        'mean_max_stage': mean(stages),
        'median_stage_first_s': {
            str(k): float(np.median(times))
            for k in range(1, 5)
            if (times := [r.stage_first_s[str(k)] for r in reports if str(k) in r.stage_first_s])
        },
        'subtask_agreement_steps': mean([r.subtask_agreement_steps for r in reports]),
        'subtask_agreement_inferences': mean([r.subtask_agreement_inferences for r in reports]),
        'subtask_agreement_aligned': mean([r.subtask_agreement_aligned for r in reports]),
        'subtask_agreement_steps_ceiling': mean([r.subtask_agreement_steps_ceiling for r in reports]),
        **{
            f'{key}_by_outcome': {
                'successful': mean([getattr(r, key) for r in reports if r.success]),
                'failed': mean([getattr(r, key) for r in reports if not r.success]),
            }
            for key in ('subtask_agreement_steps', 'subtask_agreement_aligned', 'subtask_agreement_steps_ceiling')
        },
        'stage_first_s_minus_expert': _pace_vs_expert(reports),
        'observation_to_subtask_s': latency_percentiles(list(latencies)),
        'observation_to_chunk_s': latency_percentiles(list(chunk_latencies)),
        'commands_checked': observer.command_count,
        'command_limit_violations': observer.command_violations,
        'outputs': outputs,
        'per_episode': [asdict(r) for r in reports],
    }
