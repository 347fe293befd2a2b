"""The trajectory player by value: interpolation, start, splice, run-out, stop, refusals, time jumps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from bimanual_vla.drivers.servo.trajectory import MAX_POINTS, Trajectory, TrajectoryPlayer, TrajectoryRejected

NAMES = ['left_a', 'left_b']


def traj(start: float, points: list[tuple[float, list[float]]], names: list[str] | None = None) -> Trajectory:
    return Trajectory(
        joint_names=tuple(NAMES if names is None else names),
        start=start,
        times=tuple(t for t, _ in points),
        positions=tuple(tuple(p) for _, p in points),
    )


def goal(player: TrajectoryPlayer, now: float) -> list[float] | None:
    sample = player.sample(now)
    return None if sample is None else sample.positions.tolist()


def test_interpolates_linearly_between_points_at_any_time() -> None:
    p = TrajectoryPlayer(NAMES)
    assert p.submit(traj(10.0, [(0.0, [0.0, 1.0]), (0.02, [0.2, 0.8]), (0.04, [0.2, 0.0])]), 10.0, [0.0, 1.0]) == (
        'started'
    )
    assert goal(p, 10.0) == pytest.approx([0.0, 1.0])
    assert goal(p, 10.005) == pytest.approx([0.05, 0.95])  # a quarter of the way to the second point
    assert goal(p, 10.02) == pytest.approx([0.2, 0.8])
    assert goal(p, 10.03) == pytest.approx([0.2, 0.4])
    assert p.state(10.03) == 'playing'


def test_runs_out_holds_the_last_point_and_says_so_once() -> None:
    p = TrajectoryPlayer(NAMES)
    p.submit(traj(10.0, [(0.0, [0.0, 0.0]), (0.1, [0.5, -0.5])]), 10.0, [0.0, 0.0])
    first = p.sample(10.1)
    assert first is not None and first.finished and first.state == 'holding'
    assert first.positions.tolist() == [0.5, -0.5]
    later = p.sample(12.0)
    assert later is not None and not later.finished and later.positions.tolist() == [0.5, -0.5]
    assert p.counters['finished'] == 1 and p.state() == 'holding'


def test_waits_for_a_future_start_and_a_zero_stamp_means_now() -> None:
    p = TrajectoryPlayer(NAMES)
    p.submit(traj(11.0, [(0.0, [0.3, 0.3]), (0.1, [0.4, 0.4])]), 10.0, [0.0, 0.0])
    assert p.sample(10.5) is None and p.state(10.5) == 'waiting'  # the arm keeps doing what it did
    assert goal(p, 11.0) == pytest.approx([0.3, 0.3])  # a point exactly at the splice is taken as it is
    q = TrajectoryPlayer(NAMES)
    q.submit(traj(0.0, [(0.1, [1.0, 1.0])]), 20.0, [0.0, 0.0])  # stamp 0: start now, from the driver's goal
    assert goal(q, 20.05) == pytest.approx([0.5, 0.5])
    assert goal(q, 20.1) == pytest.approx([1.0, 1.0])


def test_splice_takes_over_at_now_from_where_the_old_one_is_without_a_jump() -> None:
    p = TrajectoryPlayer(NAMES)
    p.submit(traj(10.0, [(0.0, [0.0, 0.0]), (1.0, [1.0, 1.0])]), 10.0, [0.0, 0.0])  # 1 rad/s ramp
    assert goal(p, 10.5) == pytest.approx([0.5, 0.5])
    # Received at 10.505; stamped 10.48 (its first points are past); disagrees with the old one by 0.1 rad.
    new = traj(10.48, [(0.0, [0.58, 0.58]), (0.04, [0.62, 0.62]), (0.08, [0.66, 0.66])])
    assert p.submit(new, 10.505, [0.0, 0.0]) == 'spliced'
    # At the splice time the goal is where the old trajectory was: continuous.
    assert goal(p, 10.505) == pytest.approx([0.505, 0.505])
    # Then a straight line to the new one's first point after now (10.52), then the new points.
    assert goal(p, 10.5125) == pytest.approx([0.505 + 0.5 * (0.62 - 0.505)] * 2)
    assert goal(p, 10.52) == pytest.approx([0.62, 0.62])
    assert goal(p, 10.54) == pytest.approx([0.64, 0.64])
    assert p.counters['spliced'] == 1


def test_a_future_splice_lets_the_old_trajectory_play_until_the_new_start() -> None:
    p = TrajectoryPlayer(NAMES)
    p.submit(traj(10.0, [(0.0, [0.0, 0.0]), (1.0, [1.0, 1.0])]), 10.0, [0.0, 0.0])
    p.submit(traj(10.6, [(0.1, [0.0, 0.0])]), 10.2, [0.0, 0.0])
    assert goal(p, 10.4) == pytest.approx([0.4, 0.4])  # still the old one
    assert goal(p, 10.6) == pytest.approx([0.6, 0.6])  # the splice: the old value
    assert goal(p, 10.65) == pytest.approx([0.3, 0.3])  # half way to the new point
    assert goal(p, 10.7) == pytest.approx([0.0, 0.0])


def test_unnamed_joints_keep_their_value_at_the_splice() -> None:
    p = TrajectoryPlayer(NAMES)
    p.submit(traj(10.0, [(0.1, [0.4])], names=['left_b']), 10.0, [0.25, None])
    assert goal(p, 10.05) == pytest.approx([0.25, math.nan], nan_ok=True)  # b's goal unknown: not commanded
    q = TrajectoryPlayer(NAMES)
    q.submit(traj(10.0, [(0.1, [0.4])], names=['left_b']), 10.0, [0.25, 0.0])
    assert goal(q, 10.05) == pytest.approx([0.25, 0.2])


def test_an_empty_trajectory_stops() -> None:
    p = TrajectoryPlayer(NAMES)
    p.submit(traj(10.0, [(0.0, [0.0, 0.0]), (1.0, [1.0, 1.0])]), 10.0, [0.0, 0.0])
    assert p.submit(traj(0.0, [], names=[]), 10.2, [0.2, 0.2]) == 'stop'
    assert not p.active and p.sample(10.3) is None and p.counters['stops'] == 1


@pytest.mark.parametrize(
    ('bad', 'reason'),
    [
        (traj(10.0, [(0.0, [0.0, 0.0])], names=['left_a', 'right_b']), 'unknown_joint'),
        (traj(10.0, [(0.0, [0.0, 0.0])], names=['left_a', 'left_a']), 'duplicate_joint'),
        (traj(10.0, [(0.0, [0.0])]), 'length_mismatch'),
        (traj(10.0, [(0.0, [0.0, 0.0]), (0.1, [math.nan, 0.0])]), 'not_finite'),
        (traj(10.0, [(0.0, [0.0, 0.0]), (0.1, [math.inf, 0.0])]), 'not_finite'),
        (traj(10.0, [(0.0, [0.0, 0.0]), (0.1, [0.1, 0.0]), (0.1, [0.2, 0.0])]), 'times_not_increasing'),
        (traj(10.0, [(0.2, [0.0, 0.0]), (0.1, [0.1, 0.0])]), 'times_not_increasing'),
        (traj(10.0, [(-0.1, [0.0, 0.0])]), 'bad_time'),
        (traj(math.nan, [(0.0, [0.0, 0.0])]), 'bad_start'),
        (traj(9.0, [(0.0, [0.0, 0.0]), (0.5, [0.1, 0.0])]), 'ended'),
        (traj(10.0, [(0.0, [0.0, 0.0])], names=[]), 'empty'),
    ],
)
def test_bad_trajectories_are_refused_counted_and_change_nothing(bad: Trajectory, reason: str) -> None:
    p = TrajectoryPlayer(NAMES)
    p.submit(traj(10.0, [(0.0, [0.0, 0.0]), (1.0, [1.0, 1.0])]), 10.0, [0.0, 0.0])
    with pytest.raises(TrajectoryRejected) as info:
        p.submit(bad, 10.0, [0.0, 0.0])
    assert info.value.reason == reason
    assert p.counters['rejected'] == 1 and p.counters[f'rejected_{reason}'] == 1
    assert goal(p, 10.5) == pytest.approx([0.5, 0.5])  # the old one plays on


def test_too_many_points_are_refused() -> None:
    n = MAX_POINTS + 1
    big = Trajectory(tuple(NAMES), 10.0, tuple(i * 0.01 for i in range(n)), ((0.0, 0.0),) * n)
    with pytest.raises(TrajectoryRejected) as info:
        TrajectoryPlayer(NAMES).submit(big, 10.0, [0.0, 0.0])
    assert info.value.reason == 'too_many_points'


def test_clock_going_back_drops_the_trajectory() -> None:
    logged: list[tuple[str, str]] = []
    p = TrajectoryPlayer(NAMES, log=lambda level, msg: logged.append((level, msg)))
    p.submit(traj(10.0, [(0.0, [0.0, 0.0]), (1.0, [1.0, 1.0])]), 10.0, [0.0, 0.0])
    assert goal(p, 10.5) is not None
    assert p.sample(0.1) is None and not p.active  # a sim reset
    assert p.counters['time_jumps'] == 1 and logged and 'went back' in logged[0][1]


def test_old_points_are_pruned_while_playing() -> None:
    p = TrajectoryPlayer(NAMES)
    p.submit(traj(10.0, [(i * 0.02, [i * 0.01, 0.0]) for i in range(100)]), 10.0, [0.0, 0.0])
    for k in range(50):
        p.sample(10.0 + k * 0.02 + 0.001)
    assert len(p._times) <= 51 and goal(p, 11.0) == pytest.approx([0.5, 0.0])


def test_from_message_reads_a_joint_trajectory() -> None:
    point = SimpleNamespace(positions=[0.1, 0.2], time_from_start=SimpleNamespace(sec=1, nanosec=500_000_000))
    msg = SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=7, nanosec=250_000_000)), joint_names=NAMES, points=[point]
    )
    t = Trajectory.from_message(msg)
    assert t == Trajectory(tuple(NAMES), 7.25, (1.5,), ((0.1, 0.2),))
    assert np.isclose(t.start + t.times[0], 8.75)
