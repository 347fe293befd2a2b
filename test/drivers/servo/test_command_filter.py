"""CommandFilter and VelocityEstimator: the safety rules between joint commands and servo goals."""

from __future__ import annotations

import math

import pytest

from bimanual_vla.drivers.servo.command_filter import CommandFilter, CommandRejected, JointLimit, VelocityEstimator

NAMES = ['left_a', 'left_b']


def make(step: float = 0.1, timeout: float = 0.5, velocity: float = 1000.0, tick: float = 0.01) -> CommandFilter:
    f = CommandFilter(
        [JointLimit('left_a', -1.0, 1.0), JointLimit('left_b', -0.5, 2.0)],
        max_step_rad=step,
        command_timeout_s=timeout,
        max_velocity_rad_s=velocity,
        tick_period_s=tick,
    )
    f.reset_to([0.0, 0.0])
    return f


def test_no_goal_before_first_command() -> None:
    f = make()
    assert f.tick(0.0) is None
    assert f.state == 'waiting_for_command'


def test_ramps_by_max_step_toward_target() -> None:
    f = make(step=0.1)
    f.submit(NAMES, [0.25, -0.05], now=0.0)
    assert f.tick(0.01) == pytest.approx({0: 0.1, 1: -0.05})
    assert f.tick(0.02) == pytest.approx({0: 0.2})  # only goals that change are written
    assert f.tick(0.03) == pytest.approx({0: 0.25})
    assert f.tick(0.04) is None
    assert f.counters['step_limited'] == 2


def test_clamps_to_joint_limits_and_reports() -> None:
    f = make(step=10.0)
    notes = f.submit(NAMES, [5.0, -3.0], now=0.0)
    assert f.tick(0.01) == pytest.approx({0: 1.0, 1: -0.5})
    assert len(notes) == 2 and 'left_a' in notes[0] and 'clamped' in notes[0]
    assert f.counters['clamped_to_limits'] == 2


@pytest.mark.parametrize(
    ('names', 'positions', 'reason'),
    [
        (['left_a', 'left_b'], [math.nan, 0.0], 'not_finite'),
        (['left_a'], [math.inf], 'not_finite'),
        (['left_a', 'right_a'], [0.1, 0.1], 'unknown_joint'),
        (['a'], [0.1], 'unknown_joint'),
        (['left_a', 'left_a'], [0.1, 0.2], 'duplicate_joint'),
        (['left_a', 'left_b'], [0.1], 'length_mismatch'),
        ([], [], 'empty'),
    ],
)
def test_bad_commands_rejected_whole_and_counted(names, positions, reason) -> None:
    f = make(step=10.0)
    f.submit(NAMES, [0.3, 0.3], now=0.0)
    f.tick(0.01)
    with pytest.raises(CommandRejected) as info:
        f.submit(names, positions, now=0.02)
    assert info.value.reason == reason
    assert f.counters[f'rejected_{reason}'] == 1 and f.counters['rejected'] == 1
    # Nothing of the bad command was applied: the old target stands.
    assert f.target == pytest.approx([0.3, 0.3])


def test_partial_command_keeps_other_targets() -> None:
    f = make(step=10.0)
    f.submit(NAMES, [0.3, 0.4], now=0.0)
    f.submit(['left_b'], [0.1], now=0.01)
    assert f.tick(0.02) == pytest.approx({0: 0.3, 1: 0.1})


def test_watchdog_holds_last_goal_then_resumes() -> None:
    f = make(step=0.1, timeout=0.5)
    f.submit(NAMES, [1.0, 0.0], now=0.0)
    assert f.tick(0.1) == pytest.approx({0: 0.1})
    assert f.tick(0.7) is None  # 0.7 s without a command: hold
    assert f.state == 'watchdog_hold' and f.counters['watchdog_trips'] == 1
    assert f.target == pytest.approx([0.1, 0.0])
    assert f.tick(0.8) is None and f.counters['watchdog_trips'] == 1
    f.submit(NAMES, [0.3, 0.0], now=0.9)
    assert f.state == 'following'
    assert f.tick(0.91) == pytest.approx({0: 0.2})


def test_estop_freezes_and_refuses_until_released() -> None:
    f = make(step=0.1)
    f.submit(NAMES, [1.0, 0.0], now=0.0)
    f.tick(0.01)
    f.set_estop(True)
    assert f.tick(0.02) is None
    with pytest.raises(CommandRejected) as info:
        f.submit(NAMES, [0.5, 0.5], now=0.03)
    assert info.value.reason == 'estop'
    f.set_estop(False)
    # Released: still no motion toward the pre-e-stop target until a new command.
    assert f.tick(0.04) is None
    assert f.goal == pytest.approx([0.1, 0.0])
    f.submit(NAMES, [0.0, 0.0], now=0.05)
    assert f.tick(0.06) == pytest.approx({0: 0.0})


def test_torque_off_refuses_commands() -> None:
    f = make()
    f.set_enabled(False)
    with pytest.raises(CommandRejected) as info:
        f.submit(NAMES, [0.1, 0.1], now=0.0)
    assert info.value.reason == 'torque_off'
    assert f.state == 'torque_off'


def test_unknown_goal_never_jumps() -> None:
    f = make(step=10.0)
    f.reset_to([0.0, None])
    f.submit(NAMES, [0.5, 0.5], now=0.0)
    assert f.tick(0.01) == pytest.approx({0: 0.5})  # joint b waits for a reading
    f.set_goal(1, 0.2)
    f.submit(NAMES, [0.5, 0.5], now=0.02)
    assert f.tick(0.03) == pytest.approx({1: 0.5})


def test_ticks_close_together_move_at_most_max_velocity_times_the_gap() -> None:
    # 0.05 rad at the nominal 100 Hz is 5 rad/s; after an I/O overrun ticks may come 1 ms apart.
    f = make(step=0.05, velocity=5.0, tick=0.01)
    f.submit(NAMES, [1.0, 0.0], now=0.0)
    assert f.tick(0.01) == pytest.approx({0: 0.05})  # first tick: the nominal period
    previous = 0.05
    for k in range(1, 11):
        goals = f.tick(0.01 + k * 0.001)
        assert goals is not None
        assert goals[0] - previous == pytest.approx(0.005)  # 5 rad/s x 1 ms, not a whole max step
        previous = goals[0]
    assert previous == pytest.approx(0.1)  # 20 ms: 0.1 rad, 5 rad/s, where ticks 1 ms apart gave 0.55 rad
    assert f.counters['velocity_limited'] == 10 and f.counters['step_limited'] == 11


def test_nominal_ticks_still_move_max_step_and_a_long_gap_is_capped_by_it() -> None:
    f = make(step=0.05, timeout=2.0, velocity=5.0, tick=0.01)
    f.submit(NAMES, [1.0, 0.0], now=0.0)
    goals = [f.tick(t / 100)[0] for t in range(1, 6)]
    assert goals == pytest.approx([0.05, 0.10, 0.15, 0.20, 0.25])
    assert f.tick(1.05) == pytest.approx({0: 0.30})  # 1 s since the last tick: still one max step


def test_first_tick_after_a_hold_uses_the_nominal_period() -> None:
    f = make(step=0.05, timeout=2.0, velocity=2.0, tick=0.01)  # 2 rad/s: 0.02 rad a nominal tick
    f.submit(NAMES, [1.0, 0.0], now=0.0)
    assert f.tick(0.5) == pytest.approx({0: 0.02})  # no tick before: nominal, not 0.5 s worth
    assert f.tick(0.51) == pytest.approx({0: 0.04})
    f.set_estop(True)
    f.set_estop(False)
    f.submit(NAMES, [1.0, 0.0], now=0.51)
    assert f.tick(0.51) == pytest.approx({0: 0.06})  # same instant as the last tick, but after a hold
    f.reset_to([0.0, 0.0])
    f.submit(NAMES, [-1.0, 0.0], now=9.0)
    assert f.tick(9.5) == pytest.approx({0: -0.02})
    assert f.tick(9.5) is None  # no time since the last tick: no motion


def test_velocity_estimate_follows_ramp_and_resets_on_gap() -> None:
    v = VelocityEstimator(1, smoothing=0.0)
    assert v.update([0.0], 0.0) == [0.0]
    assert v.update([0.1], 0.1) == pytest.approx([1.0])
    assert v.update([None], 0.2) == [0.0]
    assert v.update([0.5], 0.3) == [0.0]
    assert v.update([0.4], 0.4) == pytest.approx([-1.0])
