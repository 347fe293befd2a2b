"""The soak bench's fault schedule, camera fault hook, goal-write checks and report arithmetic."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest

from bimanual_vla.drivers.servo.emulator import ServoBusEmulator
from bimanual_vla.sim.fault_injection import (
    FAULT_KINDS,
    CameraFaults,
    GoalChecker,
    GoalWrite,
    fault_sequence,
    gaps_outside,
    stats,
    summarise_segments,
    tap_goal_writes,
)

IDS = {'left': [1, 2, 3], 'right': [1, 2, 3]}
CAMERAS = ['top', 'left_wrist']


def take(n: int, seed: int = 0, kinds=FAULT_KINDS) -> list:
    return list(itertools.islice(fault_sequence(seed, kinds, IDS, CAMERAS, (10.0, 20.0)), n))


def test_schedule_is_a_seeded_round_robin() -> None:
    faults = take(3 * len(FAULT_KINDS))
    assert faults == take(3 * len(FAULT_KINDS))  # same seed, same faults
    assert faults != take(3 * len(FAULT_KINDS), seed=1)
    for r in range(3):  # every kind exactly once per round
        assert sorted(f.kind for f in faults[r * len(FAULT_KINDS) : (r + 1) * len(FAULT_KINDS)]) == sorted(FAULT_KINDS)
    for f in faults:
        assert 10.0 <= f.gap_s <= 20.0
        assert f.servo_id in IDS[f.arm] and f.camera in CAMERAS


def test_schedule_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match='unknown'):
        take(1, kinds=['servo_missing', 'meteor'])


def image(data: bytes, stamp: int) -> SimpleNamespace:
    return SimpleNamespace(data=data, header=SimpleNamespace(stamp=stamp))


def test_camera_faults() -> None:
    faults = CameraFaults()
    assert faults.apply('top', image(b'a', 1)).data == b'a'
    faults.set('top', 'gone')
    assert faults.apply('top', image(b'b', 2)) is None
    assert faults.apply('left_wrist', image(b'b', 2)).data == b'b'  # other cameras unaffected
    faults.set('top', 'frozen')
    faults.apply('top', image(b'c', 3))
    frozen = faults.apply('top', image(b'd', 4))
    assert (frozen.data, frozen.header.stamp) == (b'c', 4)  # the old image, a new stamp
    faults.set('top', 'stale')
    faults.apply('top', image(b'e', 5))
    stale = faults.apply('top', image(b'f', 6))
    assert (stale.data, stale.header.stamp) == (b'f', 5)  # a new image, the old stamp
    faults.clear()
    assert faults.apply('top', image(b'g', 7)).header.stamp == 7 and faults.active() == {}
    with pytest.raises(ValueError):
        faults.set('top', 'melted')


def checker(**kw) -> GoalChecker:
    return GoalChecker({('left', 1): (1000, 3000)}, {'left': 2.0}, 0.001, jitter_s=0.0, margin_ticks=2, **kw)


def test_goal_checker_limits_and_velocity() -> None:
    c = checker()
    c.add(GoalWrite(0.00, 'left', 1, 2000, 2000))
    c.add(GoalWrite(0.01, 'left', 1, 2020, 2000))  # 0.02 rad in 10 ms = 2 rad/s: allowed
    assert (c.too_fast, c.out_of_limits) == (0, 0)
    c.add(GoalWrite(0.02, 'left', 1, 2100, 2010), note='servo_missing')  # 0.08 rad in 10 ms: too fast
    assert c.too_fast == 1 and c.examples['too_fast'][0]['fault'] == 'servo_missing'
    c.add(GoalWrite(0.03, 'left', 1, 3500, 3499))  # a take-over at the present position: no motion ...
    assert c.too_fast == 1 and c.out_of_limits == 1  # ... but still beyond the limit
    assert c.last_change['left'] == 0.03
    assert math.isclose(c.hold_latency('left', 0.025), 0.005) and c.hold_latency('left', 0.5) == 0.0


def test_goal_checker_largest_step_counts_goals_that_track_the_servo_closely() -> None:
    """A goal a few ticks ahead of a servo that follows it is motion: it sets the largest step (only a
    change that would be too fast is exempted as a take-over when it lands where the servo is)."""
    c = checker()
    c.add(GoalWrite(0.00, 'left', 1, 2000, 2000))
    c.add(GoalWrite(0.02, 'left', 1, 2030, 2028))  # 0.03 rad in 20 ms (1.5 rad/s), the servo 2 ticks behind
    assert c.too_fast == 0 and c.max_step_rad == pytest.approx(0.03)
    assert c.examples['largest_step'][0]['step_rad'] == pytest.approx(0.03)
    c.add(GoalWrite(0.03, 'left', 1, 2500, 2500))  # 0.47 rad in 10 ms, where the servo is: a take-over
    assert c.too_fast == 0 and c.max_step_rad == pytest.approx(0.03)


def test_goal_checker_counts_repeats_as_no_change() -> None:
    c = checker()
    c.add(GoalWrite(0.0, 'left', 1, 2000, 2000))
    c.add(GoalWrite(1.0, 'left', 1, 2000, 2000))
    assert c.writes == 2 and c.last_change == {} and not c.moving(10.0, now=1.0)


def test_tap_sees_goal_writes_before_the_servo_clamps_them() -> None:
    emulator = ServoBusEmulator('feetech', [1, 2])
    seen: list[GoalWrite] = []
    tap_goal_writes(emulator, 'left', seen.append)
    emulator.servo(1).write_register('max_position_limit', 3000)
    emulator.servo(1).write_register('goal_position', 3500)
    emulator.servo(2).write_register('torque_enable', 1)
    assert [(w.arm, w.servo_id, w.ticks) for w in seen] == [('left', 1, 3500)]
    assert emulator.servo(1).goal_position <= 3000  # the servo itself still limits it


def test_stats_and_gaps() -> None:
    assert stats([]) == {'n': 0, 'p50': None, 'p99': None, 'max': None}
    assert stats([3.0, 1.0, 2.0]) == {'n': 3, 'p50': 2.0, 'p99': 3.0, 'max': 3.0}
    times = [0.0, 0.1, 0.2, 2.0, 2.1, 5.0, 5.1]
    assert gaps_outside(times, 0.5, []) == [(0.2, 2.0), (2.1, 5.0)]
    assert gaps_outside(times, 0.5, [(1.0, 1.5)]) == [(2.1, 5.0)]  # a fault window inside the first gap


def test_summarise_segments() -> None:
    segment = {
        'minutes': 30.0,
        'faults': {'port_vanish': {'injected': 2, 'recovered': 2, 'recovery_s': [1.0, 3.0]}},
        'estop': {'hold_s': [0.01], 'by_qos': {'reliable_volatile': {'published': 1, 'reached_drivers': 0}}},
        'processes': {'sim': {'rss_mb': {'growth_mb_per_hour': 4.0}, 'minutes': 30.0}},
        'goal_writes': {'writes': 10, 'out_of_limits': 0, 'too_fast': 1},
        'recording': {'gaps_outside_faults': [[1.0, 2.0]], 'dropped': '0'},
        'problems': ['e-stop from reliable_volatile did not reach the drivers'],
    }
    faster = {'sim': {'rss_mb': {'growth_mb_per_hour': 8.0, 'steady_growth_mb_per_hour': 2.5}, 'minutes': 30.0}}
    short = {'sim': {'rss_mb': {'growth_mb_per_hour': 99.0}, 'minutes': 3.0}}  # too short to judge
    total = summarise_segments(
        [segment, {**segment, 'processes': faster}, {**segment, 'minutes': 0.0, 'processes': short}]
    )
    assert total['robot_hours'] == 1.0 and total['segments'] == 3
    assert total['faults']['port_vanish'] == {
        'injected': 6,
        'recovered': 6,
        'recovery_s': {'p50': 1.0, 'p99': 3.0, 'max': 3.0},
    }
    assert total['estop_by_qos']['reliable_volatile'] == {'published': 3, 'reached_drivers': 0}
    assert total['worst_rss_growth_mb_per_hour'] == {'sim': 8.0}
    assert total['worst_steady_rss_growth_mb_per_hour'] == {'sim': 2.5}  # segments without the fit are skipped
    assert total['goals_too_fast'] == 3 and total['bag_gaps_outside_faults'] == 3
    assert total['faults_injected'] == 6 and total['faults_unrecovered'] == 0 and total['fatal'] == []
    assert total['problems'][1].startswith('segment 1:')
