"""A new user's first runs: no traceback, one line saying what is wrong, the rig up wherever it can be.

`run` on a real rig (here: emulated Feetech buses on ptys, cameras unplugged) without a checkpoint
for it starts the drivers and cameras with the policy off; every bad policy file, checkpoint or
`--set` value of `run`, `eval-sim`, `demo` and of the node executables ends in one line naming the
file or parameter, exit status 2, before anything moves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bimanual_vla.config import resolve_rig_path, share_dir
from bimanual_vla.node_parameters import NODE_PARAMETERS

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CHECKPOINT = share_dir() / 'checkpoints' / 'aloha_transfer_cube'
POLICY_NODE_PARAMETERS = ', '.join(sorted(NODE_PARAMETERS['policy_node']))  # as the error lists them


def cli(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, '-m', 'bimanual_vla.cli.main', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)


def one_error_line(result: subprocess.CompletedProcess[str], *, logs: bool = False) -> str:
    """The single line a failed command printed (exit status 2, nothing else on stderr).

    `logs`: nodes started before the failure may have logged (`[INFO] [...]` lines): leave those out.
    """
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not (logs and line.startswith('['))]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def so101_on_ptys(tmp_path: Path):
    """The shipped so101_bimanual rig with its arms on emulated buses and its cameras unplugged."""
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    emulators = {arm: ServoBusEmulator('feetech', range(1, 7)) for arm in ('left', 'right')}
    data = yaml.safe_load(resolve_rig_path('so101_bimanual').read_text())
    data['urdf'] = str(share_dir() / data['urdf'])
    for arm in data['arms']:
        arm['port'] = emulators[arm['name']].start()
        arm['calibration'] = str(tmp_path / f'{arm["name"]}.json')  # none yet: a first run
    for n, cam in enumerate(data['cameras']):
        cam['source'] = f'/dev/video{90 + n}'
    rig = tmp_path / 'so101_ptys.yaml'
    rig.write_text(yaml.safe_dump(data))
    try:
        yield rig, emulators
    finally:
        for emulator in emulators.values():
            emulator.stop()


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_dir(), reason='the shipped ALOHA checkpoint is not installed')
@pytest.mark.parametrize('policy', [[], ['--policy', 'none']])
def test_first_run_on_a_real_rig_starts_drivers_and_cameras_with_the_policy_off(so101_on_ptys, policy) -> None:
    rig, emulators = so101_on_ptys
    result = cli('run', '--rig', str(rig), '--duration', '6', '--no-estop-key', *policy)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert 'Traceback' not in output
    running = [line for line in result.stdout.splitlines() if line.startswith('running ')]
    assert running == [
        f'running {rig}: robot_description_publisher, arm_driver_left, arm_driver_right, camera_driver_base, '
        'camera_driver_left_wrist, camera_driver_right_wrist'
    ]
    assert 'arm left: connected on' in output and 'arm right: connected on' in output
    assert all(e.instructions_received > 100 for e in emulators.values())  # the drivers read and wrote the buses
    for n, cam in enumerate(('base', 'left_wrist', 'right_wrist')):
        lines = [line for line in output.splitlines() if f'/dev/video{90 + n} does not exist' in line]
        assert len(lines) == 1 and f'camera {cam}: camera device' in lines[0], output
    policy_lines = [line for line in output.splitlines() if 'policy off' in line]
    if policy:
        assert policy_lines == []
    else:
        assert len(policy_lines) == 1, output
        line = policy_lines[0]
        default_policy = share_dir() / 'config' / 'policy' / 'default.yaml'
        assert line.startswith(
            f'run: policy off: {default_policy}: checkpoint: {SHIPPED_CHECKPOINT}: checkpoint joints ['
        )
        assert "are not joints of rig 'so101_bimanual'; to drive this rig with a policy" in line
        assert 'bimanual-vla record' in line and 'bimanual-vla train' in line
        assert '--set policy_node.checkpoint=DIR' in line


@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        (
            ['--set', 'policy_node.enabled=maybe'],
            "error: --set policy_node.enabled: must be true or false, got 'maybe'",
        ),
        (
            ['--set', 'policy_node.inference.num_steps=-1'],
            'error: --set policy_node.inference.num_steps: policy_node declares no parameter inference.num_steps '
            f'(its parameters: {POLICY_NODE_PARAMETERS})',
        ),
        (['--set', 'sim_rig.seed=abc'], "error: --set sim_rig.seed: must be an integer, got 'abc'"),
        (['--set', 'sim_rig.seed=1.5'], 'error: --set sim_rig.seed: must be an integer, got 1.5'),
        (
            ['--set', 'policy_node.markers_every_n_chunks=true'],
            'error: --set policy_node.markers_every_n_chunks: must be an integer, got True',
        ),
        (
            ['--set', 'camera_driver_top.source=0'],
            'error: --set names unknown node camera_driver_top; nodes: sim_rig, policy_node',
        ),
        (['--set', 'policy_node'], "error: --set expects NODE.PARAM=VALUE, got 'policy_node'"),
        (
            ['--set', 'policy_node.checkpoint=/nonexistent/ckpt'],
            'error: --set policy_node.checkpoint: /nonexistent/ckpt: checkpoint directory not found',
        ),
    ],
)
def test_bad_set_values_end_in_one_line_before_anything_starts(args: list[str], expected: str) -> None:
    result = cli('run', '--rig', 'aloha_sim', '--duration', '1', '--no-estop-key', *args, timeout=60)
    assert one_error_line(result) == expected


def test_a_bad_policy_file_ends_in_one_line(tmp_path: Path) -> None:
    policy = tmp_path / 'policy.yaml'
    policy.write_text(yaml.safe_dump({'checkpoint': str(SHIPPED_CHECKPOINT), 'inference': {'num_step': 3}}))
    result = cli('run', '--rig', 'aloha_sim', '--policy', str(policy), '--no-estop-key', timeout=60)
    assert one_error_line(result) == f'error: {policy}: inference.num_step: unknown field (check the spelling)'
    missing = cli('run', '--rig', 'aloha_sim', '--policy', str(tmp_path / 'nope.yaml'), '--no-estop-key', timeout=60)
    assert one_error_line(missing) == f'error: {tmp_path / "nope.yaml"}: file not found'


def test_a_chosen_checkpoint_that_does_not_fit_the_rig_is_an_error_not_a_silent_policy_off(
    tiny_checkpoint: Path, so101_on_ptys
) -> None:
    rig, _ = so101_on_ptys
    result = cli('run', '--rig', str(rig), '--set', f'policy_node.checkpoint={tiny_checkpoint}', '--no-estop-key')
    line = one_error_line(result)
    assert line.startswith(f'error: --set policy_node.checkpoint: {tiny_checkpoint}: checkpoint joints ['), line
    assert line.endswith("are not joints of rig 'so101_bimanual'"), line


def test_a_corrupt_checkpoint_metadata_file_is_named_in_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / 'broken'
    shutil.copytree(tiny_checkpoint, broken)
    meta = json.loads((broken / 'bimanual_vla.json').read_text())
    meta['chunk_size'] = 0
    (broken / 'bimanual_vla.json').write_text(json.dumps(meta))
    result = cli('run', '--rig', 'aloha_sim', '--set', f'policy_node.checkpoint={broken}', '--no-estop-key')
    assert one_error_line(result) == (
        f'error: --set policy_node.checkpoint: {broken}/bimanual_vla.json: chunk_size: Input should be greater than 0'
    )


@pytest.mark.slow
def test_weights_that_fail_to_load_in_the_policy_process_end_in_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / 'broken'
    shutil.copytree(tiny_checkpoint, broken)
    (broken / 'model.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"not": "a header"}')
    result = cli('run', '--rig', 'aloha_sim', '--set', f'policy_node.checkpoint={broken}', '--no-estop-key')
    line = one_error_line(result)
    assert line.startswith(f'error: policy_node: {broken}/model.safetensors: not a readable safetensors file'), line


def test_eval_sim_refuses_a_bad_checkpoint_or_policy_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / 'out'
    result = cli('eval-sim', '--checkpoint', str(tmp_path / 'none'), '--out', str(out), '--episodes', '1')
    assert one_error_line(result) == f'error: --checkpoint: {tmp_path / "none"}: checkpoint directory not found'
    policy = tmp_path / 'policy.yaml'
    policy.write_text('checkpoint: x\nsafety: {enabled_at_start: yes please}\n')
    result = cli('eval-sim', '--checkpoint', str(SHIPPED_CHECKPOINT), '--policy', str(policy), '--out', str(out))
    assert one_error_line(result) == f'error: {policy}: safety.enabled_at_start: Input should be a valid boolean'
    assert not out.exists()


def test_demo_refuses_a_policy_driver_it_has_no_checkpoint_for_in_one_line(tmp_path: Path) -> None:
    result = cli('demo', '--driver', 'policy', '--task', 'insertion', '--out', str(tmp_path / 'demo'))
    line = one_error_line(result)
    assert line.startswith("error: the default policy's checkpoint was trained on "), line
    assert line.endswith('use --driver expert for insertion'), line


def test_demo_task_all_refuses_before_anything_starts_when_one_task_cannot_be_driven(tmp_path: Path) -> None:
    result = cli('demo', '--task', 'all', '--driver', 'policy', '--out', str(tmp_path / 'demo'))
    assert one_error_line(result).endswith('use --driver expert for insertion')
    assert not (tmp_path / 'demo').exists()  # not even the first task ran


@pytest.mark.parametrize(
    ('executable', 'params', 'expected'),
    [
        (
            'policy_node',
            ['rig:=aloha_sim', 'enabled:=maybe'],
            "policy_node: error: parameter enabled: must be true or false, got 'maybe'",
        ),
        (
            'policy_node',
            ['rig:=aloha_sim', 'inference.num_steps:=-1'],
            'policy_node: error: parameter inference.num_steps: policy_node declares no parameter '
            f'inference.num_steps (its parameters: {POLICY_NODE_PARAMETERS})',
        ),
        (
            'policy_node',
            ['rig:=aloha_sim', 'policy:=/nonexistent/policy.yaml'],
            'policy_node: error: /nonexistent/policy.yaml: file not found',
        ),
        (
            'sim_rig',
            ['seed:=abc'],
            "sim_rig: error: parameter seed: must be an integer, got 'abc'",
        ),
        (
            'camera_driver',
            ['rig:=so101_bimanual', 'camera:=base', 'reconnect_max_s:=5'],
            'camera_driver: error: parameter reconnect_max_s: must be a floating-point number (write 5.0), got 5',
        ),
        (
            'arm_driver',
            ['rig:=so101_bimanual', 'arm:=left', 'port:=/dev/ttyUSB0'],
            'arm_driver: error: parameter port: arm_driver declares no parameter port (its parameters: arm, '
            'calibration, command_timeout_s, estop_action, max_step_rad, max_velocity_rad_s, read_rate_hz, rig, '
            'start_type_description_service, torque_off_on_exit, torque_on_start, use_sim_time)',
        ),
        (
            'estop_input',
            ['keyboard:=false', 'mode:=1'],
            'estop_input: error: parameter mode: must be a string, got 1',
        ),
    ],
)
def test_node_executables_refuse_bad_parameters_in_one_line(executable: str, params: list[str], expected: str) -> None:
    cmd = [str(Path(sys.executable).parent / executable), '--ros-args']  # the console script launch starts
    for param in params:
        cmd += ['-p', param]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert one_error_line(result) == expected


def test_a_bad_calibration_file_ends_in_one_line(so101_on_ptys) -> None:
    rig, _ = so101_on_ptys
    calibration = Path(yaml.safe_load(rig.read_text())['arms'][0]['calibration'])
    calibration.write_text('{"format": "bimanual_vla.calibration", "arm": "left"')  # cut short
    result = cli('run', '--rig', str(rig), '--policy', 'none', '--no-estop-key', '--duration', '5')
    line = one_error_line(result, logs=True)
    assert line.startswith(f'error: {calibration}: not valid JSON: '), line


def test_a_bad_estop_key_ends_in_one_line() -> None:
    result = cli('run', '--rig', 'aloha_sim', '--policy', 'none', '--estop-device-key', 'NOPE', timeout=60)
    assert one_error_line(result).startswith("error: --estop-device-key: unknown key 'NOPE': use a number")
