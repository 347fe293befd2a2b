"""dtw_align recovers known time warps, pauses and early ends, and refuses what it cannot align."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.learning.alignment import dtw_align


def _curve(t: np.ndarray) -> np.ndarray:
    """A smooth 3-D path, strictly monotone in its first coordinate (so every step is distinct)."""
    return np.stack([t, np.sin(3 * t), np.cos(2 * t) * 0.5], axis=1)


def test_a_faster_then_paused_copy_aligns_back_to_its_reference_steps() -> None:
    reference_t = np.linspace(0, 2, 201)
    reference = _curve(reference_t)
    # the query runs 1.25x faster for 80 steps, pauses 30 steps, then goes on at 0.8x speed
    warp = np.concatenate([np.arange(80) * 1.25, np.full(30, 79 * 1.25), 79 * 1.25 + np.arange(1, 90) * 0.8])
    truth = np.minimum(np.round(warp).astype(int), 200)
    query = reference[truth]
    aligned = dtw_align(query, reference)
    assert aligned.shape == (len(query),)
    assert np.all(np.diff(aligned) >= 0)
    assert np.abs(aligned - truth).max() <= 1, np.abs(aligned - truth).max()


def test_an_episode_that_ends_early_aligns_with_a_prefix() -> None:
    reference = _curve(np.linspace(0, 2, 201))
    aligned = dtw_align(reference[:120], reference)
    np.testing.assert_array_equal(aligned, np.arange(120))


def test_weights_decide_which_coordinate_the_alignment_follows() -> None:
    # coordinate 0 says "step k", coordinate 1 says "step 2k": weighting picks the one believed
    reference = np.stack([np.arange(50.0), np.arange(50.0)], axis=1)
    query = np.stack([np.arange(20.0), 2 * np.arange(20.0)], axis=1)
    steps = np.arange(20)
    np.testing.assert_array_equal(dtw_align(query, reference, weights=np.array([1.0, 0.0])), steps)
    # skipping every other reference row, each query row spans two: within one of 2k
    assert np.abs(dtw_align(query, reference, weights=np.array([0.0, 1.0])) - 2 * steps).max() <= 1


@pytest.mark.parametrize(
    ('query', 'reference', 'message'),
    [
        (np.zeros((5, 3)), np.zeros((5, 2)), 'must be'),
        (np.zeros((0, 3)), np.zeros((5, 3)), 'empty'),
        (np.full((5, 3), np.nan), np.zeros((5, 3)), 'finite'),
    ],
)
def test_unalignable_input_is_refused_by_name(query: np.ndarray, reference: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dtw_align(query, reference)


def test_a_late_copy_of_the_expert_is_scored_by_what_it_does_not_by_the_clock() -> None:
    """eval-sim's aligned labels on real sim data: the expert's own run, started 0.3 s late.

    Against the clock it disagrees around every boundary; aligned with the expert's replay, the
    label of what the arms are doing is the expert's label 0.3 s earlier.
    """
    from bimanual_vla.config import load_rig
    from bimanual_vla.learning.eval_sim import aligned_labels, replay_expert
    from bimanual_vla.sim.expert import ScriptedExpert

    rig = load_rig('aloha_sim')
    replay = replay_expert(ScriptedExpert(rig, 'transfer_cube', 1000))
    assert replay.joints.shape == (len(replay.labels), 14)
    assert sorted(replay.stage_first_s) == ['1', '2', '3', '4']
    delay = 15
    joints = np.concatenate([np.repeat(replay.joints[:1], delay, axis=0), replay.joints[:-delay]])
    ticks = [((k + 1) * 0.02, '', replay.labels[k], q) for k, q in enumerate(joints)]
    ticks[0] = (0.02, '', replay.labels[0], np.full(14, np.nan))  # before the first joint state
    aligned = aligned_labels(ticks, replay, rig)
    late = replay.labels[:1] * delay + replay.labels[:-delay]
    assert np.mean([a == b for a, b in zip(aligned, late, strict=True)]) > 0.97
    assert np.mean([a == b for a, b in zip(late, replay.labels, strict=True)]) < 0.9  # what the clock would say
