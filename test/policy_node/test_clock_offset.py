"""The NTP-style offset between the policy's and the robot's clocks (policy_node/clock_offset.py)."""

from __future__ import annotations

import pytest

from bimanual_vla.policy_node.clock_offset import SLEW_S_PER_S, ClockOffset, ClockSample


def exchange(clock: ClockOffset, t1: float, offset: float, out_s: float, back_s: float, hold_s: float = 0.0):
    """One probe at local t1 to a robot clock ``offset`` ahead, taking ``out_s`` there and ``back_s`` back."""
    probe_id = clock.probe(t1)
    t2 = t1 + out_s + offset
    t3 = t2 + hold_s
    return clock.answer(probe_id, t2, t3, t3 - offset + back_s)


def test_ntp_formulas() -> None:
    s = ClockSample(t1=10.0, t2=12.030, t3=12.031, t4=10.051)  # robot 2 s ahead, 30 ms out, 20 ms back
    assert s.round_trip_s == pytest.approx(0.050)
    assert s.offset_s == pytest.approx(2.005)  # wrong by half the asymmetry (10 ms / 2)


def test_symmetric_link_gives_the_offset_exactly_and_stamps_convert_both_ways() -> None:
    clock = ClockOffset(max_offset_s=0.05)
    exchange(clock, 100.0, offset=0.012, out_s=0.03, back_s=0.03, hold_s=0.001)
    assert clock.offset_s == pytest.approx(0.012)
    assert clock.to_local(50.012) == pytest.approx(50.0)
    assert clock.to_robot(50.0) == pytest.approx(50.012)
    assert clock.one_way_delay_s() == pytest.approx(0.03)
    assert clock.check() is None


def test_the_fastest_exchange_wins_over_queueing_delay() -> None:
    clock = ClockOffset(slew_s_per_s=1.0)
    exchange(clock, 1.0, offset=0.0, out_s=0.080, back_s=0.010)  # queued on the way out: reads +35 ms
    exchange(clock, 1.2, offset=0.0, out_s=0.010, back_s=0.010)
    exchange(clock, 1.4, offset=0.0, out_s=0.010, back_s=0.070)  # queued on the way back: reads -30 ms
    assert clock.estimate_s == pytest.approx(0.0, abs=1e-9)


def test_applied_correction_slews_after_the_first_estimate() -> None:
    clock = ClockOffset(max_offset_s=0.5)
    exchange(clock, 1.0, offset=0.010, out_s=0.01, back_s=0.01)
    assert clock.offset_s == pytest.approx(0.010)  # the first is taken as it is
    for i in range(17):  # the robot's clock steps 100 ms ahead; the window forgets the old samples
        exchange(clock, 1.2 + 0.2 * i, offset=0.110, out_s=0.01, back_s=0.01)
    elapsed = 0.2 * 16 + 0.2
    assert clock.estimate_s == pytest.approx(0.110)
    assert clock.offset_s == pytest.approx(min(0.110, 0.010 + SLEW_S_PER_S * elapsed), abs=1e-9)
    assert clock.offset_s < 0.110


def test_enable_check() -> None:
    local = ClockOffset(max_offset_s=0.05)
    assert local.check() is None  # one computer: no answer means one clock
    remote = ClockOffset(max_offset_s=0.05, required=True)
    assert 'not measured' in remote.check()
    exchange(remote, 5.0, offset=0.2, out_s=0.01, back_s=0.01)
    assert 'exceeds max_clock_offset_s (50 ms)' in remote.check() and '+200.0 ms' in remote.check()
    exchange(local, 5.0, offset=-0.2, out_s=0.01, back_s=0.01)
    assert 'exceeds' in local.check()  # a measured offset is checked on one computer too
    values = remote.values()
    assert values['clock_offset_ms'] == pytest.approx(200.0) and values['clock_check'] != 'ok'


@pytest.mark.parametrize('bad', [0.0, -0.1, 0.6, float('nan')])
def test_bound_is_hard(bad: float) -> None:
    with pytest.raises(ValueError, match=r'must be in \(0, 0.5\] s'):
        ClockOffset(max_offset_s=bad)


def test_lost_and_foreign_answers() -> None:
    clock = ClockOffset()
    clock.probe(1.0)
    clock.probe(1.2)
    assert clock.answer(99, 1.0, 1.0, 1.3) is None and clock.foreign == 1
    clock.probe(2.5)  # the first two were never answered within a second
    assert clock.lost == 2 and not clock.measured


def test_time_jump_back_drops_samples_keeps_correction() -> None:
    clock = ClockOffset()
    exchange(clock, 20.0, offset=0.02, out_s=0.01, back_s=0.01)
    exchange(clock, 0.5, offset=0.02, out_s=0.01, back_s=0.01)  # a sim reset: both clocks back to 0
    assert len(clock.samples) == 1 and clock.offset_s == pytest.approx(0.02)
