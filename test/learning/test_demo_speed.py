"""The demonstration-speed report: exact speeds, shares of time, phases, padding and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.learning.demo_speed import describe, first_step_speeds, speed_report

RATE = 50.0


def chunks_from(plan: np.ndarray, horizon: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One sample per plan step, its chunk the next `horizon` commands, padded with the last one."""
    n = len(plan)
    idx = np.minimum(np.arange(n)[:, None] + np.arange(horizon)[None, :], n - 1)
    pad = (np.arange(n)[:, None] + np.arange(horizon)[None, :]) > n - 1
    return plan[idx], pad


def test_speeds_shares_and_phases_are_exact() -> None:
    # joint a: 1 rad/s throughout; joint b: still, then 10 steps at 5 rad/s (0.1 rad per 20 ms tick)
    n = 100
    a = np.arange(n) * (1.0 / RATE)
    b = np.zeros(n)
    b[40:51] = np.arange(11) * 0.1
    b[51:] = 1.0
    actions, pad = chunks_from(np.stack([a, b], axis=1))
    phases = np.where(np.arange(n) < 30, 0, 1)

    speeds = first_step_speeds(actions, pad, RATE)
    assert speeds[0] == pytest.approx([1.0, 0.0])
    assert speeds[45] == pytest.approx([1.0, 5.0])
    assert np.isnan(speeds[-1]).all()  # its second step is padding: no speed

    report = speed_report(actions, pad, RATE, ['a', 'b'], 2.0, phases=phases, phase_names=['still', 'moving'])
    assert report['samples'] == n - 1
    assert report['max_rad_s'] == pytest.approx(5.0)
    assert report['fraction_over'] == pytest.approx(10 / 99, abs=1e-5)
    assert report['joints_over'] == {'b': {'max_rad_s': 5.0, 'fraction_over': pytest.approx(10 / 99, abs=1e-5)}}
    assert report['phases_over'] == {'moving': 1.0}
    line = describe(report)
    assert '10.1% of their time' in line and 'up to 5 rad/s on b' in line and "during 'moving'" in line

    within = speed_report(actions, pad, RATE, ['a', 'b'], 6.0)
    assert within['joints_over'] == {} and within['fraction_over'] == 0.0
    assert describe(within).startswith("demonstrations stay within the policy node's 6 rad/s (fastest 5 rad/s)")


def test_data_at_the_limit_is_within_it_and_just_over_is_not() -> None:
    # A speed-limited expert moves at exactly the limit; stored as float32 (as the decoded data is),
    # some steps come out a few ppm above it. Those are at the limit, 0.2 % more is over it.
    start = np.float64(1.2345678)
    at_limit = (start + np.arange(200) * (2.0 / RATE)).astype(np.float32)
    raw = np.abs(np.diff(at_limit.astype(np.float64))) * RATE
    assert raw.max() > 2.0  # the rounding this test is about
    actions, pad = chunks_from(at_limit[:, None])
    report = speed_report(actions, pad, RATE, ['a'], 2.0)
    assert report['joints_over'] == {} and report['fraction_over'] == 0.0
    assert describe(report).startswith("demonstrations stay within the policy node's 2 rad/s")

    faster = (start + np.arange(200) * (2.004 / RATE)).astype(np.float32)
    actions, pad = chunks_from(faster[:, None])
    over = speed_report(actions, pad, RATE, ['a'], 2.0)
    assert over['fraction_over'] == pytest.approx(1.0)
    assert over['joints_over']['a']['max_rad_s'] == pytest.approx(2.004, abs=1e-3)


def test_bad_input_is_refused_by_name() -> None:
    actions, pad = chunks_from(np.zeros((10, 2)))
    with pytest.raises(ValueError, match='steps >= 2'):
        first_step_speeds(actions[:, :1], pad[:, :1], RATE)
    with pytest.raises(ValueError, match='rate_hz'):
        first_step_speeds(actions, pad, 0.0)
    with pytest.raises(ValueError, match='limit_rad_s'):
        speed_report(actions, pad, RATE, ['a', 'b'], 0.0)
    with pytest.raises(ValueError, match='2 joints in the actions, 3 names'):
        speed_report(actions, pad, RATE, ['a', 'b', 'c'], 2.0)
