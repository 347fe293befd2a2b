"""Simulated arms as emulated servo buses: the real arm_driver drives the MuJoCo rig through a pty.

The fast tests check the generated rig and calibration and the bus at the byte level (our
ServoBus client against SimServoBus, no simulator). The slow test composes sim_rig in servo-bus
mode with the two real ArmDriver nodes exactly as `bimanual-vla run` does, over real Fast DDS.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bimanual_vla.config import ConfigError, load_rig
from bimanual_vla.drivers.servo.calibration import calibration_for_arm
from bimanual_vla.sim.servo_bus import (
    RAD_PER_TICK,
    ZERO_TICKS,
    SimServoBus,
    port_link,
    servo_bus_rig,
    to_ticks,
    to_value,
    write_servo_bus_rig,
)

START = [0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.02239]  # sim_scene's start pose, gripper in metres


@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])
def test_generated_rig_loads_with_matching_calibration(tmp_path: Path, protocol: str) -> None:
    sim_rig = load_rig('aloha_sim')
    path = write_servo_bus_rig(sim_rig, protocol, tmp_path)
    rig = load_rig(path)
    assert rig.name == 'aloha_sim_servo_bus' and rig.sim is None
    assert [a.name for a in rig.arms] == ['left', 'right']
    for arm, sim_arm in zip(rig.arms, sim_rig.arms, strict=True):
        assert arm.protocol == protocol
        assert arm.port == str(tmp_path / f'{arm.name}.tty')
        calib, warnings = calibration_for_arm(arm)
        assert warnings == [] and not calib.is_identity and calib.source == 'manual'
        assert [j.id for j in arm.joints] == [j.id for j in sim_arm.joints]
        for j, sj in zip(arm.joints, sim_arm.joints, strict=True):
            assert (j.lower, j.upper) == (sj.lower, sj.upper)  # ±pi fits in ticks 0..4096: the sim's own limits
            for value in np.linspace(j.lower, j.upper, 11):
                ticks = calib.to_ticks(j.name, float(value))
                assert ticks == to_ticks(float(value))  # driver and simulator agree on every tick
                assert abs(calib.to_radians(j.name, ticks) - value) <= RAD_PER_TICK / 2 + 1e-12
    gripper = rig.arms[0].joints[-1]
    assert (to_ticks(gripper.lower), to_ticks(gripper.upper)) == (ZERO_TICKS + 14, ZERO_TICKS + 37)
    waist = rig.arms[0].joints[0]
    assert (to_ticks(waist.lower), to_ticks(waist.upper)) == (0, 4096)


def test_unknown_protocol_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='servo_bus must be one of'):
        servo_bus_rig(load_rig('aloha_sim'), 'canopen', tmp_path)


@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])
def test_bus_bytes_positions_goals_torque_and_power_cycle(tmp_path: Path, protocol: str) -> None:
    from bimanual_vla.drivers.servo.bus import BusError, ServoBus

    arm = load_rig('aloha_sim').arm('left')
    link = port_link(tmp_path, 'left')
    sim_bus = SimServoBus(arm, protocol, link)
    pty = sim_bus.start(START)
    try:
        assert os.readlink(link) == pty
        ids = sim_bus.ids
        with ServoBus(str(link), protocol) as bus:
            ct = bus.control_table
            present = ct.present_position

            def read_all() -> list[int]:
                replies = bus.sync_read(ids, present.address, present.length)
                return [ct.decode(present, replies[i]) for i in ids]

            assert read_all() == [to_ticks(v) for v in START]
            assert all(bus.read(i, ct.torque_enable.address, 1) == b'\x01' for i in ids)  # powered up holding

            moved = [0.5, -0.4, 0.9, 1.0, 0.2, -2.0, 0.05]
            sim_bus.publish_positions(moved)
            assert read_all() == [to_ticks(v) for v in moved]

            # +pi is tick 4096: the emulated servo takes that goal unclamped
            bus.write(6, ct.goal_position.address, ct.encode(ct.goal_position, 4096))
            assert sim_bus.take_goals() == {'wrist_rotate': pytest.approx(math.pi)}

            goals = {1: to_ticks(0.25), 7: to_ticks(0.04)}
            bus.sync_write(ct.goal_position.address, {i: ct.encode(ct.goal_position, t) for i, t in goals.items()})
            bus.write(3, ct.goal_position.address, ct.encode(ct.goal_position, to_ticks(-0.5)))
            taken = sim_bus.take_goals()
            assert set(taken) == {'waist', 'gripper', 'elbow'}
            assert taken['waist'] == pytest.approx(0.25, abs=RAD_PER_TICK / 2)
            assert taken['gripper'] == pytest.approx(0.04, abs=RAD_PER_TICK / 2)
            assert taken['elbow'] == pytest.approx(-0.5, abs=RAD_PER_TICK / 2)
            assert sim_bus.take_goals() == {}  # each goal is handed over once

            assert sim_bus.torque_off() == []
            bus.write(2, ct.torque_enable.address, b'\x00')
            assert sim_bus.torque_off() == ['shoulder']

            sim_bus.power_cycle(min_instructions=3, max_s=30.0)
            with pytest.raises(BusError):
                bus.ping(1)
            assert all(v is None for v in bus.sync_read(ids, present.address, present.length).values())
            assert sim_bus.emulator.faults.missing_ids == set(ids)  # hidden until update() sees the packets
            sim_bus.update()
            assert read_all() == [to_ticks(v) for v in moved]  # back on the bus
    finally:
        sim_bus.stop()
    assert not link.exists() and not os.path.lexists(link)


def test_tick_conversion_is_centred_and_inverse() -> None:
    assert to_ticks(0.0) == ZERO_TICKS == 2048
    assert to_value(to_ticks(1.0)) == pytest.approx(1.0, abs=RAD_PER_TICK / 2)
    assert to_ticks(-math.pi) == 0


# ---------------------------------------------------------------------------------------------- ROS


@pytest.mark.ros
@pytest.mark.slow
def test_arm_drivers_drive_the_sim_through_emulated_buses(ros_context, spin, tmp_path: Path) -> None:
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Int64

    from bimanual_vla import topics
    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import rig_nodes

    specs = rig_nodes(
        'aloha_sim',
        policy=None,
        sim_overrides={'servo_bus': 'feetech', 'servo_bus_dir': str(tmp_path), 'render_rate_hz': 0.0},
    )
    assert [(s.executable, s.name) for s in specs] == [
        ('sim_rig', 'sim_rig'),
        ('arm_driver', 'arm_driver_left'),
        ('arm_driver', 'arm_driver_right'),
    ]
    assert specs[1].parameters['rig'] == str(tmp_path / 'aloha_sim_servo_bus.yaml')

    probe = Node('servo_bus_probe', context=ros_context)
    lock = threading.Lock()
    latest: dict[str, float] = {}
    with_effort = []

    def on_joints(msg: JointState) -> None:
        with lock:
            latest.update(zip(msg.name, msg.position, strict=True))
            # sim_rig's own joint_states carry physical efforts; arm_driver's carry the emulated servos' load,
            # which the emulator leaves at 0 while the simulator moves them
            if any(msg.effort):
                with_effort.append(msg)

    probe.create_subscription(JointState, topics.JOINT_STATES, on_joints, topics.SENSOR_QOS)
    cmd_pub = probe.create_publisher(JointState, topics.arm_command('left'), topics.COMMAND_QOS)
    estop_pub = probe.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
    reset_pub = probe.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)

    composition = compose(specs, context=ros_context, extra_nodes=[probe])
    sim = composition.node('sim_rig')
    driver_left = composition.node('arm_driver_left')
    names = {arm: [f'{arm}_{j.name}' for j in sim.rig.arm(arm).joints] for arm in ('left', 'right')}
    try:
        assert sim.servo_bus_rig_file == specs[1].parameters['rig']

        def sim_positions(arm: str) -> np.ndarray:
            with sim._lock:
                return sim.scene.joint_positions(arm).copy()

        def driver_positions(arm: str) -> np.ndarray | None:
            with lock:
                if not all(n in latest for n in names[arm]):
                    return None
                return np.array([latest[n] for n in names[arm]])

        def driver_matches_sim(arm: str, tolerance: float) -> bool:
            seen = driver_positions(arm)
            return seen is not None and float(np.max(np.abs(seen - sim_positions(arm)))) <= tolerance

        # Both drivers connect through the ptys and report the sim's joints, to within a tick, at rest.
        assert spin(composition.executor, lambda: driver_matches_sim('left', RAD_PER_TICK), 30.0), (
            driver_positions('left'),
            sim_positions('left'),
        )
        assert spin(composition.executor, lambda: driver_matches_sim('right', RAD_PER_TICK), 10.0)
        assert probe.count_publishers(topics.JOINT_STATES) == 2  # the two drivers; sim_rig publishes none
        assert with_effort == []
        assert driver_left.controller.calibration.source == 'manual'

        # A command to arm_driver moves the simulated joints (gripper in metres).
        start_right = sim_positions('right')
        target = np.array(START) + np.array([0.4, 0.25, -0.3, 0.3, 0.35, -0.5, 0.02])
        command = JointState(name=names['left'], position=target.tolist())
        last_sent = [0.0]

        def keep_commanding() -> None:  # the driver's watchdog holds after 0.5 s without commands
            if time.monotonic() - last_sent[0] > 0.05:
                cmd_pub.publish(command)
                last_sent[0] = time.monotonic()

        tolerance = np.array([0.03] * 6 + [0.003])

        def reached(positions: np.ndarray | None) -> bool:
            return positions is not None and bool(np.all(np.abs(positions - target) <= tolerance))

        def left_reached() -> bool:
            keep_commanding()
            return reached(sim_positions('left')) and reached(driver_positions('left'))

        assert spin(composition.executor, left_reached, 20.0), (sim_positions('left'), target)
        assert sim.servo_buses['left'].goals_received > 0
        assert np.max(np.abs(sim_positions('right') - start_right)) < 0.02  # the other arm held still

        # E-stop through the drivers: commands elsewhere no longer move the sim arm.
        estop_pub.publish(Bool(data=True))
        assert spin(composition.executor, lambda: driver_left.controller.filter.state == 'estop', 5.0)
        held = sim_positions('left')
        goals_before = sim.servo_buses['left'].goals_received
        command = JointState(name=names['left'], position=START)
        deadline = time.monotonic() + 1.5
        spin(composition.executor, lambda: keep_commanding() or time.monotonic() > deadline, 5.0)
        assert np.max(np.abs(sim_positions('left') - held)) < 0.02
        assert sim.servo_buses['left'].goals_received == goals_before
        assert driver_matches_sim('left', 0.01)
        estop_pub.publish(Bool(data=False))
        assert spin(composition.executor, lambda: driver_left.controller.filter.state != 'estop', 5.0)

        # An episode reset power-cycles the servos: the driver restarts from the new pose instead of
        # ramping from its pre-reset goals (which would drag the arm back toward the old target).
        stats = driver_left.controller.stats
        seen_before = (sum(stats.missing_events.values()), stats.disconnects)
        reset_pub.publish(Int64(data=5))
        assert spin(composition.executor, lambda: sim.servo_buses['left'].power_cycles == 1, 5.0)
        assert spin(composition.executor, lambda: driver_matches_sim('left', 0.01), 10.0)
        assert spin(composition.executor, lambda: not driver_left.controller.missing, 10.0)
        # the driver saw the servos go and come back (or, on a loaded machine, the whole link: it reconnected)
        assert (sum(stats.missing_events.values()), stats.disconnects) != seen_before
        waist_target = 0.1
        command = JointState(name=['left_waist'], position=[waist_target])
        worst = [0.0]

        def waist_settled() -> bool:
            keep_commanding()
            waist = float(sim_positions('left')[0])
            worst[0] = max(worst[0], abs(waist))
            return abs(waist - waist_target) < 0.01

        assert spin(composition.executor, waist_settled, 10.0)
        assert worst[0] < waist_target + 0.05  # never swung back toward the pre-reset waist (0.4)
    finally:
        estop_pub.publish(Bool(data=False))
        composition.shutdown()
    assert not os.path.lexists(tmp_path / 'left.tty')  # links removed with the simulator


def test_dart_offsets_are_added_where_a_servo_executes_its_goal(tmp_path: Path) -> None:
    """With buses, the drivers write the expert's clean plan; the simulated servos execute it plus the DART
    offsets, every tick (also between goal writes), never for a limp joint, never under e-stop."""
    from types import SimpleNamespace

    from bimanual_vla.drivers.servo.bus import ServoBus
    from bimanual_vla.sim.node import SimRig
    from bimanual_vla.sim.scene import SimScene

    rig = load_rig('aloha_sim')
    arm = rig.arm('left')
    offsets = {'left': np.array([0.1, -0.05, 0.02, 0.0, 0.0, 0.0, 0.0]), 'right': np.zeros(7)}
    expert = SimpleNamespace(offsets=lambda step: {a: o * (step + 1) for a, o in offsets.items()})
    sim_bus = SimServoBus(arm, 'feetech', port_link(tmp_path, 'left'))
    sim_bus.start(START)
    scene = SimScene(rig, task='transfer_cube', seed=0)
    sim = SimpleNamespace(_expert=expert, _estop=False, servo_buses={'left': sim_bus}, _bus_goals={}, scene=scene)
    apply = SimRig._apply_servo_buses.__get__(sim)
    try:
        with ServoBus(str(port_link(tmp_path, 'left')), 'feetech') as bus:
            ct = bus.control_table
            goal = [0.3, -0.5, 0.8, 0.0, 0.1, 0.0, 0.03]
            bus.sync_write(ct.goal_position.address, {i + 1: ct.encode(ct.goal_position, to_ticks(v))
                                                      for i, v in enumerate(goal)})  # fmt: skip
            bus.ping(1)  # answered after the emulator took the sync write (which has no reply)
            apply()  # step 0: goal + offsets
            wrote = np.array([to_value(to_ticks(v)) for v in goal])
            np.testing.assert_allclose(scene.goal('left'), np.clip(wrote + offsets['left'], *limits(arm)), atol=1e-9)
            scene.steps = 2
            apply()  # no new goal written: the offsets still follow the plan's clock
            np.testing.assert_allclose(scene.goal('left'), wrote + 3 * offsets['left'], atol=1e-9)
            bus.write(2, ct.torque_enable.address, b'\x00')  # shoulder limp: it follows where it is, no offset
            apply()
            assert scene.goal('left')[1] == pytest.approx(scene.joint_positions('left')[1])
            sim._estop = True  # under e-stop the servos hold their goals: nothing moves them
            before = scene.goal('left').copy()
            scene.steps = 9
            apply()
            np.testing.assert_allclose(scene.goal('left')[[0, 2]], before[[0, 2]])
    finally:
        sim_bus.stop()


def limits(arm) -> tuple[np.ndarray, np.ndarray]:
    return np.array([j.lower for j in arm.joints]), np.array([j.upper for j in arm.joints])
