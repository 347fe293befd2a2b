"""Open-loop evaluation: a policy's action chunks and subtasks against what a bag recorded.

For every ``stride``-th sample of the bag (see :mod:`bimanual_vla.learning.dataset` for how samples are
cut: latest frames, state, the recorded command chunk of length H with its padding mask), the
policy is asked for a chunk on that observation and compared with the recorded one:

* per-joint mean absolute error over all unpadded chunk steps (rig units: radians, metres for
  prismatic grippers), the overall MAE and RMSE, and the MAE by horizon step (how error grows
  along the chunk: a policy that is right at step 0 and drifts after is a different problem
  from one that is biased everywhere);
* reasoning: the subtask the model wrote vs the subtask label recorded at that time
  (``policy/subtask`` or the sim expert's label): exact-match rate after normalisation
  (case, punctuation, whitespace) and mean token-overlap F1 (bag of words, as in SQuAD).

Open loop means the policy never sees the consequences of its own actions: low error here is
necessary, not sufficient, for closed-loop success. The metric code is shared by every
predictor, so an oracle that returns the recorded chunk must score exactly zero (tested).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bimanual_vla.learning.dataset import BagDataset


@dataclass
class Prediction:
    actions: np.ndarray  # (H, J) in the dataset's joint order
    subtask: str = ''
    inference_ms: float = float('nan')


Predictor = Callable[[dict[str, Any]], Prediction]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-case word tokens without punctuation: 'Grasp the cube!' -> ['grasp', 'the', 'cube']."""
    return _WORD.findall(text.lower())


def token_f1(predicted: str, recorded: str) -> float:
    """Bag-of-words F1 between two texts (1.0 for equal word multisets, 0.0 for no shared word)."""
    p, r = words(predicted), words(recorded)
    if not p and not r:
        return 1.0
    if not p or not r:
        return 0.0
    common = sum(min(p.count(w), r.count(w)) for w in set(p))
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


@dataclass
class OpenLoopMetrics:
    """Accumulates chunk errors and subtask agreement; memory is O(H x J), not O(samples)."""

    joint_names: list[str]
    horizon: int
    abs_sum: np.ndarray = field(init=False)  # (H, J) sums of |error| over unpadded steps
    sq_sum: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)  # (H,) unpadded steps seen per horizon step
    samples: int = 0
    subtasks_compared: int = 0
    exact_matches: int = 0
    f1_sum: float = 0.0
    inference_ms: list[float] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        self.abs_sum = np.zeros((self.horizon, n))
        self.sq_sum = np.zeros((self.horizon, n))
        self.count = np.zeros(self.horizon, dtype=np.int64)

    def add(self, pred: Prediction, sample: dict[str, Any], max_examples: int = 20) -> None:
        target = np.asarray(sample['actions'], dtype=np.float64)
        actions = np.asarray(pred.actions, dtype=np.float64)
        if actions.shape != target.shape:
            raise ValueError(f'predicted chunk has shape {actions.shape}, recorded {target.shape}')
        if not np.all(np.isfinite(actions)):
            raise ValueError('predicted chunk contains NaN/Inf')
        valid = ~np.asarray(sample['actions_is_pad'], dtype=bool)
        err = (actions - target)[valid]
        self.abs_sum[valid] += np.abs(err)
        self.sq_sum[valid] += err**2
        self.count[valid] += 1
        self.samples += 1
        if math.isfinite(pred.inference_ms):
            self.inference_ms.append(pred.inference_ms)
        recorded = sample.get('subtask', '')
        if recorded:
            self.subtasks_compared += 1
            exact = words(pred.subtask) == words(recorded)
            self.exact_matches += int(exact)
            self.f1_sum += token_f1(pred.subtask, recorded)
            if len(self.examples) < max_examples:
                self.examples.append({
                    'episode': int(sample['episode']),
                    'time_s': round(float(sample['timestamp']), 3),
                    'recorded': recorded,
                    'predicted': pred.subtask,
                    'exact': exact,
                })  # fmt: skip

    def result(self) -> dict[str, Any]:
        steps = int(self.count.sum())
        per_joint = self.abs_sum.sum(axis=0) / max(steps, 1)
        with np.errstate(invalid='ignore', divide='ignore'):
            by_step = self.abs_sum.mean(axis=1) / self.count
        n_sub = self.subtasks_compared
        return {
            'samples_evaluated': self.samples,
            'action_steps_compared': steps,
            'mae': _num(self.abs_sum.sum() / (steps * len(self.joint_names))) if steps else None,
            'rmse': _num(math.sqrt(self.sq_sum.sum() / (steps * len(self.joint_names)))) if steps else None,
            'per_joint_mae': {n: _num(v) for n, v in zip(self.joint_names, per_joint, strict=True)} if steps else {},
            'mae_by_horizon': [_num(v) for v in by_step],
            'subtask': {
                'compared': n_sub,
                'exact_match_rate': _num(self.exact_matches / n_sub) if n_sub else None,
                'token_f1': _num(self.f1_sum / n_sub) if n_sub else None,
                'examples': self.examples,
            },
            'inference_ms': {
                'mean': _num(float(np.mean(self.inference_ms))) if self.inference_ms else None,
                'p50': _num(float(np.median(self.inference_ms))) if self.inference_ms else None,
                'max': _num(float(np.max(self.inference_ms))) if self.inference_ms else None,
            },
        }


def _num(v: float) -> float | None:
    """JSON-safe float: NaN/Inf (no data) become null."""
    v = float(v)
    return round(v, 9) if math.isfinite(v) else None


@dataclass
class Trace:
    """What the plots need: per evaluated sample, its time and both chunks."""

    episode: int
    times: list[float] = field(default_factory=list)
    predicted: list[np.ndarray] = field(default_factory=list)
    recorded: list[np.ndarray] = field(default_factory=list)
    pads: list[np.ndarray] = field(default_factory=list)


def evaluate(
    dataset: BagDataset,
    predict: Predictor,
    *,
    stride: int = 10,
    max_samples: int | None = None,
    plot_episodes: int = 1,
    progress: bool = False,
) -> tuple[dict[str, Any], list[Trace]]:
    """Run `predict` on every `stride`-th sample of each episode; return (report, traces for plots)."""
    if stride < 1:
        raise ValueError(f'stride must be >= 1, got {stride}')
    metrics = OpenLoopMetrics(dataset.joint_names, dataset.chunk_size)
    traces: list[Trace] = []
    total = sum(len(range(0, len(dataset.episode_range(e)), stride)) for e in range(len(dataset.episodes)))
    if max_samples is not None:
        total = min(total, max_samples)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit='obs', desc='eval')
    t0 = time.perf_counter()
    for e in range(len(dataset.episodes)):
        trace = Trace(e) if len(traces) < plot_episodes else None
        for k, sample in enumerate(dataset.iter_episode(e)):
            if k % stride:
                continue
            if max_samples is not None and metrics.samples >= max_samples:
                break
            pred = predict(sample)
            metrics.add(pred, sample)
            if trace is not None:
                trace.times.append(float(sample['timestamp']))
                trace.predicted.append(np.asarray(pred.actions, dtype=np.float64))
                trace.recorded.append(np.asarray(sample['actions'], dtype=np.float64))
                trace.pads.append(np.asarray(sample['actions_is_pad'], dtype=bool))
            if bar is not None:
                bar.update(1)
        if trace is not None and trace.times:
            traces.append(trace)
        if max_samples is not None and metrics.samples >= max_samples:
            break
    if bar is not None:
        bar.close()
    report = {'dataset': dataset.describe(), 'stride': stride, 'joint_names': list(dataset.joint_names)}
    report.update(metrics.result())
    report['wall_s'] = round(time.perf_counter() - t0, 3)
    return report, traces


def policy_predictor(policy: Any, *, seed: int = 0, reasoning: bool = True) -> Predictor:
    """A Predictor running a `bimanual_vla.policy_node.model.VLAPolicy` (fixed noise seed: repeatable numbers)."""
    from bimanual_vla.policy_node.model import Observation

    policy.seed(seed)

    def predict(sample: dict[str, Any]) -> Prediction:
        obs = Observation(
            images=sample['images'],
            state=np.asarray(sample['state'], dtype=np.float64),
            task=sample['task'],
            stamp=sample['time_ns'] * 1e-9,
        )
        result = policy.infer(obs, decode_subtask=reasoning)
        return Prediction(result.actions, result.subtask, float(result.timings_ms.get('total', float('nan'))))

    return predict


def oracle_predictor(sample: dict[str, Any]) -> Prediction:
    """The recorded chunk and subtask themselves: scores zero error and full agreement."""
    return Prediction(np.array(sample['actions'], dtype=np.float64), sample.get('subtask', ''))


# ------------------------------------------------------------------ output


def arm_groups(joint_names: list[str], rig: Any = None) -> dict[str, list[int]]:
    """arm -> column indices; from the rig if given, else the `<arm>_` prefix of each joint name."""
    groups: dict[str, list[int]] = {}
    if rig is not None:
        for arm in rig.arms:
            cols = [joint_names.index(n) for n in arm.qualified_joint_names() if n in joint_names]
            if cols:
                groups[arm.name] = cols
        return groups
    for i, name in enumerate(joint_names):
        groups.setdefault(name.split('_', 1)[0], []).append(i)
    return groups


def write_report(
    report: dict[str, Any], traces: list[Trace], out: str | Path, rate_hz: float, rig: Any = None
) -> dict[str, Path]:
    """Write report.json, trajectories_<arm>.png (per arm) and error_by_horizon.png into `out`."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    names = report['joint_names']
    plots: list[str] = []
    for trace in traces[:1]:
        for arm, cols in arm_groups(names, rig).items():
            fig, axes = plt.subplots(len(cols), 1, figsize=(10, 1.8 * len(cols)), sharex=True, squeeze=False)
            for row, col in enumerate(cols):
                ax = axes[row][0]
                for i, (t, pred, rec, pad) in enumerate(
                    zip(trace.times, trace.predicted, trace.recorded, trace.pads, strict=True)
                ):
                    steps = t + np.arange(len(pred)) / rate_hz
                    ok = ~pad
                    ax.plot(steps[ok], rec[ok, col], color='black', lw=1.2, label='recorded' if i == 0 else None)
                    ax.plot(steps, pred[:, col], color='tab:orange', lw=0.8, alpha=0.8,
                            label='predicted chunk' if i == 0 else None)  # fmt: skip
                    ax.plot(steps[:1], pred[:1, col], 'o', color='tab:orange', ms=2)
                ax.set_ylabel(names[col], fontsize=7)
                ax.tick_params(labelsize=7)
            axes[0][0].legend(fontsize=7, loc='upper right')
            axes[-1][0].set_xlabel(f'episode {trace.episode} time (s)')
            fig.suptitle(f'arm {arm}: predicted chunks vs recorded commands (open loop)', fontsize=9)
            fig.tight_layout()
            path = out / f'trajectories_{arm}.png'
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written[f'trajectories_{arm}'] = path
            plots.append(path.name)
    horizon = np.array([np.nan if v is None else v for v in report['mae_by_horizon']], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(len(horizon)) / rate_hz, horizon, marker='.', lw=1)
    ax.set_xlabel('horizon (s into the chunk)')
    ax.set_ylabel('MAE over joints')
    ax.set_title('open-loop error by horizon step', fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / 'error_by_horizon.png'
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written['error_by_horizon'] = path
    plots.append(path.name)
    report = {**report, 'plots': plots}
    json_path = out / 'report.json'
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + '\n')
    written['report'] = json_path
    return written
