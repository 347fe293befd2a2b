"""Shared fixtures for the policy model tests: one tiny random checkpoint per test session.

Import the fixtures into a test module (``from policy_fixtures import tiny_checkpoint, tiny_policy``)
rather than re-creating checkpoints: making one costs a few seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random aloha_sim checkpoint (read-only by convention: copy it before editing)."""
    from bimanual_vla.learning.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', rig='aloha_sim', seed=0)


@pytest.fixture(scope='session')
def tiny_policy(tiny_checkpoint: Path):
    """The tiny checkpoint loaded once. Tests sharing it must not depend on its cached subtask."""
    from bimanual_vla.policy_node.model import VLAPolicy

    return VLAPolicy.load(tiny_checkpoint)


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
