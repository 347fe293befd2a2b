"""Strict rig and policy files: no silent type conversions, real baud rates, files that exist.

A rig file drives motors: `baudrate: true` read as 1 baud, or `enabled_at_start: "yes"` read as
True, would be a guess made on the user's behalf. Every such value is refused in one line naming
the file and field; `check-rig` also refuses a rig whose URDF is missing (`run` would crash on it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bimanual_vla.config import ConfigError, check_rig_files, load_policy, load_rig, resolve_rig_path
from bimanual_vla.servo_baud_rates import DYNAMIXEL_BAUD_RATES, FEETECH_BAUD_RATES

REPO = Path(__file__).resolve().parents[1]


def base_rig() -> dict:
    """A small valid rig as plain data; each test breaks one thing."""
    joints = [
        {'id': 1, 'name': 'shoulder_pan', 'lower': -1.0, 'upper': 1.0},
        {'id': 2, 'name': 'gripper', 'lower': 0.0, 'upper': 1.5},
    ]
    return {
        'name': 'test_rig',
        'urdf': 'urdf/test.urdf',
        'arms': [
            {'name': 'left', 'protocol': 'feetech', 'port': '/dev/ttyACM0', 'baudrate': 1000000, 'joints': joints}
        ],
        'cameras': [{'name': 'base', 'source': 'test_pattern', 'width': 640, 'height': 480, 'fps': 30}],
    }


def mutate(data: dict, dotted: str, value) -> dict:
    """Set data at a path like 'arms.0.joints.1.lower'."""
    *parents, last = dotted.split('.')
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value
    return data


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def _check_rig(*rigs: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, '-m', 'bimanual_vla.cli.main', 'check-rig', *rigs]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ('path', 'value', 'field', 'message'),
    [
        ('arms.0.baudrate', True, 'arms[0].baudrate', 'Input should be a valid integer'),
        ('arms.0.baudrate', '1000000', 'arms[0].baudrate', 'Input should be a valid integer'),
        ('arms.0.baudrate', 1000000.0, 'arms[0].baudrate', 'Input should be a valid integer'),
        ('arms.0.baudrate', 9600, 'arms[0].baudrate', '9600 is not a feetech baud rate (one of 38400, 57600'),
        ('arms.0.baudrate', 1, 'arms[0].baudrate', '1 is not a feetech baud rate'),
        ('control_rate_hz', '50', 'control_rate_hz', 'Input should be a valid number'),
        ('control_rate_hz', True, 'control_rate_hz', 'Input should be a valid number'),
        ('arms.0.joints.0.id', '1', 'arms[0].joints[0].id', 'Input should be a valid integer'),
        ('arms.0.joints.0.id', True, 'arms[0].joints[0].id', 'Input should be a valid integer'),
        ('arms.0.joints.0.lower', '-1.0', 'arms[0].joints[0].lower', 'Input should be a valid number'),
        ('arms.0.allow_missing_servos', 'yes', 'arms[0].allow_missing_servos', 'Input should be a valid boolean'),
        ('arms.0.allow_missing_servos', 1, 'arms[0].allow_missing_servos', 'Input should be a valid boolean'),
        ('arms.0.max_step_rad', '0.05', 'arms[0].max_step_rad', 'Input should be a valid number'),
        ('cameras.0.width', '640', 'cameras[0].width', 'Input should be a valid integer'),
        ('cameras.0.fps', '30', 'cameras[0].fps', 'Input should be a valid number'),
        ('name', 7, 'name', 'Input should be a valid string'),
    ],
)
def test_lax_values_are_refused(tmp_path: Path, path: str, value, field: str, message: str) -> None:
    rig_file = write(tmp_path, mutate(base_rig(), path, value))
    with pytest.raises(ConfigError) as err:
        load_rig(rig_file)
    assert str(err.value).startswith(f'{rig_file}: {field}: {message}'), str(err.value)


@pytest.mark.parametrize(('protocol', 'table'), [('feetech', FEETECH_BAUD_RATES), ('dynamixel', DYNAMIXEL_BAUD_RATES)])
def test_every_rate_of_the_servo_table_is_accepted_and_no_other(tmp_path: Path, protocol: str, table) -> None:
    for rate in table.values():
        data = mutate(mutate(base_rig(), 'arms.0.protocol', protocol), 'arms.0.baudrate', rate)
        assert load_rig(write(tmp_path, data)).arms[0].baudrate == rate
    other = 500_000 if protocol == 'dynamixel' else 2_000_000  # each is the other family's rate only
    data = mutate(mutate(base_rig(), 'arms.0.protocol', protocol), 'arms.0.baudrate', other)
    with pytest.raises(ConfigError, match=rf'arms\[0\]\.baudrate: {other} is not a {protocol} baud rate'):
        load_rig(write(tmp_path, data))


def test_a_simulated_arm_needs_no_baud_rate(tmp_path: Path) -> None:
    data = mutate(mutate(base_rig(), 'arms.0.protocol', 'sim'), 'arms.0.baudrate', 123)
    assert load_rig(write(tmp_path, data)).arms[0].baudrate == 123  # never opened: nothing to check against


@pytest.mark.parametrize(
    ('section', 'field', 'value', 'message'),
    [
        ('safety', 'enabled_at_start', 'yes', 'Input should be a valid boolean'),
        ('inference', 'num_steps', '5', 'Input should be a valid integer'),
        ('inference', 'rtc_beta', '5.0', 'Input should be a valid number'),
        ('reasoning', 'enabled', 1, 'Input should be a valid boolean'),
    ],
)
def test_lax_policy_values_are_refused(tmp_path: Path, section: str, field: str, value, message: str) -> None:
    path = tmp_path / 'policy.yaml'
    path.write_text(yaml.safe_dump({'checkpoint': 'x', section: {field: value}}))
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert str(err.value) == f'{path}: {section}.{field}: {message}'


def test_shipped_rigs_name_files_that_exist() -> None:
    for name in ('so101_bimanual', 'so101_sim', 'koch_bimanual', 'aloha_sim'):
        check_rig_files(load_rig(name), resolve_rig_path(name))


def test_check_rig_refuses_a_missing_urdf_in_one_line(tmp_path: Path) -> None:
    rig_file = write(tmp_path, base_rig())  # urdf/test.urdf: not shipped
    result = _check_rig(str(rig_file))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f'error: {rig_file}: urdf: file urdf/test.urdf not found ({REPO}/urdf/test.urdf)'
    ]
    urdf = tmp_path / 'arm.urdf'
    urdf.write_text('<robot name="x"/>')
    ok = _check_rig(str(write(tmp_path, mutate(base_rig(), 'urdf', str(urdf)))))
    assert ok.returncode == 0, ok.stderr
    assert f'urdf: {urdf}' in ok.stdout and 'not found' not in ok.stdout


@pytest.mark.parametrize(
    ('sim', 'line'),
    [
        ({'seed': 'abc'}, 'sim.seed: Input should be a valid integer'),
        ({'sed': 3}, 'sim.sed: unknown field (check the spelling)'),
        ({'real_time_factor': '1'}, 'sim.real_time_factor: Input should be a valid number'),
    ],
)
def test_check_rig_refuses_a_bad_sim_block_in_one_line(tmp_path: Path, sim: dict, line: str) -> None:
    data = yaml.safe_load(resolve_rig_path('aloha_sim').read_text())
    data['urdf'] = str(REPO / data['urdf'])
    data['sim'] = {**data['sim'], **sim}
    rig_file = write(tmp_path, data)
    result = _check_rig(str(rig_file))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f'error: {rig_file}: {line}']
