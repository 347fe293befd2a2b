"""Leader reading, mapping and engagement without ROS: bytes on emulated buses, values by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bimanual_vla.config import ArmConfig, LeaderConfig
from bimanual_vla.drivers.servo.calibration import load_calibration
from bimanual_vla.drivers.servo.emulated_motion import (
    Motion,
    MotionError,
    MotionPlayer,
    identity_ticks,
    load_motion,
    save_motion_csv,
)
from bimanual_vla.drivers.servo.emulator import ServoBusEmulator
from bimanual_vla.drivers.teleop.engage import DISARMED, ENGAGED, ESTOP, LEADER_LOST, RAMPING, TOO_FAR, Engagement
from bimanual_vla.drivers.teleop.leader import CURRENT_BASED_POSITION, GOAL_CURRENT, LeaderReader, leader_calibration
from bimanual_vla.drivers.teleop.mapping import GripperMap, LeaderMapping, follower_gripper_range

NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
K = 2 * math.pi / 4096


def leader_config(port: str, protocol: str = 'feetech', calibration: str | None = None, **extra) -> LeaderConfig:
    return LeaderConfig.model_validate(
        {
            'name': 'left_leader',
            'protocol': protocol,
            'port': port,
            'calibration': calibration,
            'follower': 'left',
            'joints': [{'id': i, 'name': n} for i, n in enumerate(NAMES, 1)],
            'gripper': {'joint': 'gripper', **extra.pop('gripper', {})},
            **extra,
        }
    )


def follower_arm() -> ArmConfig:
    return ArmConfig.model_validate(
        {
            'name': 'left',
            'protocol': 'feetech',
            'port': '/dev/null',
            'gripper': 'gripper',
            'joints': [{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in enumerate(NAMES, 1)],
        }
    )


def calibration_file(path: Path, protocol: str, **joints: dict) -> Path:
    base = {'homing_offset': 0, 'range_min': 0, 'range_max': 4095, 'direction': 1, 'zero_ticks': 2048}
    data = {
        'format': 'bimanual_vla.calibration',
        'protocol': protocol,
        'joints': {n: {**base, 'id': i, **joints.get(n, {})} for i, n in enumerate(NAMES, 1)},
    }
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------ motion files


def test_motion_files_read_as_written_and_bad_ones_are_one_line(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.1], [0.5, -0.2], [1.0, 0.3]])
    csv_path = save_motion_csv(tmp_path / 'm.csv', [0.0, 0.5, 1.5], ['1', 'gripper'], values)
    motion = load_motion(csv_path)
    assert motion.columns == ('1', 'gripper') and motion.duration_s == 1.5
    assert motion.at(0.25).tolist() == pytest.approx([0.25, -0.05])
    assert motion.at(9.0).tolist() == pytest.approx([1.0, 0.3])  # holds the last pose
    assert motion.at(2.0, loop=True).tolist() == pytest.approx([0.5, -0.2])  # 2.0 s = 0.5 s into the loop
    json_path = tmp_path / 'm.json'
    json_path.write_text(json.dumps({'t': [0, 1], 'joints': {'2': [0.0, 1.0]}}))
    assert load_motion(json_path).at(0.5).tolist() == [0.5]
    bad = {
        't,1\n0,0\n0,1\n': 'sample 1: times must increase (t=0 after 0)',
        'time,1\n0,0\n': "line 1: the first column must be t (seconds), got 'time'",
        't,1\n0,0\n1\n': 'line 3: 1 values, the header has 2',
        't,1\n0,abc\n': "line 2: not a number in '0,abc'",
        't,1,1\n0,0,0\n': "a column appears twice: ['1', '1']",
        't,1\n0,nan\n': 'every time and angle must be a finite number',
    }
    for text, message in bad.items():
        path = tmp_path / 'bad.csv'
        path.write_text(text)
        with pytest.raises(MotionError) as err:
            load_motion(path)
        assert str(err.value) == f'{path}: {message}'
    json_path.write_text(json.dumps({'t': [0, 1], 'joints': {'2': [0.0]}}))
    with pytest.raises(MotionError, match=r'm\.json: 2: expected a list of 2 numbers$'):
        load_motion(json_path)


def test_the_player_moves_the_servos_through_a_calibration_or_the_identity_mapping(tmp_path: Path) -> None:
    cal = load_calibration(calibration_file(tmp_path / 'c.json', 'feetech', elbow_flex={'direction': -1}))
    with ServoBusEmulator('feetech', range(1, 7)) as emu:
        motion = Motion(np.array([0.0]), ('1', 'elbow_flex'), np.array([[0.5, 0.5]]))
        player = MotionPlayer(emu, motion, calibration=cal)
        player.start()
        player.stop()
        assert emu.servo(1).present_position == round(2048 + 0.5 / K)
        assert emu.servo(3).present_position == round(2048 - 0.5 / K)  # reversed joint
        assert identity_ticks(0.5) == round(2048 + 0.5 / K)
        with pytest.raises(MotionError, match="column 'elbow' is neither a servo id nor a joint name"):
            MotionPlayer(emu, Motion(np.array([0.0]), ('elbow',), np.array([[0.0]])), calibration=cal)
        with pytest.raises(MotionError, match=r'servo 9 is not on this bus \[1, 2, 3, 4, 5, 6\]'):
            MotionPlayer(emu, Motion(np.array([0.0]), ('9',), np.array([[0.0]])))


# ---------------------------------------------------------------------- reading


def test_an_so101_leader_is_read_with_torque_off_through_its_calibration(tmp_path: Path) -> None:
    cal_path = calibration_file(tmp_path / 'l.json', 'feetech', shoulder_pan={'homing_offset': 100, 'zero_ticks': 2000})
    with ServoBusEmulator('feetech', range(1, 7)) as emu:
        for sid in range(1, 7):
            emu.servo(sid).write_register('torque_enable', 1)  # as a follower would have left it
        lead = leader_config(emu.port, calibration=str(cal_path))
        calibration, warnings = leader_calibration(lead)
        assert warnings == [] and calibration.source == 'manual'
        reader = LeaderReader(lead, calibration)
        assert reader.read() is not None  # connects: torque off, homing offset written (shifting the ticks)
        emu.external_motion = True
        emu.set_present_position(1, 2000 + round(0.3 / K))
        emu.set_present_position(6, 2048 + round(0.7 / K))
        reading = reader.read()
        assert reading is not None and reading.complete
        assert reading.positions[0] == pytest.approx(0.3, abs=K)
        assert reading.positions[5] == pytest.approx(0.7, abs=K)
        assert not any(emu.servo(sid).torque_enabled for sid in range(1, 7))
        assert emu.servo(1).read_register('homing_offset') == 100  # restored: the calibrated ticks assume it
        emu.faults.missing_ids = {3}
        reading = reader.read()
        assert reading is not None and reading.positions[2] is None and not reading.complete
        assert reader.stats.missing == [3]
        reader.close()


def test_a_koch_leader_holds_its_trigger_with_a_current_limited_spring(tmp_path: Path) -> None:
    cal_path = calibration_file(tmp_path / 'k.json', 'dynamixel', gripper={'range_min': 2000, 'range_max': 3000})
    with ServoBusEmulator('dynamixel', range(1, 7), model_number=1190) as emu:
        lead = leader_config(
            emu.port, 'dynamixel', str(cal_path), gripper={'spring_open_fraction': 0.25, 'spring_goal_current': 300}
        )
        reader = LeaderReader(lead, leader_calibration(lead)[0])
        assert reader.read() is not None
        trigger = emu.servo(6)
        assert trigger.read_register('operating_mode') == CURRENT_BASED_POSITION
        data = trigger.read_bytes(GOAL_CURRENT.address, GOAL_CURRENT.length)
        assert int.from_bytes(data, 'little', signed=True) == 300
        # the calibrated gripper range is ticks 2000..3000 (closed..open): a quarter open is tick 2250
        assert reader.spring_ticks == trigger.goal_position == 2250
        assert trigger.torque_enabled and not any(emu.servo(sid).torque_enabled for sid in range(1, 6))
        reader.close()
        assert not trigger.torque_enabled  # the spring lets go when teleop stops


def test_a_leader_that_is_unplugged_is_reopened_with_backoff() -> None:
    emu = ServoBusEmulator('feetech', range(1, 7))
    port = emu.start()
    lead = leader_config(port)
    logs: list[str] = []
    reader = LeaderReader(lead, leader_calibration(lead)[0], log=lambda level, m: logs.append(m))
    assert reader.read() is not None
    emu.stop()
    assert reader.read() is None and not reader.connected
    assert any('lost' in m for m in logs)
    assert reader.read() is None  # backing off, and the port is gone anyway
    assert reader.stats.disconnects == 1


def test_a_leader_with_a_calibration_for_other_servos_is_refused(tmp_path: Path) -> None:
    cal_path = calibration_file(tmp_path / 'x.json', 'feetech', wrist_roll={'id': 9})
    with pytest.raises(ValueError, match=r'does not fit leader left_leader: wrist_roll: rig id 5, file id 9'):
        leader_calibration(leader_config('/dev/null', calibration=str(cal_path)))
    _, warnings = leader_calibration(leader_config('/dev/null', calibration=str(tmp_path / 'none.json')))
    assert 'NOT FOUND; using the identity mapping' in warnings[0]


# ---------------------------------------------------------------------- mapping


def test_mapping_sends_body_joints_by_name_and_the_gripper_range_onto_the_followers() -> None:
    lead = leader_config('/dev/null', joint_map={'wrist_flex': 'wrist_roll', 'wrist_roll': 'wrist_flex'})
    grip = GripperMap(0.0, 1.0, -0.2, 0.6)
    mapping = LeaderMapping(lead, follower_arm(), grip)
    assert mapping.names == [f'left_{n}' for n in NAMES]
    targets = mapping([0.1, 0.2, 0.3, 0.4, 0.5, 0.25])
    assert targets == pytest.approx([0.1, 0.2, 0.3, 0.5, 0.4, 0.0])  # swapped wrists; 25 % of -0.2..0.6
    assert mapping([0.1, 0.2, 0.3, 0.4, 0.5, 2.0])[5] == pytest.approx(0.6)  # past open: clamped
    assert mapping([0.1, None, 0.3, 0.4, 0.5, 0.0]) is None


def test_a_scripted_leader_finds_the_leader_angle_for_a_follower_gripper_angle() -> None:
    """A scripted leader replaying follower angles (the takeover demo) holds the trigger where the map inverts."""
    grip = GripperMap(-3.1, 3.1, -0.2, 0.6)  # an uncalibrated leader's whole turn onto a follower jaw
    assert grip.leader_angle(0.2) == pytest.approx(0.0)
    for follower in (-0.2, -0.05, 0.3, 0.6):
        assert grip(grip.leader_angle(follower)) == pytest.approx(follower)
    assert grip.leader_angle(1.0) == pytest.approx(3.1)  # past the follower's open: clamped to the leader's


def test_the_followers_gripper_range_comes_from_its_calibration_within_its_limits(tmp_path: Path) -> None:
    arm = follower_arm()
    lead = leader_config('/dev/null')
    assert follower_gripper_range(lead, arm, None) == (-1.5, 1.5)
    cal = load_calibration(
        calibration_file(tmp_path / 'f.json', 'feetech', gripper={'range_min': 2048, 'range_max': 3000})
    )
    low, high = follower_gripper_range(lead, arm, cal)
    assert (low, high) == pytest.approx((0.0, (3000 - 2048) * K))
    lead = leader_config('/dev/null', gripper={'follower_closed': 0.1, 'follower_open': 0.9})
    assert follower_gripper_range(lead, arm, cal) == (0.1, 0.9)


# ------------------------------------------------------------------- engagement


def test_engagement_starts_only_when_poses_match() -> None:
    eng = Engagement(['a', 'b'], tolerance_rad=0.1, timeout_s=0.2)
    d = eng.update(0.0, [0.5, 0.0], [0.0, 0.0])
    assert d.command is None and d.state == TOO_FAR
    assert d.reason.startswith('a: leader +0.500 rad, follower +0.000 rad (more than 0.1 apart)')
    d = eng.update(0.01, [0.05, 0.0], [0.0, 0.0])
    assert d.state == ENGAGED and d.command == [0.05, 0.0]
    d = eng.update(0.02, [0.9, 0.0], [0.0, 0.0])  # engaged: the leader leads, the driver ramps
    assert d.command == [0.9, 0.0]


def test_the_ramp_moves_the_follower_to_the_leader_at_its_speed_then_hands_over() -> None:
    eng = Engagement(['a'], tolerance_rad=0.05, timeout_s=0.5, ramp=True, ramp_velocity_rad_s=0.5)
    d = eng.update(0.0, [1.0], [0.0])
    assert d.state == RAMPING and d.command == [0.0]
    t, commands = 0.0, []
    while d.state == RAMPING:
        t += 0.01
        d = eng.update(t, [1.0], None)  # the follower pose is not needed once ramping
        commands.append(d.command[0])
    assert d.state == ENGAGED and d.command == [1.0]
    steps = np.diff(commands[:-1])
    assert np.all(steps <= 0.5 * 0.01 + 1e-9) and np.all(steps > 0)
    assert t == pytest.approx((1.0 - 0.05) / 0.5, abs=0.02)


def test_a_silent_leader_holds_and_must_match_again_when_it_returns() -> None:
    eng = Engagement(['a'], tolerance_rad=0.1, timeout_s=0.2)
    assert eng.update(0.0, [0.0], [0.0]).state == ENGAGED
    assert eng.update(0.1, None, [0.0]).command is None  # one missed read: hold this tick only
    assert eng.state == ENGAGED
    d = eng.update(0.25, None, [0.0])
    assert d.state == LEADER_LOST and d.command is None and d.reason.startswith('leader silent for 0.25 s')
    d = eng.update(0.3, [0.5], [0.0])  # back, but moved while the follower held
    assert d.state == TOO_FAR and d.command is None and eng.leader_losses == 1


def test_estop_stops_teleop_until_rearmed_after_its_release() -> None:
    eng = Engagement(['a'], tolerance_rad=0.1, timeout_s=0.2)
    assert eng.update(0.0, [0.0], [0.0]).state == ENGAGED
    eng.set_estop(True)
    assert eng.update(0.01, [0.0], [0.0]) == eng.update(0.02, [0.0], [0.0])
    assert eng.state == ESTOP and eng.update(0.03, [0.0], [0.0]).command is None
    assert eng.arm().startswith('refused: the e-stop is active')
    eng.set_estop(False)
    d = eng.update(0.04, [0.0], [0.0])
    assert d.state == DISARMED and d.command is None and 're-arm' in d.reason
    assert eng.arm() == 'armed'
    assert eng.update(0.05, [0.0], [0.0]).state == ENGAGED
