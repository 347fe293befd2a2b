"""Every executable a launch file can start takes the ROS arguments launch_ros appends to it.

launch_ros's Node action runs `<executable> [arguments] --ros-args -r __node:=<name> --params-file
<file> -r <from>:=<to>` (a bare `--ros-args` when it has none of them), so every console script in
setup.py, the `bimanual-vla` CLI included, must accept and strip them. Each is run here as a
subprocess, the way launch runs it, with `--ros-args -r __node:=x -p ...`: the node must take the
name (it shows in its log or error line) and the command must do its job, never stop at
"unrecognized arguments". The CLI is given `-p a:=1`; a node executable refuses a parameter it does
not declare (bimanual_vla/node_parameters.py), so it is given one it declares (`use_sim_time`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bimanual_vla.cli.main import strip_ros_args

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROS_ARGS = ['--ros-args', '-r', '__node:=x', '-p', 'a:=1']
NODE_ROS_ARGS = ['--ros-args', '-r', '__node:=x', '-p', 'use_sim_time:=false']


def console_scripts() -> set[str]:
    return set(re.findall(r"'([\w-]+) = [\w.]+:\w+'", (ROOT / 'setup.py').read_text()))


def run_until(command: list[str], pattern: str | None, timeout: float = 120.0) -> tuple[int, str]:
    """Run `command`; once its output matches `pattern`, stop it with SIGINT (as launch does at
    shutdown). With no pattern, let it finish. Returns (exit status, output)."""
    log = Path(os.environ.get('TMPDIR', '/tmp')) / f'ros_args_{os.getpid()}_{time.monotonic_ns()}.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, 'PYTHONUNBUFFERED': '1'}
        )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if pattern and re.search(pattern, log.read_text()):
                    proc.send_signal(signal.SIGINT)
                    proc.wait(timeout=60)
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    log.unlink()
    return proc.returncode, text


def test_strip_ros_args_leaves_the_cli_arguments() -> None:
    assert strip_ros_args(['record', 'out', *ROS_ARGS]) == ['record', 'out']
    assert strip_ros_args(['record', 'out', '--ros-args']) == ['record', 'out']  # launch_ros with nothing to add
    assert strip_ros_args(['replay', 'b', '--ros-args', '-r', '__node:=x', '--', '--rate', '2']) == [
        'replay',
        'b',
        '--rate',
        '2',
    ]
    assert strip_ros_args(['check-rig', 'x.yaml']) == ['check-rig', 'x.yaml']
    with pytest.raises(ValueError, match="invalid ROS arguments: Couldn't parse remap rule"):
        strip_ros_args(['check-rig', '--ros-args', '-r', 'nonsense'])


def test_every_console_script_is_covered_here() -> None:
    covered = {'bimanual-vla', 'bag_record', 'bag_replay', 'estop_input', 'clock_responder'}
    assert console_scripts() == set(NODE_SCRIPTS) | covered


def test_clock_responder_takes_ros_arguments_and_stops_cleanly_on_sigint() -> None:
    """The robot half's clock_responder declares no required parameter: it runs until launch stops it."""
    process = subprocess.Popen(
        [str(BIN / 'clock_responder'), *NODE_ROS_ARGS], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    time.sleep(3.0)
    assert process.poll() is None, process.communicate()[0]  # still running: the arguments were accepted
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert 'Traceback' not in output and 'unrecognized arguments' not in output


def test_the_cli_takes_ros_arguments_and_refuses_bad_ones_in_one_line() -> None:
    done = subprocess.run(
        [str(BIN / 'bimanual-vla'), 'check-rig', 'aloha_sim', *ROS_ARGS], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert 'aloha_sim' in done.stdout
    bad = subprocess.run(
        [str(BIN / 'bimanual-vla'), 'check-rig', 'aloha_sim', '--ros-args', '-r', 'nonsense'],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "bimanual-vla: error: invalid ROS arguments: Couldn't parse remap rule: '-r nonsense'. "
        'Error: Expected lexeme type (19) not found, search ended at index 8'
    ]


@pytest.mark.ros
@pytest.mark.slow
def test_record_as_rig_launch_starts_it(tmp_path) -> None:
    """rig.launch.py / sim.launch.py `record:=DIR`: the recorder's exact command line plus ROS arguments."""
    from bimanual_vla.bringup.launch_actions import recorder_process

    process = recorder_process('aloha_sim', str(tmp_path / 'bag'), '0')
    command = [str(BIN / process.executable), *process.arguments, *ROS_ARGS]
    status, output = run_until(command, r'\[x\]: recording')
    assert status == 0, output
    assert 'unrecognized arguments' not in output
    assert (tmp_path / 'bag' / 'metadata.yaml').is_file(), output


@pytest.mark.ros
@pytest.mark.slow
def test_replay_as_replay_launch_starts_it(tmp_path) -> None:
    from helpers.datasets import BagSpec, write_bag

    from bimanual_vla.bringup.launch_actions import replayer_process

    bag = write_bag(tmp_path / 'bag', BagSpec(end_s=1.0, episodes=[('a', 0.0, 1.0)]))
    process = replayer_process(str(bag), '4.0')
    status, output = run_until([str(BIN / process.executable), *process.arguments, *ROS_ARGS], None)
    assert status == 0, output
    assert 'unrecognized arguments' not in output


# Node executables without their required parameter: they got as far as declaring it, under the name given.
NODE_SCRIPTS = {
    'arm_driver': 'arm_driver: error: node x: parameter "rig" is required (a rig YAML path or name)',
    'camera_driver': 'camera_driver: error: node x: parameter "rig" is required (a rig YAML path or name)',
    'policy_node': 'policy_node: error: node x: parameter "rig" is required (a rig YAML path or name)',
    'robot_description_publisher': (
        'robot_description_publisher: error: node x: parameter "rig" is required (a rig YAML path or name)'
    ),
    'sim_rig': 'sim_rig: error: {tmp}/missing.yaml: file not found',
    'teleop': 'teleop: error: node x: parameter "rig" is required (a rig YAML path or name)',
    'bag_record': 'bag_record: error: bag_recorder: parameter "output" (the bag directory to create) is required',
    'bag_replay': 'bag_replay: error: bag_player: parameter "bag" (the bag to replay) is required',
}


@pytest.mark.ros
@pytest.mark.parametrize('script', sorted(NODE_SCRIPTS))
def test_node_scripts_take_ros_arguments(script: str, tmp_path) -> None:
    extra = ['-p', f'rig:={tmp_path}/missing.yaml'] if script == 'sim_rig' else []
    done = subprocess.run([str(BIN / script), *NODE_ROS_ARGS, *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if 'error' in line]
    assert lines == [NODE_SCRIPTS[script].format(tmp=tmp_path)], done.stderr


@pytest.mark.ros
@pytest.mark.parametrize(
    ('script', 'parameters', 'expected'),
    [
        (
            'bag_record',
            ['output:={tmp}'],
            'bag_record: error: {tmp} exists already; a bag is only ever written to a new directory',
        ),
        (
            'bag_record',
            ['output:={tmp}/bag', 'rig:={tmp}/missing.yaml'],
            'bag_record: error: {tmp}/missing.yaml: file not found',
        ),
        (
            'bag_replay',
            ['bag:={tmp}/missing'],
            'bag_replay: error: {tmp}/missing: no such bag (neither a rosbag2 directory nor an .mcap file)',
        ),
        (
            'bag_replay',
            ['bag:={tmp}/missing', 'rate:=fast'],
            "bag_replay: error: parameter rate: Trying to set parameter 'rate' to 'fast' of type 'STRING', "
            "expecting type 'DOUBLE'",
        ),
    ],
    ids=['output-exists', 'rig-missing', 'bag-missing', 'rate-type'],
)
def test_bag_scripts_refuse_bad_parameters_in_one_line(
    script: str, parameters: list[str], expected: str, tmp_path
) -> None:
    extra = [arg for p in parameters for arg in ('-p', p.format(tmp=tmp_path))]
    done = subprocess.run([str(BIN / script), *NODE_ROS_ARGS, *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [expected.format(tmp=tmp_path)]


@pytest.mark.ros
@pytest.mark.slow
def test_estop_input_and_bag_scripts_take_ros_arguments(tmp_path) -> None:
    status, output = run_until([str(BIN / 'estop_input'), *NODE_ROS_ARGS], r'\[x\]: ')
    assert status == 0, output
    bag = tmp_path / 'bag'
    status, output = run_until(
        [str(BIN / 'bag_record'), *ROS_ARGS, '-p', f'output:={bag}', '-p', 'all:=true'], r'\[x\]: recording'
    )
    assert status == 0 and (bag / 'metadata.yaml').is_file(), output
    status, output = run_until([str(BIN / 'bag_replay'), *ROS_ARGS, '-p', f'bag:={bag}'], None)
    assert status == 0, output
