"""The arm_driver node over real Fast DDS and a real pty with the servo-bus emulator behind it.

Each test writes a rig YAML whose port is a symlink to the emulator's pty (so a test
can pull the port away and bring it back), starts the node in-process, and talks to
it only through ROS topics and services; assertions read the emulated servos'
registers, the bytes the driver actually wrote.
"""

from __future__ import annotations

import math
import os

import pytest
import yaml
from helpers.arm_driver import IDS, QUALIFIED, ArmHarness, K, ticks

pytestmark = pytest.mark.ros


@pytest.fixture
def harness(tmp_path, ros_context, spin):
    made: list[ArmHarness] = []

    def make(**kwargs) -> ArmHarness:
        h = ArmHarness(tmp_path, ros_context, spin, **kwargs)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.close()


# ------------------------------------------------------------------------------- following


@pytest.mark.slow
def test_command_moves_servos_clamps_rejects_and_torque(harness) -> None:
    h = harness(params={'max_step_rad': 0.2})
    # At start the driver holds the present pose: goals = present, torque on, nothing moved.
    assert all(h.servo(i).torque_enabled for i in IDS)
    assert [h.servo(i).goal_position for i in IDS] == [2048] * 6
    assert h.latest() == pytest.approx(dict.fromkeys(QUALIFIED, 0.0))
    assert list(h.states[-1].name) == QUALIFIED and len(h.states[-1].velocity) == 6

    # A command moves the emulated servos (reversed joint included) and shows up in joint_states.
    target = {'left_shoulder_pan': 0.3, 'left_wrist_flex': 0.4}
    assert h.command_until(
        list(target),
        list(target.values()),
        lambda: h.servo(1).present_position == ticks(0.3) and h.servo(4).present_position == ticks(0.4, -1),
    )
    assert h.servo(1).goal_position == ticks(0.3) == 2244
    assert h.servo(4).goal_position == ticks(0.4, -1) == 1787
    assert h.servo(2).goal_position == 2048  # joints not in the command stay put
    # joint_states report the new pose (both joints in the same message).
    assert h.spin(
        lambda: abs(h.latest().get('left_shoulder_pan', 0) - 0.3) < K and abs(h.latest()['left_wrist_flex'] - 0.4) < K,
        5,
    )

    # Beyond the joint limit: clamped to it (shoulder_pan upper = 1.0 rad).
    assert h.command_until(['left_shoulder_pan'], [2.5], lambda: h.servo(1).goal_position == ticks(1.0))
    h.spin(lambda: False, 0.3)
    assert h.servo(1).goal_position == ticks(1.0)

    # NaN and unknown names: rejected whole, no goal written, counted in diagnostics.
    h.goals.clear()
    # Keep-last-1 commands: send each bad one until the driver has seen it, then the next.
    bad = [
        (['left_shoulder_pan', 'left_elbow_flex'], [math.nan, 0.2]),
        (['left_shoulder_pan', 'right_elbow_flex'], [0.0, 0.2]),
        (['left_shoulder_pan'], [math.inf]),
    ]
    for n, (names, positions) in enumerate(bad, start=1):
        assert h.command_until(names, positions, lambda n=n: h.node.controller.filter.counters['rejected'] == n)
    d = h.fresh_diag(lambda d: d.get('cmd_rejected') == '3')
    assert d['cmd_rejected_not_finite'] == '2' and d['cmd_rejected_unknown_joint'] == '1'
    assert h.goals == [] and h.servo(1).goal_position == ticks(1.0) and h.servo(3).goal_position == 2048

    # Torque service: off releases every servo; on again takes over at the present pose without a jump.
    response = h.call_torque(False)
    assert response.success, response.message
    assert not any(h.servo(i).torque_enabled for i in IDS)
    h.servo(2).set_present_position(2300)  # the user moves the limp arm by hand
    assert h.spin(lambda: abs(h.latest().get('left_shoulder_lift', 0) - 252 * K) < 1e-9, 5)
    response = h.call_torque(True)
    assert response.success, response.message
    assert all(h.servo(i).torque_enabled for i in IDS)
    assert h.servo(2).goal_position == 2300 and h.servo(1).goal_position == h.servo(1).present_position
    d = h.fresh_diag(lambda d: d.get('torque') == 'on')
    assert d['connected'] == 'True' and d['calibration'] == 'manual' and d['missing_servos'] == '[]'
    assert float(d['read_rate_hz']) > 20


@pytest.mark.slow
def test_max_step_per_tick_ramps_goals(harness) -> None:
    h = harness(params={'max_step_rad': 0.02})
    h.goals.clear()
    assert h.command_until(['left_elbow_flex'], [1.2], lambda: h.servo(3).goal_position == ticks(1.2), 15)
    elbow = [t for sid, t in h.goals if sid == 3]
    steps = [b - a for a, b in zip([2048, *elbow], elbow, strict=False)]
    assert len(elbow) >= 1.2 / 0.02  # a ramp, not a jump
    assert max(steps) <= math.ceil(0.02 / K) and min(steps) >= 0


# ------------------------------------------------------------------------- watchdog, e-stop


@pytest.mark.slow
def test_watchdog_holds_then_estop_holds(harness) -> None:
    h = harness(params={'max_step_rad': 0.01, 'command_timeout_s': 0.3})
    # One command toward a far target, then silence: the ramp stops where it is after the timeout.
    h.command(['left_shoulder_lift'], [1.5])
    assert h.spin(lambda: h.servo(2).goal_position > 2060, 10)
    d = h.fresh_diag(lambda d: d.get('state') == 'watchdog_hold')
    held = h.servo(2).goal_position
    assert 2048 < held < ticks(1.5)
    h.spin(lambda: False, 0.5)
    assert h.servo(2).goal_position == held
    assert int(d['cmd_watchdog_trips']) >= 1

    # Commands again: it moves again.
    assert h.command_until(['left_shoulder_lift'], [0.0], lambda: h.servo(2).goal_position < held - 10)

    # E-stop (hold): no more goals, commands refused, torque stays on.
    h.estop(True)
    d = h.fresh_diag(lambda d: d.get('estop') == 'True')
    assert d['state'] == 'estop'
    h.goals.clear()
    frozen = h.servo(2).goal_position
    h.command_until(['left_shoulder_lift'], [-1.0], lambda: False, 0.6)
    assert h.goals == [] and h.servo(2).goal_position == frozen
    assert all(h.servo(i).torque_enabled for i in IDS)
    assert int(h.fresh_diag(lambda d: 'cmd_rejected_estop' in d)['cmd_rejected_estop']) > 0

    # Released: moves again on a new command.
    h.estop(False)
    assert h.command_until(['left_shoulder_lift'], [-0.2], lambda: h.servo(2).goal_position == ticks(-0.2), 15)


@pytest.mark.slow
def test_estop_torque_off(harness) -> None:
    h = harness(estop_action='torque_off')
    assert all(h.servo(i).torque_enabled for i in IDS)
    h.estop(True)
    assert h.spin(lambda: not any(h.servo(i).torque_enabled for i in IDS), 10)
    response = h.call_torque(True)
    assert not response.success and 'e-stop' in response.message
    assert not any(h.servo(i).torque_enabled for i in IDS)
    h.estop(False)
    h.spin(lambda: False, 0.3)
    assert not any(h.servo(i).torque_enabled for i in IDS)  # stays limp until asked
    assert h.call_torque(True).success
    assert all(h.servo(i).torque_enabled for i in IDS)


# ------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_missing_servo_reported_others_keep_working(harness) -> None:
    from bimanual_vla.drivers.servo.emulator import FaultConfig

    h = harness(allow_missing=True, faults=FaultConfig(missing_ids={5}))
    assert 'left_wrist_roll' not in h.latest() and 'left_shoulder_pan' in h.latest()
    h.fresh_diag(lambda d: d.get('missing_servos') == '[5]')
    assert h.diags[-1].level == b'\x01'  # WARN: allowed to run without it
    assert h.command_until(
        ['left_shoulder_pan', 'left_wrist_roll'], [0.2, 0.2], lambda: h.servo(1).present_position == ticks(0.2)
    )
    assert h.servo(5).goal_position == 2048  # the missing servo got nothing
    # A servo dropping out mid-run is reported too; it comes back where it is, without a jump.
    h.emu.faults.missing_ids = {5, 3}
    h.fresh_diag(lambda d: d.get('missing_servos') == '[3, 5]')
    assert h.spin(lambda: 'left_elbow_flex' not in h.states[-1].name, 5)
    assert h.command_until(['left_shoulder_pan'], [-0.2], lambda: h.servo(1).present_position == ticks(-0.2))
    h.emu.faults.missing_ids = set()
    h.fresh_diag(lambda d: d.get('missing_servos') == '[]')
    assert h.spin(lambda: set(h.states[-1].name) == set(QUALIFIED), 5)
    assert h.servo(5).goal_position == 2048 and h.servo(5).torque_enabled


@pytest.mark.slow
def test_stall_reported_in_diagnostics_and_efforts_published(harness) -> None:
    from bimanual_vla.drivers.servo.emulator import FaultConfig

    h = harness(faults=FaultConfig(obstacles={6: 1848}))  # an object 200 ticks into the gripper's closing travel
    assert h.spin(lambda: list(h.states[-1].name) == QUALIFIED, 10)
    assert list(h.states[-1].effort) == [0.0] * 6  # at rest: no load (fraction of full scale)

    def gripper(field: str) -> float | None:
        msg = h.states[-1]
        return dict(zip(msg.name, getattr(msg, field), strict=True)).get('left_gripper')

    # Closing on the object: the driver stops squeezing it, holds it where it met it, and says so.
    def holding() -> bool:
        return h.diag().get('stalled_joints') == "['gripper']" and h.servo(6).goal_position == 1848

    assert h.command_until(['left_gripper'], [-1.0], holding, 30), h.diag()
    d = h.diag()
    # One event per stall (a servo that drops off the bus is taken over afresh: it may stall again).
    assert int(d['stall_events']) >= 1 and int(d['cmd_held_at_obstacle']) >= 1
    assert 'holding gripper against an obstacle' in h.diags[-1].message and h.diags[-1].level == b'\x00'
    assert int(d['position_limits_written']) >= 1
    # The rig's limits went into the servos' own registers (wrist_flex reversed: its upper limit is its minimum).
    expected = {1: (ticks(-1.0), ticks(1.0)), 4: (ticks(1.7, -1), ticks(-1.7, -1)), 6: (ticks(-1.7), ticks(1.7))}
    assert expected[4] == (940, 3156)

    def limits(sid: int) -> tuple[int, int]:
        return h.servo(sid).read_register('min_position_limit'), h.servo(sid).read_register('max_position_limit')

    assert h.spin(lambda: all(limits(i) == want for i, want in expected.items()), 10)
    # Still commanded closed, it holds without driving: no load, at the object.
    assert h.command_until(
        ['left_gripper'], [-1.0], lambda: h.servo(6).goal_position == 1848 and gripper('effort') == 0.0, 10
    )
    assert gripper('position') == pytest.approx((1848 - 2048) * K)


@pytest.mark.slow
def test_missing_servo_blocks_motion_when_not_allowed(harness) -> None:
    from bimanual_vla.drivers.servo.emulator import FaultConfig

    h = harness(allow_missing=False, faults=FaultConfig(missing_ids={2}))
    d = h.fresh_diag(lambda d: d.get('missing_servos') == '[2]')
    assert h.diags[-1].level == b'\x02'  # ERROR
    h.goals.clear()
    h.command_until(['left_shoulder_pan'], [0.3], lambda: False, 0.6)
    assert h.goals == [] and h.servo(1).goal_position == 2048
    assert d['connected'] == 'True'


@pytest.mark.slow
def test_port_disappears_and_comes_back(harness) -> None:
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    h = harness()
    assert h.command_until(['left_shoulder_pan'], [0.1], lambda: h.servo(1).present_position == ticks(0.1))
    # Unplug: the emulator goes away and so does the port path.
    h.emu.stop()
    h.link.unlink()
    d = h.fresh_diag(lambda d: d.get('connected') == 'False')
    assert h.diags[-1].level == b'\x02'
    h.states.clear()
    h.spin(lambda: False, 0.5)
    assert h.states == []  # nothing published while the arm is gone (no stale values)

    # Plug back in (a new pty behind the same path): joint_states resume, commands work again.
    new = ServoBusEmulator('feetech', IDS, max_speed_ticks_per_s=4000)
    h.emu = new  # the fixture stops it
    new.set_present_position(1, 2100)
    os.symlink(new.start(), h.link)
    assert h.spin(lambda: len(h.states) > 3, 15), 'joint_states did not resume after the port came back'
    assert h.latest()['left_shoulder_pan'] == pytest.approx(52 * K)
    assert new.servo(1).torque_enabled and new.servo(1).goal_position == 2100  # took over where it is
    assert h.command_until(['left_shoulder_pan'], [-0.1], lambda: new.servo(1).present_position == ticks(-0.1))
    d = h.fresh_diag(lambda d: d.get('connected') == 'True')
    assert int(d['disconnects']) == 1 and int(d['connects']) == 2


# ------------------------------------------------------------------------- calibration


@pytest.mark.slow
def test_calibration_homing_offset_restored_and_applied(harness) -> None:
    cal = ArmHarness.default_calibration()
    cal['joints']['shoulder_pan'].update(homing_offset=300, zero_ticks=2000)
    h = harness(calibration=cal)
    # The servo's offset register was 0: the driver wrote the calibrated one (torque off for the EEPROM write).
    assert h.servo(1).read_register('homing_offset') == 300
    # Feetech reports present = actual - offset: 2048 - 300 = 1748 -> (1748 - 2000) ticks from zero.
    assert h.spin(lambda: abs(h.latest().get('left_shoulder_pan', 1) - (1748 - 2000) * K) < 1e-9, 5)
    assert h.command_until(['left_shoulder_pan'], [0.0], lambda: h.servo(1).present_position == 2000)


@pytest.mark.slow
def test_uncalibrated_arm_says_so(harness) -> None:
    h = harness(calibration={})  # no calibration file at the configured path
    d = h.fresh_diag(lambda d: d.get('calibration') == 'identity')
    assert 'UNCALIBRATED' in h.diags[-1].message and h.diags[-1].level == b'\x01'
    assert d['connected'] == 'True'
    assert h.latest()['left_shoulder_pan'] == 0.0  # identity: servo mid-point = 0 rad


def test_bad_parameters_fail_clearly(tmp_path, ros_context) -> None:
    from rclpy.parameter import Parameter

    from bimanual_vla.config import ConfigError
    from bimanual_vla.drivers.servo.node import ArmDriver

    rig = tmp_path / 'rig.yaml'
    rig.write_text(
        yaml.safe_dump(
            {
                'name': 'r',
                'urdf': 'x.urdf',
                'arms': [
                    {
                        'name': 'left',
                        'protocol': 'feetech',
                        'port': '/dev/null',
                        'joints': [{'id': 1, 'name': 'a', 'lower': -1, 'upper': 1}],
                    },
                ],
            }
        )
    )
    with pytest.raises(ConfigError, match="has no arm 'right'"):
        ArmDriver(
            context=ros_context, parameter_overrides=[Parameter('rig', value=str(rig)), Parameter('arm', value='right')]
        )
    with pytest.raises(ConfigError, match='parameter "arm" is required'):
        ArmDriver(context=ros_context, parameter_overrides=[Parameter('rig', value=str(rig))])
    with pytest.raises(ConfigError, match='estop_action'):
        ArmDriver(
            context=ros_context,
            parameter_overrides=[
                Parameter('rig', value=str(rig)),
                Parameter('arm', value='left'),
                Parameter('estop_action', value='explode'),
            ],
        )


@pytest.mark.parametrize(
    ('name', 'value', 'message'),
    [
        ('command_timeout_s', 1e12, 'must be in (0, 2] s, got 1e+12'),
        ('max_step_rad', 1e9, 'must be in (0, 0.2] rad, got 1e+09'),
        ('max_velocity_rad_s', 1e9, 'must be in (0, 2*pi] rad/s, got 1e+09'),
        ('read_rate_hz', 1e6, 'must be in [10, 1000] Hz, got 1e+06'),
        ('command_timeout_s', math.nan, 'must be in (0, 2] s, got nan'),
    ],
)
def test_parameter_overrides_held_to_the_rig_bounds(
    tmp_path, ros_context, name: str, value: float, message: str
) -> None:
    from rclpy.parameter import Parameter

    from bimanual_vla.config import ConfigError
    from bimanual_vla.drivers.servo.node import ArmDriver

    rig = tmp_path / 'rig.yaml'
    arm = {'name': 'left', 'protocol': 'feetech', 'port': '/dev/null'}
    arm['joints'] = [{'id': 1, 'name': 'a', 'lower': -1, 'upper': 1}]
    rig.write_text(yaml.safe_dump({'name': 'r', 'urdf': 'x.urdf', 'arms': [arm]}))
    overrides = [Parameter('rig', value=str(rig)), Parameter('arm', value='left'), Parameter(name, value=value)]
    with pytest.raises(ConfigError) as err:
        ArmDriver(context=ros_context, parameter_overrides=overrides)
    assert str(err.value) == f'node arm_driver: parameter {name}: {message}'
