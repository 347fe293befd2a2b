"""Input histories and arrival delays behind `chunk_start: synchronized` (policy_node/input_sync.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bimanual_vla.policy_node.input_sync import ArrivalDelay, JointHistory, StampedHistory


def test_arrival_delay_is_a_high_percentile_of_arrival_minus_stamp_and_never_negative() -> None:
    delay = ArrivalDelay(window=10, percentile=90)
    assert delay.estimate_s() is None
    for k in range(10):
        delay.add(arrival_s=k + 0.02 + 0.002 * k, stamp_s=k)  # 20..38 ms late
    assert delay.estimate_s() == pytest.approx(np.percentile(0.02 + 0.002 * np.arange(10), 90))
    assert delay.median_s() == pytest.approx(0.029)
    delay.add(arrival_s=5.0, stamp_s=5.01)  # a stamp ahead of the receiver's clock
    delay.add(arrival_s=float('nan'), stamp_s=1.0)
    assert len(delay) == 10 and min(delay._delays) == 0.0
    with pytest.raises(ValueError, match='percentile'):
        ArrivalDelay(percentile=120)


def test_stamped_history_returns_the_latest_stamped_at_or_before_t_even_out_of_order() -> None:
    history: StampedHistory[str] = StampedHistory(maxlen=4)
    assert history.at(1.0) is None
    for stamp, item in [(0.0, 'a'), (0.2, 'c'), (0.1, 'b'), (0.3, 'd')]:
        history.add(stamp, item)
    assert history.at(0.15) == (0.1, 'b')
    assert history.at(0.2) == (0.2, 'c')
    assert history.at(10.0) == (0.3, 'd')
    assert history.at(-0.1) is None
    history.add(0.4, 'e')  # maxlen 4: 'a' goes
    assert history.at(0.05) is None
    history.drop_after(0.2)
    assert history.at(math.inf) == (0.2, 'c') and len(history) == 2


def test_joint_history_reads_every_joint_at_t_from_per_arm_messages() -> None:
    history = JointHistory(n_joints=4, maxlen=100)
    for k in range(10):  # two arms, each its own message, 10 ms apart; values encode their stamp
        t = 0.01 * k
        history.add(t, np.array([0, 1]), np.array([t, -t]))
        history.add(t + 0.001, np.array([2, 3]), np.array([10 + t, -10 - t]))
    pos, stamps = history.at(0.0505)
    np.testing.assert_allclose(pos, [0.05, -0.05, 10.04, -10.04])
    np.testing.assert_allclose(stamps, [0.05, 0.05, 0.041, 0.041])
    pos, stamps = history.at(0.0005)  # the second arm has nothing that old
    assert pos[0] == 0.0 and np.isnan(pos[2]) and np.isneginf(stamps[3])
    history.drop_after(0.02)
    pos, _ = history.at(1.0)
    np.testing.assert_allclose(pos, [0.02, -0.02, 10.01, -10.01])
