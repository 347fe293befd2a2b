"""Calibration: tick <-> radian mapping, our file format, LeRobot import, CLI (import and interactive)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers.calibration import JOINTS, LEROBOT_SO101, write_rig

from bimanual_vla.config import load_rig
from bimanual_vla.drivers.servo.calibration import (
    ArmCalibration,
    CalibrationError,
    JointCalibration,
    calibration_for_arm,
    identity_calibration,
    load_calibration,
    parse_calibration,
)

K = 2 * math.pi / 4096  # rad per tick
KL = 2 * math.pi / 4095  # rad per tick in LeRobot's degrees (360 / max_res, max_res = 4096 - 1)

# The older list-based LeRobot format (Koch, software offsets in half-turn units).
LEROBOT_LEGACY_KOCH = {
    'homing_offset': [-2048, 2048, 3072, -1024, -2048, -2048],
    'drive_mode': [0, 1, 0, 0, 1, 0],
    'start_pos': [2035, 3038, 1043, 1985, 2054, 2011],
    'end_pos': [3074, 2000, 2060, 3035, 1005, 3014],
    'calib_mode': ['DEGREE', 'DEGREE', 'DEGREE', 'DEGREE', 'DEGREE', 'LINEAR'],
    'motor_names': ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper'],
}


@pytest.fixture
def arm(tmp_path):
    return load_rig(write_rig(tmp_path)).arm('left')


def calib(direction: int = 1, zero: float = 2048.0) -> ArmCalibration:
    return ArmCalibration(
        joints={
            'j': JointCalibration(
                id=1, homing_offset=0, range_min=1000, range_max=3000, direction=direction, zero_ticks=zero
            )
        }
    )


# ----------------------------------------------------------------- mapping


@pytest.mark.parametrize('direction', [1, -1])
def test_ticks_radians_round_trip(direction: int) -> None:
    c = calib(direction)
    for ticks in (1000, 1500, 2048, 2049, 2999):
        assert c.to_ticks('j', c.to_radians('j', ticks)) == ticks
    assert c.to_radians('j', 2048 + 1024) == pytest.approx(direction * math.pi / 2)
    assert c.to_ticks('j', direction * 0.5) == round(2048 + 0.5 / K)


def test_goal_ticks_stay_inside_calibrated_range_and_reject_nan() -> None:
    c = calib()
    assert c.to_ticks('j', 10.0) == 3000
    assert c.to_ticks('j', -10.0) == 1000
    with pytest.raises(ValueError, match='not finite'):
        c.to_ticks('j', math.nan)
    assert c.range_radians('j') == pytest.approx(((1000 - 2048) * K, (3000 - 2048) * K))


def test_identity_is_marked_and_centred(arm) -> None:
    c = identity_calibration(arm)
    assert c.is_identity and c.source == 'identity'
    assert c.to_radians('shoulder_pan', 2048) == 0.0
    assert c.to_ticks('wrist_roll', math.pi / 2) == 3072
    assert {n: j.id for n, j in c.joints.items()} == {j['name']: j['id'] for j in JOINTS}


# ------------------------------------------------------------------- files


def test_save_and_load_round_trip(tmp_path, arm) -> None:
    c = parse_calibration(LEROBOT_SO101, arm=arm)
    path = c.save(tmp_path / 'sub' / 'left.json')
    text = path.read_text()
    assert json.loads(text)['format'] == 'bimanual_vla.calibration' and json.loads(text)['version'] == 1
    again = load_calibration(path)
    assert again == c
    assert [p.name for p in path.parent.iterdir()] == ['left.json']  # no temp file left behind


def test_invalid_files_name_file_and_field(tmp_path, arm) -> None:
    good = json.loads(parse_calibration(LEROBOT_SO101, arm=arm).to_json())
    bad = json.loads(json.dumps(good))
    bad['joints']['elbow_flex']['range_min'] = 4000
    p = tmp_path / 'bad.json'
    p.write_text(json.dumps(bad))
    with pytest.raises(
        CalibrationError, match=r'bad\.json: joints\.elbow_flex: range_min \(4000\) must be < range_max'
    ):
        load_calibration(p)

    typo = json.loads(json.dumps(good))
    typo['joints']['gripper']['zero_tick'] = 1
    p.write_text(json.dumps(typo))
    with pytest.raises(CalibrationError, match=r'joints\.gripper\.zero_tick: unknown field'):
        load_calibration(p)

    p.write_text('{"shoulder_pan": {"id": 1, ')
    with pytest.raises(CalibrationError, match='not valid JSON'):
        load_calibration(p)

    p.write_text(json.dumps({'shoulder_pan': {'id': 1, 'drive_mode': 0, 'range_min': 1, 'range_max': 9}}))
    with pytest.raises(CalibrationError, match=r"shoulder_pan: missing field\(s\) \['homing_offset'\]"):
        load_calibration(p)

    p.write_text(json.dumps([1, 2]))
    with pytest.raises(CalibrationError, match='expected a JSON object'):
        load_calibration(p)

    p.write_text(json.dumps({'format': 'someone_else', 'joints': {}}))
    with pytest.raises(CalibrationError, match='unknown calibration format'):
        load_calibration(p)

    with pytest.raises(CalibrationError, match='calibration file not found'):
        load_calibration(tmp_path / 'nope.json')


# ---------------------------------------------------------- LeRobot import


def test_lerobot_current_format(arm) -> None:
    c = parse_calibration(LEROBOT_SO101, arm=arm)
    assert c.source == 'lerobot' and c.protocol == 'feetech'
    pan = c.joints['shoulder_pan']
    assert (pan.id, pan.homing_offset, pan.range_min, pan.range_max, pan.direction) == (1, -1470, 758, 3292, 1)
    # LeRobot degrees: (ticks - mid) * 360 / 4095; zero at the middle of the range (test_calibration_lerobot.py
    # checks this against LeRobot's formula tick by tick).
    assert c.to_radians('shoulder_pan', (758 + 3292) / 2) == 0.0
    assert c.to_radians('shoulder_pan', 2025 + 1024) == pytest.approx(1024 * 2 * math.pi / 4095, rel=1e-12)
    # Gripper: LeRobot 0 % = range_min (closed) -> 0 rad, opening positive.
    assert c.to_radians('gripper', 2031) == 0.0
    assert c.to_radians('gripper', 3476) == pytest.approx((3476 - 2031) * KL, rel=1e-12)
    assert c.check_against(arm) == [] or all('calibrated range' in w for w in c.check_against(arm))


def test_lerobot_drive_mode_reverses() -> None:
    data = json.loads(json.dumps(LEROBOT_SO101))
    data['wrist_flex']['drive_mode'] = 1
    data['gripper']['drive_mode'] = 1
    c = parse_calibration(data, protocol='feetech')
    mid = (904 + 3207) / 2
    assert c.to_radians('wrist_flex', mid + 100) == pytest.approx(-100 * KL, rel=1e-12)
    # Reversed gripper: LeRobot's 0 % is range_max.
    assert c.to_radians('gripper', 3476) == 0.0
    assert c.to_radians('gripper', 3376) == pytest.approx(100 * KL, rel=1e-12)


def test_lerobot_legacy_format_matches_its_formula(arm) -> None:
    c = parse_calibration(LEROBOT_LEGACY_KOCH, arm=arm, protocol='dynamixel')
    assert c.source == 'lerobot_legacy' and c.protocol == 'dynamixel'
    for i, name in enumerate(LEROBOT_LEGACY_KOCH['motor_names'][:5]):
        sign = -1 if LEROBOT_LEGACY_KOCH['drive_mode'][i] else 1
        offset = LEROBOT_LEGACY_KOCH['homing_offset'][i]
        for raw in (-300, 0, 1000, 2048, 4000):
            legacy_degrees = (sign * raw + offset) / 2048 * 180  # LeRobot's old DEGREE mapping
            # raw values outside one turn around the zero are clamped by to_ticks, not by to_radians
            assert c.to_radians(name, raw) == pytest.approx(math.radians(legacy_degrees))
        assert c.joints[name].homing_offset == 0  # software offset: servo register stays 0
    # LINEAR gripper: 0 % at start_pos.
    assert c.to_radians('gripper', 2011) == 0.0
    assert c.to_radians('gripper', 2511) == pytest.approx(500 * K)
    assert (c.joints['gripper'].range_min, c.joints['gripper'].range_max) == (2011, 3014)


def test_lerobot_legacy_needs_rig_and_matching_names(arm) -> None:
    with pytest.raises(CalibrationError, match='no servo ids'):
        parse_calibration(LEROBOT_LEGACY_KOCH)
    data = dict(
        LEROBOT_LEGACY_KOCH, motor_names=['shoulder_pan', 'x', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
    )
    with pytest.raises(CalibrationError, match=r"motor_names\[1\]: 'x' is not a joint"):
        parse_calibration(data, arm=arm)
    data = dict(LEROBOT_LEGACY_KOCH, drive_mode=[0, 1])
    with pytest.raises(CalibrationError, match='drive_mode: expected a list of 6'):
        parse_calibration(data, arm=arm)


# ------------------------------------------------------- choosing for an arm


def test_calibration_for_arm_falls_back_loudly(tmp_path) -> None:
    arm = load_rig(write_rig(tmp_path)).arm('left')
    c, warnings = calibration_for_arm(arm)
    assert c.is_identity and 'NO CALIBRATION' in warnings[0]
    arm = load_rig(write_rig(tmp_path, calibration=str(tmp_path / 'missing.json'))).arm('left')
    c, warnings = calibration_for_arm(arm)
    assert c.is_identity and 'NOT FOUND' in warnings[0] and 'missing.json' in warnings[0]


def test_calibration_for_arm_rejects_mismatch(tmp_path) -> None:
    path = tmp_path / 'left.json'
    arm = load_rig(write_rig(tmp_path, calibration=str(path))).arm('left')
    data = json.loads(json.dumps(LEROBOT_SO101))
    data['elbow_flex']['id'] = 9
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match='elbow_flex: rig id 3, calibration id 9'):
        calibration_for_arm(arm)
    del data['gripper']
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match=r"no entry for joint\(s\) \['gripper'\]"):
        calibration_for_arm(arm)
    path.write_text('not json')
    with pytest.raises(CalibrationError, match='not valid JSON'):
        calibration_for_arm(arm)


def test_rig_limits_outside_range_warn(tmp_path) -> None:
    path = tmp_path / 'left.json'
    arm = load_rig(write_rig(tmp_path, calibration=str(path))).arm('left')
    data = json.loads(json.dumps(LEROBOT_SO101))
    data['elbow_flex'].update(range_min=1800, range_max=2300)  # +-0.38 rad, rig allows +-1.6
    path.write_text(json.dumps(data))
    c, warnings = calibration_for_arm(arm)
    assert c.source == 'lerobot'
    assert any(w.startswith('left_elbow_flex: rig limits') for w in warnings)
    assert c.to_ticks('elbow_flex', 1.6) == 2300


# ---------------------------------------------------------------- CLI import


def test_cli_import_lerobot(tmp_path, capsys) -> None:
    from bimanual_vla.cli.main import main

    def cli(arm: str, src: Path, out: Path) -> int:
        return main(['calibrate', '--rig', str(rig), '--arm', arm, '--import-lerobot', str(src), '--output', str(out)])

    rig = write_rig(tmp_path)
    src = tmp_path / 'lerobot.json'
    src.write_text(json.dumps(LEROBOT_SO101))
    out = tmp_path / 'cal' / 'left.json'
    assert cli('left', src, out) == 0
    printed = capsys.readouterr().out
    assert f'wrote {out}' in printed and 'shoulder_pan' in printed
    c = load_calibration(out)
    assert c.source == 'lerobot' and c.joints['shoulder_pan'].homing_offset == -1470
    # An existing file is not overwritten without --force.
    assert cli('left', src, out) == 1
    assert 'exists' in capsys.readouterr().err
    # A broken input file fails with exit 2 and writes nothing.
    src.write_text('{}')
    other = tmp_path / 'other.json'
    assert cli('left', src, other) == 2
    assert not other.exists()
    assert cli('nope', src, other) == 2
    assert "has no arm 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------ CLI interactive


class _Output:
    """Collects a subprocess's stdout on a thread so the test can wait for prompts (which end without newline)."""

    def __init__(self, stream) -> None:
        import threading

        self.text = ''
        self._stream = stream
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while chunk := self._stream.read1(4096) if hasattr(self._stream, 'read1') else self._stream.read(1):
            self.text += chunk.decode() if isinstance(chunk, bytes) else chunk

    def wait_for(self, needle: str, after: int = 0, timeout: float = 30.0) -> int:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = self.text.find(needle, after)
            if at >= 0:
                return at + len(needle)
            time.sleep(0.01)
        raise AssertionError(f'{needle!r} not printed; output so far:\n{self.text}')


@pytest.mark.slow
@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])
def test_cli_interactive_calibration_against_emulator(tmp_path, protocol) -> None:
    import subprocess
    import sys

    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    emu = ServoBusEmulator(protocol, [1, 2, 3, 4, 5, 6])
    emu.external_motion = True  # positions change only when the test (the "user") moves them
    port = emu.start()
    try:
        middle = {1: 2500, 2: 1800, 3: 2100, 4: 2048, 5: 3000, 6: 1500}  # raw angles in the middle pose
        for sid, raw in middle.items():
            emu.set_present_position(sid, raw)
        if protocol == 'dynamixel':  # left reversed by LeRobot's Koch leader calibration (elbow_flex)
            emu.servo(3).write_register('drive_mode', 1)
        rig = write_rig(tmp_path, protocol=protocol, port=port)
        out = tmp_path / 'left.json'
        cmd = [sys.executable, '-m', 'bimanual_vla.cli.main', 'calibrate', '--rig', str(rig), '--arm', 'left']
        cmd += ['--output', str(out), '--reverse', 'wrist_roll']
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = _Output(proc.stdout)
        try:
            at = output.wait_for('torque is OFF')
            assert not any(emu.servo(i).torque_enabled for i in range(1, 7))
            at = output.wait_for('press Enter...', at)
            proc.stdin.write(b'\n')
            proc.stdin.flush()
            at = output.wait_for('Step 2/3', at)
            # Homing offsets put the middle pose at mid-scale (2047) in the servo's own registers.
            for sid, raw in middle.items():
                expected = raw - 2047 if protocol == 'feetech' else 2047 - raw
                assert emu.servo(sid).read_register('homing_offset') == expected
                assert emu.servo(sid).present_position == 2047
            # The user swings every joint but the gripper from stop to stop...
            extremes = {1: (1000, 3100), 2: (900, 2800), 3: (1500, 2600), 4: (1200, 2900), 5: (100, 3900)}
            for sid, (low, high) in extremes.items():
                name = JOINTS[sid - 1]['name']
                emu.set_present_position(sid, low)
                at = output.wait_for(f'range {name}: min {low} ', at)
                emu.set_present_position(sid, high)
                at = output.wait_for(f'range {name}: min {low} max {high}', at)
                emu.set_present_position(sid, 2047)
            # ...forgets the gripper, presses Enter (the prompt is already up) and is asked again.
            proc.stdin.write(b'\n')
            proc.stdin.flush()
            at = output.wait_for("['gripper'] barely moved", at)
            emu.set_present_position(6, 2000)
            at = output.wait_for('range gripper: min 2000 max 2047', at)
            emu.set_present_position(6, 2047)
            proc.stdin.write(b'\n')
            proc.stdin.flush()
            at = output.wait_for('CLOSE the gripper', at)
            emu.set_present_position(6, 2001)  # closed: near the low end of its travel
            proc.stdin.write(b'\n')
            proc.stdin.flush()
            assert proc.wait(timeout=30) == 0, output.text
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert f'wrote {out}' in output.text
        cal = load_calibration(out)
        assert cal.source == 'calibrate' and cal.protocol == protocol
        for sid, (low, high) in extremes.items():
            j = cal.joints[JOINTS[sid - 1]['name']]
            assert (j.id, j.range_min, j.range_max, j.zero_ticks) == (sid, low, high, 2047)
            expected = middle[sid] - 2047 if protocol == 'feetech' else 2047 - middle[sid]
            assert j.homing_offset == expected
        assert cal.joints['wrist_roll'].direction == -1 and cal.joints['shoulder_pan'].direction == 1
        grip = cal.joints['gripper']
        assert (grip.range_min, grip.range_max, grip.zero_ticks) == (2000, 2047, 2001)
        assert grip.direction == 1  # closed at the low end: opening increases ticks
        assert cal.to_radians('shoulder_pan', 2047 + 1024) == pytest.approx(math.pi / 2)
        assert cal.to_radians('wrist_roll', 2047 + 1024) == pytest.approx(-math.pi / 2)
        assert not any(emu.servo(i).torque_enabled for i in range(1, 7))  # left limp for the user
        if protocol == 'dynamixel':  # counting forward again, as the file (drive_mode 0) says
            assert [emu.servo(i).read_register('drive_mode') for i in range(1, 7)] == [0] * 6
            assert all(j.drive_mode == 0 for j in cal.joints.values())
        # Each servo's own position limits hold the rig's joint limits in the new ticks, inside the recorded
        # range; wrist_roll is reversed: its upper limit (2.8 rad) is its minimum, round(2047 - 2.8 / K) = 222.
        limits = {1: (1000, 3100), 2: (939, 2800), 3: (1500, 2600), 4: (1200, 2900), 5: (222, 3807), 6: (2000, 2047)}
        for sid, (low, high) in limits.items():
            servo = emu.servo(sid)
            assert (servo.read_register('min_position_limit'), servo.read_register('max_position_limit')) == (low, high)
        if protocol == 'feetech':  # Min_Position_Limit at 9, Max at 11
            assert emu.servo(5).read_bytes(9, 4).hex() == 'de00' + 'df0e'
        else:  # Max_Position_Limit at 48, Min at 52
            assert emu.servo(5).read_bytes(48, 8).hex() == 'df0e0000' + 'de000000'
        assert 'wrist_roll: servo position limits [222, 3807] ticks' in output.text
    finally:
        emu.stop()


def test_cli_interactive_fails_cleanly_without_servos(tmp_path) -> None:
    import subprocess
    import sys

    from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator

    with ServoBusEmulator('feetech', [1, 2, 3, 4, 5, 6], faults=FaultConfig(missing_ids={4})) as emu:
        rig = write_rig(tmp_path, port=emu.port)
        out = tmp_path / 'left.json'
        cmd = [sys.executable, '-m', 'bimanual_vla.cli.main', 'calibrate', '--rig', str(rig), '--arm', 'left']
        proc = subprocess.run(cmd + ['--output', str(out)], input=b'', capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert b'servo(s) [4] do not answer' in proc.stdout
    assert not out.exists()


def test_cli_interactive_tolerates_slow_replies(tmp_path) -> None:
    """Every reply 40 ms late (a USB adapter's latency timer, a busy host): calibration still finds the servos,
    turns torque off and sets the homing offsets; the bus's 10 ms control-rate margin would give up at once."""
    import subprocess
    import sys

    from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator

    with ServoBusEmulator('feetech', [1, 2, 3, 4, 5, 6], faults=FaultConfig(reply_delay_s=0.04)) as emu:
        emu.external_motion = True
        for sid in range(1, 7):
            emu.set_present_position(sid, 2500)
        rig = write_rig(tmp_path, port=emu.port)
        out = tmp_path / 'left.json'
        cmd = [sys.executable, '-m', 'bimanual_vla.cli.main', 'calibrate', '--rig', str(rig), '--arm', 'left']
        proc = subprocess.run(cmd + ['--output', str(out)], input=b'\n', capture_output=True, timeout=120)
        offsets = [emu.servo(sid).read_register('homing_offset') for sid in range(1, 7)]
    text = proc.stdout.decode()
    assert '6 servos found, torque is OFF' in text and 'Step 2/3' in text, text
    assert offsets == [2500 - 2047] * 6
    assert 'input ended before calibration finished; nothing written' in text and not out.exists()
