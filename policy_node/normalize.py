"""State/action normalisation with a checkpoint's statistics, and padding to the model width.

pi0 sees every robot through a fixed 32-wide state/action vector: a rig's joints
fill the first n slots (zeros after), and the model's outputs are sliced back to
those n. Two normalisations are in common use and both are supported:

* ``mean_std``: (x - mean) / (std + eps)
* ``quantile``: map [q01, q99] to [-1, 1] (robust to outliers; pi0.5's choice)
"""

from __future__ import annotations

import numpy as np

from bimanual_vla.policy_node.checkpoint import FeatureStats

EPS = 1e-6


class Normalizer:
    """Normalise and un-normalise one feature (state or actions), joint by joint."""

    def __init__(self, stats: FeatureStats, mode: str) -> None:
        if mode not in ('mean_std', 'quantile'):
            raise ValueError(f'unknown normalisation mode {mode!r} (mean_std | quantile)')
        self.mode = mode
        if mode == 'mean_std':
            self.offset = np.asarray(stats.mean, dtype=np.float64)
            self.scale = np.asarray(stats.std, dtype=np.float64) + EPS
        else:
            q01 = np.asarray(stats.q01, dtype=np.float64)
            q99 = np.asarray(stats.q99, dtype=np.float64)
            self.scale = (q99 - q01 + EPS) / 2.0
            self.offset = q01 + self.scale  # so that 2 * (x - q01) / (q99 - q01 + eps) - 1 exactly

    @property
    def dim(self) -> int:
        return int(self.offset.shape[0])

    def normalize(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1] != self.dim:
            raise ValueError(f'expected {self.dim} values in the last axis, got shape {x.shape}')
        return (x - self.offset) / self.scale

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if y.shape[-1] != self.dim:
            raise ValueError(f'expected {self.dim} values in the last axis, got shape {y.shape}')
        return y * self.scale + self.offset


def pad_last(x: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad the last axis to `width` (pi0's max_state_dim / max_action_dim)."""
    n = x.shape[-1]
    if n > width:
        raise ValueError(f'{n} values do not fit the model width {width}')
    if n == width:
        return x
    pad = [(0, 0)] * (x.ndim - 1) + [(0, width - n)]
    return np.pad(x, pad)
