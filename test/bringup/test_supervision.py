"""A dead policy process does not take the rig down; stopping the rig leaves each arm in its safe state.

`bimanual-vla run` runs as a user starts it, in a process of its own with a terminal (a pty) on its
standard input, on a rig of two Feetech arms whose ports are the servo-bus emulator's ptys (served
from this test process) and a test-pattern camera, with a tiny policy checkpoint for that rig. The
test kills the policy node's process with SIGKILL and watches what the user would see: the bringup
keeps running, the drivers stay connected and answer an e-stop (the terminal's SPACE key and the
topic), `/diagnostics` says why and a new policy process comes up; SIGTERM then stops the rig with
every arm in its configured safe state and no traceback. Assertions read the emulated servos'
registers: what the drivers actually wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bimanual_vla import topics

pytestmark = [pytest.mark.ros, pytest.mark.slow]

IDS = [1, 2, 3, 4, 5, 6]
NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
CLI = Path(sys.executable).with_name('bimanual-vla')


def child_pids(pid: int) -> list[int]:
    """Direct children of process `pid` (from /proc), e.g. the policy node's process under `run`."""
    out = []
    for task in Path(f'/proc/{pid}/task').iterdir():
        with open(task / 'children') as f:
            out += [int(p) for p in f.read().split()]
    return out


def python_children(pid: int) -> list[int]:
    """Children running the spawn-started node processes (not multiprocessing's resource tracker)."""
    found = []
    for child in child_pids(pid):
        try:
            cmdline = Path(f'/proc/{child}/cmdline').read_bytes()
        except OSError:
            continue
        if b'spawn_main' in cmdline:
            found.append(child)
    return found


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')


def write_rig(tmp_path: Path, ports: dict[str, str], estop_action: str) -> Path:
    arms = []
    for arm, port in ports.items():
        calibration = {
            'format': 'bimanual_vla.calibration',
            'version': 1,
            'arm': arm,
            'protocol': 'feetech',
            'joints': {
                n: {'id': i, 'homing_offset': 0, 'range_min': 0, 'range_max': 4095, 'zero_ticks': 2048, 'direction': 1}
                for i, n in zip(IDS, NAMES, strict=True)
            },
        }
        cal = tmp_path / f'{arm}.json'
        cal.write_text(json.dumps(calibration))
        arms.append(
            {
                'name': arm,
                'protocol': 'feetech',
                'port': port,
                'calibration': str(cal),
                'gripper': 'gripper',
                'joints': [{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in zip(IDS, NAMES, strict=True)],
            }
        )
    rig = {
        'name': 'supervised_rig',
        'urdf': 'urdf/so101_bimanual.urdf',
        'estop_action': estop_action,
        'arms': arms,
        'cameras': [{'name': 'base', 'source': 'test_pattern', 'width': 160, 'height': 120, 'fps': 10}],
    }
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(rig))
    return path


@pytest.fixture
def emulators():
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    emus = {arm: ServoBusEmulator('feetech', IDS, max_speed_ticks_per_s=4000) for arm in ('left', 'right')}
    ports = {arm: emu.start() for arm, emu in emus.items()}
    yield emus, ports
    for emu in emus.values():
        emu.stop()


def test_policy_process_killed_rig_keeps_running_and_sigterm_leaves_arms_safe(tmp_path, emulators, ros_context):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import Bool

    from bimanual_vla.learning.tiny_checkpoint import make_tiny_checkpoint

    emus, ports = emulators
    rig = write_rig(tmp_path, ports, estop_action='torque_off')
    checkpoint = make_tiny_checkpoint(tmp_path / 'ckpt', rig=str(rig), image_size=32, chunk_size=10)
    log = open(tmp_path / 'run.log', 'w')
    keyboard, terminal = os.openpty()  # the user's terminal: SPACE stops, r releases
    run = subprocess.Popen(
        [str(CLI), 'run', '--rig', str(rig), '--set', f'policy_node.checkpoint={checkpoint}'],
        stdin=terminal,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'},
    )
    os.close(terminal)
    probe = Node('supervision_probe', context=ros_context)
    statuses: list[dict[str, str]] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == 'bringup: policy_node process':
                statuses.append({kv.key: kv.value for kv in status.values} | {'message': status.message})

    probe.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diagnostics, topics.DIAGNOSTICS_QOS)
    estop = probe.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(probe)

    def spin_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)

    def spun(predicate):
        def check():
            assert run.poll() is None, (tmp_path / 'run.log').read_text()  # the bringup must never exit
            executor.spin_once(timeout_sec=0.05)
            return predicate()

        return check

    def torque(arm: str) -> list[bool]:
        return [emus[arm].servo(i).torque_enabled for i in IDS]

    try:
        # Both drivers take over their arms (torque on), the policy node comes up in its own process.
        for arm in emus:
            wait_for(lambda arm=arm: all(torque(arm)), 120.0, f'{arm} arm torque on')
        first = wait_for(spun(lambda: python_children(run.pid)), 180.0, 'the policy process')
        wait_for(spun(lambda: any(s['state'] == 'running' for s in statuses)), 180.0, 'policy process running')

        os.kill(first[0], signal.SIGKILL)
        # The bringup reports why, and starts a new policy process; it never exits.
        died = wait_for(
            spun(lambda: [s for s in statuses if s['last_exit'] == 'killed by SIGKILL']), 60.0, 'a died status'
        )
        assert died[0]['restarts'] in ('0', '1')
        wait_for(
            spun(lambda: [s for s in statuses if s['restarts'] == '1' and s['state'] == 'running']),
            180.0,
            'the restarted policy process',
        )
        assert run.poll() is None, (tmp_path / 'run.log').read_text()
        second = python_children(run.pid)
        assert second and second[0] != first[0]
        assert all(torque('left')) and all(torque('right'))  # the drivers never let go

        def torque_back_on() -> None:  # by hand, so that the next stop can be seen
            for arm in emus:
                for i in IDS:
                    emus[arm].servo(i).write_register('torque_enable', 1)

        # E-stop still reaches the drivers (estop_action torque_off: the servos are released), from the
        # terminal's SPACE key and from the topic.
        os.write(keyboard, b' ')
        wait_for(spun(lambda: not any(torque('left')) and not any(torque('right'))), 30.0, 'e-stop (key) torque off')
        os.write(keyboard, b'r')
        spin_for(1.0)
        torque_back_on()
        estop.publish(Bool(data=True))
        wait_for(spun(lambda: not any(torque('left')) and not any(torque('right'))), 30.0, 'e-stop (topic) torque off')
        estop.publish(Bool(data=False))
        spin_for(0.5)
        torque_back_on()

        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 0
        assert not any(torque('left')) and not any(torque('right'))  # stopped in the rig's safe state
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        log.close()
        os.close(keyboard)
        executor.shutdown()
        probe.destroy_node()
    output = (tmp_path / 'run.log').read_text()
    assert 'Traceback' not in output, output
    assert 'killed by SIGKILL' in output and 'restarting in' in output


def test_arm_left_holding_its_present_pose_on_close(emulators):
    """estop_action hold: closing the driver writes goal = present position and keeps torque on."""
    from bimanual_vla.config import ArmConfig
    from bimanual_vla.drivers.servo.arm_controller import ArmController
    from bimanual_vla.drivers.servo.calibration import identity_calibration

    emus, ports = emulators
    emu = emus['left']
    arm = ArmConfig(
        name='left',
        protocol='feetech',
        port=ports['left'],
        joints=[{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in zip(IDS, NAMES, strict=True)],
    )
    logs: list[str] = []
    controller = ArmController(
        arm, identity_calibration(arm), max_step_rad=0.05, log=lambda level, message: logs.append(message)
    )
    deadline = time.monotonic() + 10
    while controller.cycle() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert controller.connected
    # A goal the servo is still on its way to (slow servo): stopping must not let it finish the move.
    emu.servo(1).max_speed = 50.0
    controller.submit_command(['left_shoulder_pan'], [1.0])
    for _ in range(5):
        controller.cycle()
        time.sleep(0.01)
    assert emu.servo(1).goal_position != emu.servo(1).present_position
    controller.close()
    assert emu.servo(1).torque_enabled
    assert abs(emu.servo(1).goal_position - emu.servo(1).present_position) <= 2, logs
