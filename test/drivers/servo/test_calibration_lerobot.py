"""LeRobot calibration import checked against LeRobot's own formulas, and its drive mode kept in the servo.

``lerobot_normalize`` / ``lerobot_unnormalize`` below re-implement, line for line, what
huggingface/lerobot does (src/lerobot/motors/motors_bus.py, ``MotorsBus._normalize`` and
``MotorsBus._unnormalize``, at commit 7427f31801f944f5ec9ce53cda02862ce7d1638b):

* ``drive_mode = self.apply_drive_mode and calibration.drive_mode``, where ``apply_drive_mode`` is
  True on ``FeetechMotorsBus`` (feetech/feetech.py) and False on ``DynamixelMotorsBus``
  (dynamixel/dynamixel.py): a Dynamixel bus writes the direction into the servo's Drive_Mode
  register instead (``KochLeader.calibrate`` in teleoperators/koch_leader/koch_leader.py writes
  ``Drive_Mode`` = INVERTED for ``elbow_flex`` before recording the calibration);
* DEGREES: ``(val - mid) * 360 / max_res`` with ``mid = (min + max) / 2`` and
  ``max_res = model_resolution - 1`` (4095 for the STS3215 and the X series); no drive mode;
* RANGE_M100_100: ``((bounded - min) / (max - min)) * 200 - 100``, negated with drive mode;
* RANGE_0_100: ``((bounded - min) / (max - min)) * 100``, ``100 - norm`` with drive mode;
* unnormalize DEGREES: ``int((val * max_res / 360) + mid)``.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers.calibration import JOINTS, LEROBOT_SO101, write_rig

from bimanual_vla.config import ArmConfig, load_rig
from bimanual_vla.drivers.servo.arm_controller import ArmController
from bimanual_vla.drivers.servo.bus import ServoBus
from bimanual_vla.drivers.servo.calibration import load_calibration, parse_calibration
from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

RESOLUTION = 4096  # MODEL_RESOLUTION of sts3215, xl330-m077, xl330-m288, xl430-w250 in LeRobot's tables

# A Koch leader calibration as KochLeader.calibrate writes it: elbow_flex drive_mode 1 (in the servo),
# shoulder_pan and wrist_roll full turn (0..4095).
LEROBOT_KOCH_LEADER = {
    'shoulder_pan': {'id': 1, 'drive_mode': 0, 'homing_offset': -1024, 'range_min': 0, 'range_max': 4095},
    'shoulder_lift': {'id': 2, 'drive_mode': 0, 'homing_offset': 1021, 'range_min': 1011, 'range_max': 3092},
    'elbow_flex': {'id': 3, 'drive_mode': 1, 'homing_offset': -2070, 'range_min': 930, 'range_max': 3150},
    'wrist_flex': {'id': 4, 'drive_mode': 0, 'homing_offset': 512, 'range_min': 1105, 'range_max': 3003},
    'wrist_roll': {'id': 5, 'drive_mode': 0, 'homing_offset': 0, 'range_min': 0, 'range_max': 4095},
    'gripper': {'id': 6, 'drive_mode': 0, 'homing_offset': 1890, 'range_min': 2010, 'range_max': 2820},
}


def lerobot_normalize(val: int, cal: dict, norm_mode: str, apply_drive_mode: bool) -> float:
    """LeRobot MotorsBus._normalize for one value (motors_bus.py)."""
    min_, max_ = cal['range_min'], cal['range_max']
    drive_mode = apply_drive_mode and cal['drive_mode']
    bounded_val = min(max_, max(min_, val))
    if norm_mode == 'RANGE_M100_100':
        norm = (((bounded_val - min_) / (max_ - min_)) * 200) - 100
        return -norm if drive_mode else norm
    if norm_mode == 'RANGE_0_100':
        norm = ((bounded_val - min_) / (max_ - min_)) * 100
        return 100 - norm if drive_mode else norm
    mid = (min_ + max_) / 2
    max_res = RESOLUTION - 1
    return (val - mid) * 360 / max_res


def lerobot_unnormalize_degrees(val: float, cal: dict) -> float:
    """LeRobot MotorsBus._unnormalize, DEGREES, before its final int() (motors_bus.py)."""
    mid = (cal['range_min'] + cal['range_max']) / 2
    return (val * (RESOLUTION - 1) / 360) + mid


def test_feetech_body_joints_are_lerobots_degrees_exactly() -> None:
    c = parse_calibration(LEROBOT_SO101, protocol='feetech')
    assert c.ticks_per_turn == 4095
    for name, cal in LEROBOT_SO101.items():
        if name == 'gripper':
            continue
        for ticks in range(cal['range_min'], cal['range_max'] + 1, 37):
            assert math.degrees(c.to_radians(name, ticks)) == pytest.approx(
                lerobot_normalize(ticks, cal, 'DEGREES', apply_drive_mode=True), rel=1e-12, abs=1e-9
            )


def test_goal_ticks_are_lerobots_unnormalize() -> None:
    c = parse_calibration(LEROBOT_SO101, protocol='feetech')
    for name in ('shoulder_lift', 'wrist_flex'):
        cal = LEROBOT_SO101[name]
        for degrees in (-61.3, -20.0, -0.4, 0.0, 7.25, 45.0, 88.8):
            exact = lerobot_unnormalize_degrees(degrees, cal)
            ours = c.to_ticks(name, math.radians(degrees))
            # LeRobot truncates (int()); we round, so a goal is never a tick short through float error.
            assert ours == round(exact)
            assert abs(ours - int(exact)) <= 1


def test_gripper_zero_and_direction_follow_range_0_100() -> None:
    # Feetech, no drive mode: 0 % at range_min; with drive mode (applied in software): 0 % at range_max.
    for drive_mode in (0, 1):
        data = json.loads(json.dumps(LEROBOT_SO101))
        data['gripper']['drive_mode'] = drive_mode
        cal = data['gripper']
        c = parse_calibration(data, protocol='feetech')
        for ticks in range(cal['range_min'], cal['range_max'] + 1, 17):
            percent = lerobot_normalize(ticks, cal, 'RANGE_0_100', apply_drive_mode=True)
            # our angle is LeRobot's percentage of the range, in ticks, at 4095 ticks per turn
            assert c.to_radians('gripper', ticks) == pytest.approx(
                percent / 100 * (cal['range_max'] - cal['range_min']) * 2 * math.pi / 4095, abs=1e-9
            )


def test_feetech_drive_mode_reverses_in_software_as_range_m100_100_does() -> None:
    data = json.loads(json.dumps(LEROBOT_SO101))
    data['wrist_flex']['drive_mode'] = 1
    cal = data['wrist_flex']
    c = parse_calibration(data, protocol='feetech')
    assert (c.joints['wrist_flex'].direction, c.joints['wrist_flex'].drive_mode) == (-1, 0)
    for ticks in (cal['range_min'], 1500, 2100, 2900, cal['range_max']):
        lerobot = lerobot_normalize(ticks, cal, 'RANGE_M100_100', apply_drive_mode=True)
        ours = c.to_radians('wrist_flex', ticks)
        assert ours == pytest.approx(
            math.radians(lerobot / 100 * (cal['range_max'] - cal['range_min']) / 2 * 360 / 4095)
        )


def test_koch_leader_elbow_is_reversed_once_by_the_servo_not_again_in_software() -> None:
    c = parse_calibration(LEROBOT_KOCH_LEADER, protocol='dynamixel')
    elbow = c.joints['elbow_flex']
    # The servo counts in reverse (Drive_Mode bit 0); the ticks in the file are those reversed ticks.
    assert (elbow.direction, elbow.drive_mode) == (1, 1)
    assert all(c.joints[n].drive_mode == 0 for n in LEROBOT_KOCH_LEADER if n != 'elbow_flex')
    for name, cal in LEROBOT_KOCH_LEADER.items():
        for ticks in range(cal['range_min'], cal['range_max'] + 1, 53):
            if name == 'gripper':
                percent = lerobot_normalize(ticks, cal, 'RANGE_0_100', apply_drive_mode=False)
                assert c.to_radians(name, ticks) == pytest.approx(
                    percent / 100 * (cal['range_max'] - cal['range_min']) * 2 * math.pi / 4095, abs=1e-9
                )
                continue
            # The Koch leader's body joints are RANGE_M100_100: same sign and zero as our angle ...
            m100 = lerobot_normalize(ticks, cal, 'RANGE_M100_100', apply_drive_mode=False)
            ours = c.to_radians(name, ticks)
            assert (ours > 1e-12) == (m100 > 1e-9) and (ours < -1e-12) == (m100 < -1e-9)
            # ... and the follower's DEGREES (use_degrees) exactly.
            degrees = lerobot_normalize(ticks, cal, 'DEGREES', apply_drive_mode=False)
            assert math.degrees(ours) == pytest.approx(degrees, rel=1e-12, abs=1e-9)


def test_drive_mode_without_protocol_is_an_error_not_a_guess() -> None:
    from bimanual_vla.drivers.servo.calibration import CalibrationError

    with pytest.raises(CalibrationError, match=r'elbow_flex.drive_mode: 1 means a servo register on Dynamixel'):
        parse_calibration(LEROBOT_KOCH_LEADER)


def test_driver_puts_the_servo_drive_mode_back(tmp_path) -> None:
    """Byte level: an imported Koch leader file on servos whose Drive_Mode was reset: the driver sets bit 0 again."""
    path = tmp_path / 'koch_leader.json'
    path.write_text(json.dumps(LEROBOT_KOCH_LEADER))
    with ServoBusEmulator('dynamixel', [j['id'] for j in JOINTS], model_number=1190) as emu:
        arm: ArmConfig = load_rig(write_rig(tmp_path, protocol='dynamixel', port=emu.port)).arm('left')
        calibration = load_calibration(path, arm=arm)
        emu.servo(3).write_register('drive_mode', 4)  # bit 2 (time-based profile) set, reverse bit cleared
        emu.servo(4).write_register('drive_mode', 1)  # reversed where the calibration says it is not
        logs: list[tuple[str, str]] = []
        controller = ArmController(
            arm,
            calibration,
            torque_on_start=False,
            bus_factory=lambda port, protocol, baud: ServoBus(port, protocol, baud, timeout_margin_s=0.1),
            log=lambda level, message: logs.append((level, message)),
        )
        try:
            controller.cycle(100.0)
            assert controller.connected
            assert [emu.servo(i).read_register('drive_mode') for i in range(1, 7)] == [0, 0, 5, 0, 0, 0]
            assert controller.stats.drive_modes_restored == 2
            assert any('servo 3 (elbow_flex) drive mode (reverse bit) is 0, calibration says 1' in m for _, m in logs)
        finally:
            controller.close()
