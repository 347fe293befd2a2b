"""Rig and policy config validation: shipped files load, and each kind of bad file fails clearly."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bimanual_vla.config import (
    ConfigError,
    InferenceConfig,
    load_policy,
    load_rig,
    resolve_rig_path,
    share_dir,
)

SHIPPED_RIGS = ['so101_bimanual', 'koch_bimanual', 'aloha_sim']


def base_rig() -> dict:
    """A small valid rig as plain data; tests break one thing at a time."""
    return {
        'name': 'test_rig',
        'control_rate_hz': 50,
        'urdf': 'urdf/test.urdf',
        'estop_action': 'hold',
        'arms': [
            {
                'name': 'left',
                'protocol': 'feetech',
                'port': '/dev/ttyACM0',
                'baudrate': 1000000,
                'joints': [
                    {'id': 1, 'name': 'shoulder_pan', 'lower': -1.0, 'upper': 1.0},
                    {'id': 2, 'name': 'gripper', 'lower': 0.0, 'upper': 1.5},
                ],
            }
        ],
        'cameras': [{'name': 'base', 'source': 'test_pattern', 'width': 640, 'height': 480, 'fps': 30}],
    }


def write(tmp_path: Path, data: dict, name: str = 'rig.yaml') -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize('rig', SHIPPED_RIGS)
def test_shipped_rigs_load(rig: str) -> None:
    cfg = load_rig(rig)
    assert cfg.name == rig
    assert [a.name for a in cfg.arms] == ['left', 'right']
    assert len(cfg.cameras) == 3
    for arm in cfg.arms:
        assert arm.gripper == 'gripper'
        assert all(j.lower < j.upper for j in arm.joints)


def test_shipped_rig_contents() -> None:
    so101 = load_rig('so101_bimanual')
    assert so101.arm('left').protocol == 'feetech'
    assert so101.arm('left').joint_names == [
        'shoulder_pan',
        'shoulder_lift',
        'elbow_flex',
        'wrist_flex',
        'wrist_roll',
        'gripper',
    ]
    assert so101.arm('right').qualified_joint_names()[0] == 'right_shoulder_pan'
    assert so101.arm('left').joints[4].upper == pytest.approx(2.84121)
    koch = load_rig('koch_bimanual')
    assert {a.protocol for a in koch.arms} == {'dynamixel'}
    aloha = load_rig('aloha_sim')
    assert [c.name for c in aloha.cameras] == ['top', 'left_wrist', 'right_wrist']
    assert aloha.arm('left').joint_names[:6] == [
        'waist',
        'shoulder',
        'elbow',
        'forearm_roll',
        'wrist_angle',
        'wrist_rotate',
    ]
    assert len(aloha.all_joint_names()) == 14


def test_valid_minimal_rig_and_path_resolution(tmp_path: Path) -> None:
    path = write(tmp_path, base_rig())
    cfg = load_rig(path)
    assert cfg.arm('left').joints[1].upper == 1.5
    assert cfg.all_joint_names() == ['left_shoulder_pan', 'left_gripper']
    assert resolve_rig_path('aloha_sim') == share_dir() / 'config' / 'rigs' / 'aloha_sim.yaml'
    with pytest.raises(ConfigError, match="no arm 'middle'"):
        cfg.arm('middle')


def mutate(data: dict, dotted: str, value) -> dict:
    """Set data at a path like 'arms.0.joints.1.lower' (value None deletes the key)."""
    node = data
    parts = dotted.split('.')
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is None:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ('path', 'value', 'field', 'message'),
    [
        ('baud_rate', 57600, 'baud_rate', 'unknown field'),
        ('arms.0.joints.0.lowr', 0.0, 'arms[0].joints[0].lowr', 'unknown field'),
        ('control_rate_hz', 'fast', 'control_rate_hz', 'valid number'),
        ('arms.0.joints.1.id', 'two', 'arms[0].joints[1].id', 'valid integer'),
        ('arms.0.joints.1.name', 'shoulder_pan', 'arms[0].joints', 'duplicate joint name: shoulder_pan'),
        ('arms.0.joints.1.id', 1, 'arms[0].joints', 'duplicate servo id: 1'),
        ('arms.0.joints.1.lower', 2.0, 'arms[0].joints[1]', 'lower (2.0) must be < upper (1.5)'),
        ('arms.0.joints.1.lower', 1.5, 'arms[0].joints[1]', 'must be < upper'),
        ('arms.0.protocol', 'canbus', 'arms[0].protocol', "'feetech', 'dynamixel' or 'sim'"),
        ('estop_action', 'explode', 'estop_action', "'hold' or 'torque_off'"),
        ('arms.0.port', '', 'arms[0]', 'needs a port'),
        ('arms.0.joints.0.id', 300, 'arms[0].joints[0].id', 'less than or equal to 252'),
        ('urdf', None, 'urdf', 'Field required'),
        ('arms', [], 'arms', 'at least 1 item'),
        ('cameras.0.width', -640, 'cameras[0].width', 'greater than 0'),
    ],
)
def test_bad_rig_names_file_and_field(tmp_path: Path, path: str, value, field: str, message: str) -> None:
    rig_file = write(tmp_path, mutate(base_rig(), path, value))
    with pytest.raises(ConfigError) as err:
        load_rig(rig_file)
    text = str(err.value)
    assert text.startswith(f'{rig_file}: {field}'), text
    assert message in text, text


def test_duplicate_arm_and_shared_port_ids(tmp_path: Path) -> None:
    data = base_rig()
    data['arms'].append(dict(data['arms'][0]))
    with pytest.raises(ConfigError, match=r'arms: .*duplicate arm name: left'):
        load_rig(write(tmp_path, data))
    data['arms'][1] = {**data['arms'][0], 'name': 'right'}  # same port, same ids
    with pytest.raises(ConfigError, match=r'duplicate servo id on shared port /dev/ttyACM0: 1, 2'):
        load_rig(write(tmp_path, data))
    data['arms'][1] = {**data['arms'][0], 'name': 'right', 'port': '/dev/ttyACM1'}
    assert [a.name for a in load_rig(write(tmp_path, data)).arms] == ['left', 'right']


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'nope\.yaml: file not found'):
        load_rig(tmp_path / 'nope.yaml')
    with pytest.raises(ConfigError, match=r'config/rigs/no_such_rig\.yaml: file not found'):
        load_rig('no_such_rig')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('name: [unclosed\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_rig(bad)
    bad.write_text('- just\n- a list\n')
    with pytest.raises(ConfigError, match='expected a mapping'):
        load_rig(bad)


def test_nan_limit_rejected(tmp_path: Path) -> None:
    path = tmp_path / 'nan.yaml'
    path.write_text(yaml.safe_dump(base_rig()).replace('upper: 1.5', 'upper: .nan'))
    with pytest.raises(ConfigError, match=r'arms\[0\]\.joints\[1\]: lower and upper must be finite'):
        load_rig(path)


def test_shipped_policy_loads_and_bad_policy_fails(tmp_path: Path) -> None:
    policy = load_policy('default')
    assert policy.inference.num_steps == 5
    assert policy.inference.chunking == 'rtc'
    assert policy.safety.enabled_at_start is False
    # chunks start at the snapshot less the frames' arrival delay, by the checkpoint's own offset unless the
    # file sets one; the schema's default stays the plain snapshot
    assert policy.inference.chunk_start == 'arrival_compensated' and policy.inference.action_time_offset_s is None
    assert InferenceConfig().chunk_start == 'snapshot'
    bad = tmp_path / 'policy.yaml'
    inference = {'chunking': 'magic', 'num_step': 3, 'chunk_start': 'capture', 'action_time_offset_s': -0.02}
    bad.write_text(yaml.safe_dump({'checkpoint': 'x', 'inference': inference}))
    with pytest.raises(ConfigError) as err:
        load_policy(bad)
    text = str(err.value)
    assert f'{bad}: inference.chunking:' in text
    assert f'{bad}: inference.num_step: unknown field' in text
    assert f'{bad}: inference.chunk_start:' in text and f'{bad}: inference.action_time_offset_s:' in text


def test_check_rig_cli(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, '-m', 'bimanual_vla.cli.main', 'check-rig', 'so101_bimanual'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert 'rig so101_bimanual: 2 arm(s), 3 camera(s), control 50 Hz' in ok.stdout
    assert 'left_wrist_roll' in ok.stdout and '[-2.744, +2.841] rad' in ok.stdout
    bad_file = write(tmp_path, mutate(base_rig(), 'arms.0.protocol', 'canbus'))
    bad = subprocess.run(
        [sys.executable, '-m', 'bimanual_vla.cli.main', 'check-rig', str(bad_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert f'error: {bad_file}: arms[0].protocol:' in bad.stderr


# --------------------------------------------------------------------------- safety bounds


@pytest.mark.parametrize(
    ('path', 'value', 'field', 'message'),
    [
        ('arms.0.max_step_rad', 1e9, 'arms[0].max_step_rad', 'must be in (0, 0.2] rad, got 1e+09'),
        ('arms.0.max_step_rad', 0.0, 'arms[0].max_step_rad', 'must be in (0, 0.2] rad, got 0'),
        ('arms.0.command_timeout_s', 1e12, 'arms[0].command_timeout_s', 'must be in (0, 2] s, got 1e+12'),
        ('arms.0.command_timeout_s', -1.0, 'arms[0].command_timeout_s', 'must be in (0, 2] s, got -1'),
        ('arms.0.read_rate_hz', 1e6, 'arms[0].read_rate_hz', 'must be in [10, 1000] Hz, got 1e+06'),
        ('arms.0.read_rate_hz', 1.0, 'arms[0].read_rate_hz', 'must be in [10, 1000] Hz, got 1'),
        ('arms.0.max_velocity_rad_s', 1e9, 'arms[0].max_velocity_rad_s', 'must be in (0, 2*pi] rad/s, got 1e+09'),
        ('arms.0.max_velocity_rad_s', 6.3, 'arms[0].max_velocity_rad_s', 'must be in (0, 2*pi] rad/s, got 6.3'),
        ('arms.0.max_velocity_rad_s', math.nan, 'arms[0].max_velocity_rad_s', 'got nan'),
        ('arms.0.stall_load_fraction', 1.5, 'arms[0].stall_load_fraction', 'must be in (0, 1], got 1.5'),
        ('arms.0.stall_load_fraction', 0.0, 'arms[0].stall_load_fraction', 'must be in (0, 1], got 0'),
        ('arms.0.stall_time_s', 1e9, 'arms[0].stall_time_s', 'must be in (0, 2] s, got 1e+09'),
        ('control_rate_hz', 1e9, 'control_rate_hz', 'must be in [10, 1000] Hz, got 1e+09'),
        ('control_rate_hz', 0.001, 'control_rate_hz', 'must be in [10, 1000] Hz, got 0.001'),
        ('arms.0.joints.0.upper', 1e9, 'arms[0].joints[0]', 'must lie within [-2*pi, 2*pi] and span at most'),
        ('arms.0.joints.0.lower', -6.0, 'arms[0].joints[0]', 'span at most one turn'),  # -6 .. 1: 7 rad
    ],
)
def test_unsafe_rig_settings_refused(tmp_path: Path, path: str, value, field: str, message: str) -> None:
    rig_file = write(tmp_path, mutate(base_rig(), path, value))
    with pytest.raises(ConfigError) as err:
        load_rig(rig_file)
    text = str(err.value)
    assert text == text.strip() and '\n' not in text, text  # one problem, one line
    assert text.startswith(f'{rig_file}: {field}: '), text
    assert message in text, text


@pytest.mark.parametrize(
    ('section', 'field', 'value', 'message'),
    [
        ('safety', 'max_velocity_rad_s', 1e9, 'must be in (0, 2*pi] rad/s, got 1e+09'),
        ('safety', 'max_velocity_rad_s', 0.0, 'must be in (0, 2*pi] rad/s, got 0'),
        ('staleness', 'camera_max_age_s', 1e9, 'must be in (0, 2] s, got 1e+09'),
        ('staleness', 'joint_max_age_s', 1e9, 'must be in (0, 2] s, got 1e+09'),
        ('staleness', 'joint_max_age_s', -0.1, 'must be in (0, 2] s, got -0.1'),
    ],
)
def test_unsafe_policy_settings_refused(tmp_path: Path, section: str, field: str, value: float, message: str) -> None:
    path = write(tmp_path, {'checkpoint': 'x', section: {field: value}}, 'policy.yaml')
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert str(err.value) == f'{path}: {section}.{field}: {message}'


def test_bounds_are_inclusive_at_the_top(tmp_path: Path) -> None:
    data = base_rig()
    data['control_rate_hz'] = 1000
    data['arms'][0].update(
        read_rate_hz=1000,
        command_timeout_s=2.0,
        max_step_rad=0.2,
        max_velocity_rad_s=2 * math.pi,
        stall_load_fraction=1.0,
        stall_time_s=2.0,
    )
    data['arms'][0]['joints'][0].update(lower=-math.pi, upper=math.pi)
    arm = load_rig(write(tmp_path, data)).arm('left')
    assert (arm.command_timeout_s, arm.max_step_rad, arm.max_velocity_rad_s) == (2.0, 0.2, 2 * math.pi)
    policy = {'checkpoint': 'x', 'safety': {'max_velocity_rad_s': 2 * math.pi}}
    policy['staleness'] = {'camera_max_age_s': 2.0, 'joint_max_age_s': 2.0}
    assert load_policy(write(tmp_path, policy, 'policy.yaml')).staleness.camera_max_age_s == 2.0


def test_shipped_configs_within_bounds() -> None:
    for rig in SHIPPED_RIGS:
        for arm in load_rig(rig).arms:
            # the time-based cap leaves the shipped ramp at its nominal rate as it was
            assert arm.max_velocity_rad_s / arm.read_rate_hz >= arm.max_step_rad or arm.protocol == 'sim'
            assert (arm.stall_load_fraction, arm.stall_time_s) == (0.7, 0.3)
    aloha = load_rig('aloha_sim')
    assert all(a.max_velocity_rad_s / aloha.control_rate_hz == a.max_step_rad for a in aloha.arms)
    policy = load_policy('default')
    assert (policy.safety.max_velocity_rad_s, policy.staleness.camera_max_age_s) == (2.0, 0.5)


def test_colliding_qualified_joint_names_refused(tmp_path: Path) -> None:
    data = base_rig()
    left = data['arms'][0]
    left['joints'][0]['name'] = 'shoulder_x'
    other = {**left, 'name': 'left_shoulder', 'port': '/dev/ttyACM1'}
    other['joints'] = [{'id': 1, 'name': 'x', 'lower': -1.0, 'upper': 1.0}]
    data['arms'].append(other)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_rig(path)
    assert str(err.value) == (
        f'{path}: arms: arm and joint names make the same <arm>_<joint> name: '
        'left_shoulder_x (left/shoulder_x and left_shoulder/x)'
    )


def test_oversized_config_refused_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bimanual_vla import config

    rig = tmp_path / 'rig.yaml'
    # Valid YAML (a rig and a long comment), just too big.
    rig.write_text(yaml.safe_dump(base_rig()) + '#' * (1024 * 1024) + '\n')
    policy = tmp_path / 'policy.yaml'
    policy.write_text('checkpoint: x\n' + '#' * (1024 * 1024) + '\n')

    def no_parsing(*args, **kwargs):
        raise AssertionError('an oversized file was parsed')

    monkeypatch.setattr(config.yaml, 'safe_load', no_parsing)
    with pytest.raises(ConfigError) as err:
        load_rig(rig)
    assert str(err.value) == f'{rig}: <top level>: file is larger than 1024 KiB, not a config'
    with pytest.raises(ConfigError) as err:
        load_policy(policy)
    assert str(err.value) == f'{policy}: <top level>: file is larger than 1024 KiB, not a config'
