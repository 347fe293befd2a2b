"""Chunk alignment, the three joining strategies and the RTC guide, checked with numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bimanual_vla.policy_node.chunking import (
    Chunk,
    ChunkExecutor,
    LatencyEstimator,
    delay_steps,
    plan_guide,
    soft_mask,
)

DT = 0.02  # 50 Hz


def ramp(h: int, start: float, slope: float, n: int = 2) -> np.ndarray:
    """A chunk whose joint j at step i is start + slope * i + j (easy to check by hand)."""
    return start + slope * np.arange(h)[:, None] + np.arange(n)[None, :]


def test_chunk_sample_is_indexed_by_time_and_interpolates() -> None:
    chunk = Chunk(ramp(10, 0.0, 1.0), t0=100.0, dt=DT)
    assert chunk.sample(100.0).tolist() == [0.0, 1.0]
    assert chunk.sample(100.0 + 3 * DT).tolist() == pytest.approx([3.0, 4.0])
    assert chunk.sample(100.0 + 3.25 * DT).tolist() == pytest.approx([3.25, 4.25])
    # Before the first action: the first action; after the last: hold the last.
    assert chunk.sample(99.0).tolist() == [0.0, 1.0]
    assert chunk.sample(101.0).tolist() == [9.0, 10.0]
    assert chunk.t_end == pytest.approx(100.0 + 9 * DT)


def test_chunk_rejects_bad_shapes_and_times() -> None:
    with pytest.raises(ValueError, match='shape'):
        Chunk(np.zeros(5), t0=0.0, dt=DT)
    with pytest.raises(ValueError, match='dt'):
        Chunk(np.zeros((5, 2)), t0=0.0, dt=0.0)
    with pytest.raises(ValueError, match='t0'):
        Chunk(np.zeros((5, 2)), t0=math.nan, dt=DT)


def test_new_chunk_skips_actions_already_in_the_past() -> None:
    ex = ChunkExecutor('naive')
    ex.add(Chunk(ramp(50, 0.0, 0.0), t0=10.0, dt=DT), now=10.0)
    # Observation at t=10.10, result arrives at 10.16: 3 steps are already past.
    report = ex.add(Chunk(ramp(50, 5.0, 1.0), t0=10.10, dt=DT), now=10.16)
    assert report.accepted and report.reason == 'joined'
    assert report.start_index == pytest.approx(3.0)
    assert ex.step(10.16).action.tolist() == pytest.approx([8.0, 9.0])  # step 3, not step 0
    assert ex.step(10.18).action.tolist() == pytest.approx([9.0, 10.0])
    # The naive switch jumps from the old chunk (0, 1) to the new one's step 3.
    assert report.jump == pytest.approx(8.0)


def test_late_and_out_of_order_chunks_are_refused() -> None:
    ex = ChunkExecutor('rtc')
    ex.add(Chunk(ramp(10, 0.0, 0.0), t0=5.0, dt=DT), now=5.0)
    late = ex.add(Chunk(ramp(10, 9.0, 0.0), t0=5.0, dt=DT), now=5.0 + 10 * DT)
    assert not late.accepted and late.reason == 'late'
    older = ex.add(Chunk(ramp(10, 9.0, 0.0), t0=4.99, dt=DT), now=5.01)
    assert not older.accepted and older.reason == 'stale'
    assert ex.step(5.01).action.tolist() == [0.0, 1.0]


def test_non_finite_chunk_is_refused() -> None:
    ex = ChunkExecutor('naive')
    bad = ramp(10, 0.0, 0.0)
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        ex.add(Chunk(bad, t0=0.0, dt=DT), now=0.0)
    assert ex.current is None


def test_exhausted_chunk_holds_its_last_action() -> None:
    ex = ChunkExecutor('rtc')
    ex.add(Chunk(ramp(5, 0.0, 1.0), t0=0.0, dt=DT), now=0.0)
    inside = ex.step(4 * DT)
    assert not inside.exhausted
    after = ex.step(10 * DT)
    assert after.exhausted and after.action.tolist() == [4.0, 5.0]


def test_temporal_ensembling_weights_older_chunks_more() -> None:
    decay = 0.5
    ex = ChunkExecutor('ensemble', ensemble_decay=decay)
    ex.add(Chunk(np.zeros((20, 1)), t0=0.0, dt=DT), now=0.0)
    ex.add(Chunk(np.ones((20, 1)), t0=5 * DT, dt=DT), now=6 * DT)
    w0, w1 = 1.0, math.exp(-decay)
    expected = (w0 * 0.0 + w1 * 1.0) / (w0 + w1)
    got = ex.step(7 * DT)
    assert got.chunks_used == 2
    assert got.action[0] == pytest.approx(expected)
    # Once the first chunk ends (t > 19 dt) only the second one votes.
    late = ex.step(21 * DT)
    assert late.chunks_used == 1 and late.action[0] == pytest.approx(1.0)
    assert len(ex.chunks) == 1  # the finished chunk was dropped
    # Three overlapping chunks: weights 1, e^-k, e^-2k.
    ex.add(Chunk(np.full((20, 1), 4.0), t0=22 * DT, dt=DT), now=22 * DT)
    w = np.exp(-decay * np.arange(2))
    assert ex.step(23 * DT).action[0] == pytest.approx((w[0] * 1.0 + w[1] * 4.0) / w.sum())


def test_ensembling_jump_is_smaller_than_naive_for_the_same_chunks() -> None:
    first = Chunk(np.zeros((30, 1)), t0=0.0, dt=DT)
    second = Chunk(np.ones((30, 1)), t0=10 * DT, dt=DT)
    jumps = {}
    for strategy in ('naive', 'ensemble'):
        ex = ChunkExecutor(strategy, ensemble_decay=0.1)
        ex.add(first, now=0.0)
        jumps[strategy] = ex.add(second, now=12 * DT).jump
    assert jumps['naive'] == pytest.approx(1.0)
    assert jumps['ensemble'] == pytest.approx(math.exp(-0.1) / (1 + math.exp(-0.1)))


def test_unknown_strategy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match='naive, ensemble, rtc'):
        ChunkExecutor('smooth')  # type: ignore[arg-type]


def test_soft_mask_matches_the_paper_formula() -> None:
    w = soft_mask(3, 10)
    assert w[:3].tolist() == [1.0, 1.0, 1.0]
    for i in range(3, 10):
        c = (10 - i) / (10 - 3 + 1)
        assert w[i] == pytest.approx(c * (math.exp(c) - 1) / (math.e - 1))
    assert np.all(np.diff(w) <= 0) and 0 < w[-1] < 0.05
    assert soft_mask(12, 10).tolist() == [1.0] * 10  # frozen beyond the overlap: all frozen
    assert soft_mask(0, 0).shape == (0,)


def test_delay_steps_rounds_up_and_counts_observation_age() -> None:
    # Observation 30 ms old, 50 ms expected latency -> arrival at step 4.0: steps 0..4 are committed.
    assert delay_steps(t_obs=1.0, now=1.03, expected_latency_s=0.05, dt=DT) == 5
    # Arrival at 3.95 or 3.05: commands until then blend steps 3 and 4, so 0..4 are committed.
    assert delay_steps(t_obs=1.0, now=1.03, expected_latency_s=0.049, dt=DT) == 5
    assert delay_steps(t_obs=1.0, now=1.03, expected_latency_s=0.031, dt=DT) == 5
    assert delay_steps(t_obs=1.0, now=1.03, expected_latency_s=0.011, dt=DT) == 4
    assert delay_steps(t_obs=1.0, now=1.0, expected_latency_s=0.0, dt=DT) == 1


def test_plan_guide_commits_executing_actions_and_stops_at_its_end() -> None:
    ex = ChunkExecutor('rtc')
    ex.add(Chunk(ramp(50, 0.0, 1.0), t0=0.0, dt=DT), now=0.0)
    # Inference on an observation at step 20, started at step 21, 100 ms expected -> arrival at new step 6.
    plan = plan_guide(ex, t_obs=20 * DT, now=21 * DT, expected_latency_s=0.1, dt=DT, chunk_size=50)
    assert plan is not None and plan.frozen_steps == 7
    # The executing chunk ends at step 49 = new-chunk step 29: overlap of 30 steps.
    assert plan.actions.shape == (30, 2) and plan.weights.shape == (30,)
    np.testing.assert_allclose(plan.actions[:, 0], np.arange(20, 50))
    np.testing.assert_allclose(plan.actions[:, 1], np.arange(21, 51))
    np.testing.assert_allclose(plan.weights, soft_mask(7, 30))
    # A chunk shorter than the overlap caps the guide at its own size.
    short = plan_guide(ex, t_obs=20 * DT, now=21 * DT, expected_latency_s=0.1, dt=DT, chunk_size=8)
    assert short is not None and short.actions.shape == (8, 2) and short.frozen_steps == 7
    assert plan_guide(ChunkExecutor('rtc'), t_obs=0.0, now=0.0, expected_latency_s=0.1, dt=DT, chunk_size=50) is None


def test_plan_guide_samples_between_steps_when_observation_is_off_grid() -> None:
    ex = ChunkExecutor('rtc')
    ex.add(Chunk(ramp(20, 0.0, 1.0, n=1), t0=0.0, dt=DT), now=0.0)
    plan = plan_guide(ex, t_obs=2.5 * DT, now=2.5 * DT, expected_latency_s=0.0, dt=DT, chunk_size=50)
    assert plan is not None
    np.testing.assert_allclose(plan.actions[:3, 0], [2.5, 3.5, 4.5])
    assert plan.actions.shape[0] == 17  # steps at 2.5 .. 18.5 lie within the executing chunk


def test_latency_estimator_is_conservative() -> None:
    est = LatencyEstimator(window=3, margin=0.0)
    assert est.estimate_s is None
    for s in (0.10, 0.30, 0.20):
        est.add(s)
    assert est.estimate_s == pytest.approx(0.30)
    est.add(0.05)
    est.add(0.06)
    est.add(math.nan)  # ignored
    assert est.estimate_s == pytest.approx(0.20)
    assert LatencyEstimator(initial_s=0.1).estimate_s == pytest.approx(0.12)  # default 20 % margin


def test_latency_estimator_quantile_plans_for_the_typical_inference() -> None:
    est = LatencyEstimator(window=5, margin=0.1, quantile=0.5)
    for s in (0.08, 0.07, 0.30, 0.09, 0.08):  # one spike
        est.add(s)
    assert est.estimate_s == pytest.approx(0.088)  # median 0.08, plus 10 %
    est.quantile = 1.0
    assert est.estimate_s == pytest.approx(0.33)
    with pytest.raises(ValueError, match=r'quantile must lie in \[0, 1\]'):
        LatencyEstimator(quantile=1.5)


def test_rtc_switch_is_continuous_when_the_new_chunk_honours_the_guide() -> None:
    """If the model inpaints the frozen steps exactly, the switch has no jump even though later steps differ."""
    ex = ChunkExecutor('rtc')
    old = ramp(50, 0.0, 0.01, n=3)
    ex.add(Chunk(old, t0=0.0, dt=DT), now=0.0)
    t_obs, now, latency = 25 * DT, 25.5 * DT, 0.09
    plan = plan_guide(ex, t_obs=t_obs, now=now, expected_latency_s=latency, dt=DT, chunk_size=50)
    assert plan is not None
    new = ramp(50, 5.0, -0.02, n=3)  # a very different plan...
    k = plan.actions.shape[0]
    new[:k] = plan.weights[:, None] * plan.actions + (1 - plan.weights[:, None]) * new[:k]  # ...inpainted
    arrival = now + latency
    before = ex.step(arrival).action
    report = ex.add(Chunk(new, t0=t_obs, dt=DT), now=arrival)
    assert report.accepted and report.start_index <= plan.frozen_steps
    assert report.jump == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(ex.step(arrival).action, before)


def test_rtc_blends_the_guidance_residual_away_and_reports_it() -> None:
    """Soft guidance leaves a residual; the executor blends it with the soft mask so the switch is exact."""
    ex = ChunkExecutor('rtc')
    ex.add(Chunk(ramp(50, 0.0, 0.01, n=2), t0=0.0, dt=DT), now=0.0)
    plan = plan_guide(ex, t_obs=10 * DT, now=10 * DT, expected_latency_s=0.1, dt=DT, chunk_size=50)
    assert plan is not None and plan.frozen_steps == 6
    sampled = ramp(50, 0.3, 0.01, n=2)  # the model got within 0.2 of the committed actions everywhere
    sampled[:40] = plan.actions + 0.2
    report = ex.add(Chunk(sampled, t0=10 * DT, dt=DT), now=15 * DT, guide=plan)
    assert report.raw_jump == pytest.approx(0.2)
    assert report.jump == pytest.approx(0.0, abs=1e-12)
    held = ex.current.actions
    np.testing.assert_allclose(held[:6], plan.actions[:6])  # frozen: exactly the committed actions
    k = len(plan.weights)
    np.testing.assert_allclose(held[6:k], plan.actions[6:k] + 0.2 * (1 - plan.weights[6:k, None]))
    np.testing.assert_allclose(held[k:], sampled[k:])  # beyond the overlap: the model's plan untouched
    # Naive ignores any guide: the residual is the jump.
    naive = ChunkExecutor('naive')
    naive.add(Chunk(ramp(50, 0.0, 0.01, n=2), t0=0.0, dt=DT), now=0.0)
    assert naive.add(Chunk(sampled, t0=10 * DT, dt=DT), now=15 * DT, guide=plan).jump == pytest.approx(0.2)


def test_switch_waits_for_the_new_chunks_next_step_when_arriving_between_steps() -> None:
    ex = ChunkExecutor('naive')
    ex.add(Chunk(np.zeros((50, 1)), t0=0.0, dt=DT), now=0.0)
    report = ex.add(Chunk(np.ones((50, 1)), t0=10 * DT, dt=DT), now=12.4 * DT)
    assert report.start_index == pytest.approx(2.4)
    assert ex.step(12.4 * DT).action[0] == 0.0  # still the old chunk
    assert ex.step(12.9 * DT).action[0] == 0.0
    assert ex.step(13.0 * DT).action[0] == 1.0  # new chunk from its step 3
    assert len(ex.chunks) == 1
