"""Coaching measure (learning/coaching.py): a schedule parsed, and whether the arms follow a coached subtask."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.learning.coaching import (
    CoachEvent,
    coaching_outcomes,
    follow_time,
    parse_coach,
    subtask_motion,
    summarise_coaching,
)

WEIGHTS = np.array([1.0, 1.0, 30.0])  # two arm joints and a gripper (metres)
# The expert: reach (joint 0 from 0 to 1), then grasp (gripper closes 0.04 -> 0.0), then lift (joint 1 up 0.5).
LABELS = ['reach'] * 10 + ['grasp'] * 5 + ['lift'] * 10
EXPERT = np.array(
    [[0.1 * (k + 1), 0.0, 0.04] for k in range(10)]
    + [[1.0, 0.0, 0.04 - 0.008 * (k + 1)] for k in range(5)]
    + [[1.0, 0.05 * (k + 1), 0.0] for k in range(10)]
)


def test_a_schedule_entry_is_parsed_or_refused_in_one_line() -> None:
    assert parse_coach('t=2.0:release the cube from the right gripper') == CoachEvent(
        2.0, 'release the cube from the right gripper'
    )
    assert parse_coach('t=3:') == CoachEvent(3.0, '')  # hand back to the model
    for bad, why in (('2.0:x', 'expected'), ('t=soon:x', 'not a time'), ('t=-1:x', '>= 0'), ('t=1', 'expected')):
        with pytest.raises(ValueError, match=why):
            parse_coach(bad)


def test_a_subtask_motion_is_the_experts_displacement_over_its_first_run() -> None:
    assert subtask_motion(EXPERT, LABELS, 'grasp', WEIGHTS) == pytest.approx([0.0, 0.0, -0.04 * 30])
    assert subtask_motion(EXPERT, LABELS, '[coach] Lift', WEIGHTS) == pytest.approx([0.0, 0.5, 0.0])
    assert subtask_motion(EXPERT, LABELS, 'open the drawer', WEIGHTS) is None


def test_the_arms_follow_from_the_first_tick_that_moves_far_enough_the_right_way() -> None:
    times = np.arange(20) * 0.1
    lift = subtask_motion(EXPERT, LABELS, 'lift', WEIGHTS)
    # still until 1.0 s, then joint 1 rises 0.05 per tick: 30 % of the 0.5 lift is reached at the 3rd tick after 1.0 s
    joints = np.array([[1.0, max(0.0, 0.05 * (k - 10)), 0.0] for k in range(20)])
    assert follow_time(times, joints, 0.5, lift, WEIGHTS) == pytest.approx(0.8)
    # the same rise with the gripper opening as much: 45 degrees off the lift, still followed
    opening = joints.copy()
    opening[:, 2] = opening[:, 1] / 30
    assert follow_time(times, opening, 0.5, lift, WEIGHTS) == pytest.approx(0.8)
    # moving the other way, or sideways, never follows
    assert follow_time(times, joints * [1, -1, 1], 0.5, lift, WEIGHTS) is None
    sideways = np.array([[1.0 + max(0.0, 0.05 * (k - 10)), 0.0, 0.0] for k in range(20)])
    assert follow_time(times, sideways, 0.5, lift, WEIGHTS) is None
    # ticks before any joint state (NaN) are skipped; the displacement counts from the first one
    late = joints.copy()
    late[:12] = np.nan
    assert follow_time(times, late, 0.5, lift, WEIGHTS) == pytest.approx(1.0)  # from tick 12 (0.10) to tick 15 (0.25)


def test_outcomes_compare_the_coached_subtask_with_the_models_own() -> None:
    times = np.arange(20) * 0.1
    joints = [np.array([1.0, max(0.0, 0.05 * (k - 10)), 0.0]) for k in range(20)]
    ticks = [(t, 'grasp' if t < 1.0 else '[coach] lift', '', q) for t, q in zip(times, joints, strict=True)]
    events = (CoachEvent(0.95, 'lift'), CoachEvent(1.5, ''), CoachEvent(1.0, 'open the drawer'))
    rows = coaching_outcomes(events, ticks, EXPERT, LABELS, WEIGHTS)
    assert rows[0] == {
        'at_s': 0.95,
        'coached': 'lift',
        'own': 'grasp',
        'coached_has_expert_motion': True,
        'coached_followed_s': pytest.approx(0.35),
        'own_has_expert_motion': True,
        'own_followed_s': None,  # the gripper never closed
    }
    assert len(rows) == 2 and rows[1]['coached_has_expert_motion'] is False  # the empty text is no event
    summary = summarise_coaching(rows)
    assert summary['coached'] == {'events': 1, 'followed': 1, 'follow_rate': 1.0, 'median_response_s': 0.35}
    assert summary['own'] == {'events': 2, 'followed': 0, 'follow_rate': 0.0, 'median_response_s': None}
    assert summary['events'] == 2 and summary['coached_equals_own'] == 0
