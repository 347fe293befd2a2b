"""Helpers for the policy model tests: copy a checkpoint, make observations and noise.

The session fixtures `tiny_checkpoint` and `tiny_policy` they go with live in test/conftest.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def make_observation(policy, seed: int = 0, size: tuple[int, int] = (240, 320), task: str | None = None):
    """Random camera frames and a state inside the checkpoint's normalisation range."""
    from bimanual_vla.policy_node.model import Observation

    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c in policy.camera_names}
    mean = np.asarray(policy.metadata.normalization.state.mean)
    std = np.asarray(policy.metadata.normalization.state.std)
    state = mean + 0.5 * std * rng.standard_normal(mean.shape)
    return Observation(images=images, state=state, task=task or 'transfer the cube to the left arm', stamp=12.5)


def make_noise(policy, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((policy.chunk_size, policy.config.max_action_dim))
