"""DART offsets: slow random joint offsets a scripted expert executes but does not publish.

Demonstrations that only ever visit the expert's own states teach a cloned policy nothing about
coming back when it drifts (Laskey et al., DART, 2017). Executing the plan with these offsets added,
while the clean plan is recorded as the action, shows the way back from every perturbed state.
Both experts (sim/expert.py for ALOHA, sim/so101_expert.py for the twin) draw them here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_NOISE_RAD = 0.2  # the largest std an expert option accepts


def slow_offsets(
    num_steps: int, dt: float, joints: int, skip: Sequence[int], std: float, seed: Sequence[int]
) -> np.ndarray:
    """(num_steps, joints) offsets of standard deviation `std` rad, zero in the `skip` columns (grippers).

    Each joint's offset is a sum of three sines of 0.2-1 Hz (a servo's position loop follows that
    without overshoot) with seeded frequencies and phases, faded in over the first second so an
    episode starts on its plan. `seed`: the numpy seed sequence (episode seed, arm, ...), so an
    episode's offsets are the same every time it is played.
    """
    out = np.zeros((num_steps, joints))
    if std <= 0:
        return out
    rng = np.random.default_rng(list(seed))
    t = np.arange(num_steps) * dt
    for j in range(joints):
        if j in skip:
            continue
        freqs = rng.uniform(0.2, 1.0, 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        wave = np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None]).sum(axis=0)
        out[:, j] = std * wave / np.sqrt(1.5)  # three unit sines: variance 1.5
    return out * np.clip(t / 1.0, 0.0, 1.0)[:, None]
