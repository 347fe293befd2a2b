"""LeRobot's dataset statistics, computed the way LeRobot computes them, for the LeRobot export.

Ported from LeRobot's ``src/lerobot/datasets/compute_stats.py`` (huggingface/lerobot, checked at
commit 7427f318, v0.6.2; see docs/lerobot.md): LeRobot's dataset tools (``delete_episodes``,
``split_dataset``, ``merge_datasets``) re-aggregate the per-episode statistics stored in
meta/episodes, and training normalises with meta/stats.json, so both must be what LeRobot itself
would have written:

* per feature: ``min``, ``max``, ``mean``, ``std`` (population), ``count`` and the quantiles
  ``q01, q10, q50, q90, q99`` from LeRobot's 5000-bin histogram (``RunningQuantileStats``, one
  batch), in the dtype the data is stored in (float32 arithmetic for float32 vectors);
* vectors (N, D) give (D,) arrays; scalars per frame (N,) give (1,); ``count`` is ``[N]``;
* images: per channel over every pixel of a sample of the episode's frames (``sample_indices``:
  about N^0.75 of them, evenly spaced; frames of 300 px or more are strided to about 150 px),
  divided by 255, shape (3, 1, 1); ``count`` is the number of frames sampled. Pixels are uint8,
  so :class:`ImageStats` keeps a 256-bin count per channel instead of the pixels and evaluates
  LeRobot's formulas on the counts (same edges, same bins);
* the dataset's stats.json: LeRobot's ``aggregate_stats`` over the episodes (count-weighted mean,
  pooled variance, min of mins, max of maxes, and the quantile envelope: min over episodes for
  q <= 50, max for q > 50).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f'q{int(q * 100):02d}' for q in QUANTILES)  # as LeRobot names them
STAT_KEYS = ('min', 'max', 'mean', 'std', 'count', *QUANTILE_KEYS)
NUM_BINS = 5000  # RunningQuantileStats' num_quantile_bins
DOWNSAMPLE_TARGET, DOWNSAMPLE_THRESHOLD = 150, 300  # auto_downsample_height_width


def estimate_num_samples(n: int, min_num: int = 100, max_num: int = 10_000, power: float = 0.75) -> int:
    """How many frames of an n-frame episode LeRobot samples for image statistics."""
    if n < min_num:
        min_num = n
    return max(min_num, min(int(n**power), max_num))


def sample_indices(n: int) -> list[int]:
    """The frame indices LeRobot samples from an n-frame episode."""
    return np.round(np.linspace(0, n - 1, estimate_num_samples(n))).astype(int).tolist()


def downsample(rgb: np.ndarray) -> np.ndarray:
    """LeRobot's ``auto_downsample_height_width`` on an H x W x 3 frame (it strides, no filtering)."""
    height, width = rgb.shape[:2]
    if max(width, height) < DOWNSAMPLE_THRESHOLD:
        return rgb
    factor = int(width / DOWNSAMPLE_TARGET) if width > height else int(height / DOWNSAMPLE_TARGET)
    return rgb[::factor, ::factor]


def _single_quantile(hist: np.ndarray, edges: np.ndarray, target: float) -> float:
    cumsum = np.cumsum(hist)
    idx = int(np.searchsorted(cumsum, target))
    if idx == 0:
        return float(edges[0])
    if idx >= len(cumsum):
        return float(edges[-1])
    before = cumsum[idx - 1]
    in_bin = cumsum[idx] - before
    if in_bin == 0:
        return float(edges[idx])
    return float(edges[idx] + (target - before) / in_bin * (edges[idx + 1] - edges[idx]))


def _histogram_quantiles(values: np.ndarray, lo: Any, hi: Any, count: int, weights: np.ndarray | None) -> list:
    """LeRobot's histogram quantiles of one column: edges from its min/max, linear within the bin."""
    edges = np.linspace(lo - 1e-10, hi + 1e-10, NUM_BINS + 1)
    hist, _ = np.histogram(values, bins=edges, weights=weights)
    return [_single_quantile(hist, edges, q * count) for q in QUANTILES]


def running_stats(batch: np.ndarray) -> dict[str, np.ndarray]:
    """``RunningQuantileStats().update(batch); get_statistics()`` for one (M, D) batch."""
    batch = batch.reshape(-1, batch.shape[-1])
    batch = batch.astype(np.result_type(batch.dtype, np.float32), copy=False)
    count = len(batch)
    mean = np.mean(batch, axis=0)
    mean_sq = np.mean(batch**2, axis=0)
    lo, hi = np.min(batch, axis=0), np.max(batch, axis=0)
    stats = {'min': lo, 'max': hi, 'mean': mean, 'std': np.sqrt(np.maximum(0, mean_sq - mean**2)),
             'count': np.array([count])}  # fmt: skip
    columns = [_histogram_quantiles(batch[:, i], lo[i], hi[i], count, None) for i in range(batch.shape[1])]
    for k, key in enumerate(QUANTILE_KEYS):
        stats[key] = np.array([c[k] for c in columns])
    return stats


def _basic_stats(batch: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """LeRobot's ``_compute_basic_stats`` (fewer than 2 rows): quantiles are the mean."""
    stats = {'min': np.min(batch, axis=0), 'max': np.max(batch, axis=0), 'mean': np.mean(batch, axis=0),
             'std': np.std(batch, axis=0), 'count': np.array([count])}  # fmt: skip
    for key in QUANTILE_KEYS:
        stats[key] = stats['mean'].copy()
    return stats


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of one episode's values of a non-image feature: (N,) -> (1,) arrays, (N, D) -> (D,)."""
    values = np.asarray(values)
    batch = values.reshape(-1, 1) if values.ndim == 1 else values
    stats = _basic_stats(batch, len(values)) if len(batch) < 2 else running_stats(batch)
    stats['count'] = np.array([len(values)])
    if values.ndim == 1:
        stats = {k: v if k == 'count' else np.asarray(v).reshape(1) for k, v in stats.items()}
    return stats


class ImageStats:
    """One camera's statistics over the frames LeRobot would sample from an episode (module docstring)."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)  # channel -> pixel value -> how many
        self.frames = 0

    def add(self, rgb: np.ndarray) -> None:
        """One sampled H x W x 3 uint8 frame (as encoded), downsampled as LeRobot does."""
        small = downsample(rgb)
        for c in range(3):
            self.counts[c] += np.bincount(small[..., c].ravel(), minlength=256)
        self.frames += 1

    def result(self) -> dict[str, np.ndarray]:
        """Per-channel statistics of pixel/255, each (3, 1, 1), and count [frames]."""
        values = np.arange(256, dtype=np.float32)
        out: dict[str, list[float]] = {k: [] for k in STAT_KEYS if k != 'count'}
        for c in range(3):
            n = self.counts[c]
            pixels = int(n.sum())
            present = values[n > 0]
            lo, hi = present.min(), present.max()
            mean = float((values * n).sum() / pixels)
            mean_sq = float((values.astype(np.float64) ** 2 * n).sum() / pixels)
            out['min'].append(float(lo))
            out['max'].append(float(hi))
            out['mean'].append(mean)
            out['std'].append(float(np.sqrt(max(0.0, mean_sq - mean**2))))
            if pixels < 2:
                qs = [mean] * len(QUANTILE_KEYS)
            else:
                qs = _histogram_quantiles(values, lo, hi, pixels, n.astype(np.float64))
            for key, q in zip(QUANTILE_KEYS, qs, strict=True):
                out[key].append(q)
        stats = {k: (np.array(v) / 255.0).reshape(3, 1, 1) for k, v in out.items()}
        stats['count'] = np.array([self.frames])
        return stats


def aggregate_stats(episodes: Sequence[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """LeRobot's ``aggregate_stats``: the dataset's statistics from its episodes'."""
    keys = {k for ep in episodes for k in ep}
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in sorted(keys):
        parts = [ep[key] for ep in episodes if key in ep]
        means = np.stack([s['mean'] for s in parts])
        variances = np.stack([s['std'] ** 2 for s in parts])
        counts = np.stack([s['count'] for s in parts])
        total = counts.sum(axis=0)
        while counts.ndim < means.ndim:
            counts = np.expand_dims(counts, axis=-1)
        mean = (means * counts).sum(axis=0) / total
        variance = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
        agg = {'min': np.min(np.stack([s['min'] for s in parts]), axis=0),
               'max': np.max(np.stack([s['max'] for s in parts]), axis=0),
               'mean': mean, 'std': np.sqrt(variance), 'count': total}  # fmt: skip
        for q in QUANTILE_KEYS:
            stacked = np.stack([s[q] for s in parts])
            agg[q] = np.min(stacked, axis=0) if int(q[1:]) <= 50 else np.max(stacked, axis=0)
        out[key] = agg
    return out


def to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Nested lists, as LeRobot's ``serialize_dict`` writes stats.json."""
    return {k: {s: np.asarray(v).tolist() for s, v in feature.items()} for k, feature in stats.items()}
