"""Every topic the stack publishes or subscribes, against what standard ROS tools ask for or offer.

`AUDIT` is the table of docs/architecture.md ("Topics, services and QoS") as data: for each topic the
profile the stack's publisher offers and the profiles standard consumers ask for, and the profile the
stack's subscriber asks for and the profiles standard producers offer. Each pairing is checked with
rmw's own compatibility rule (`rclpy.qos.qos_check_compatible`, what DDS matching does), and the ones
the stack changed are checked again with real rclpy endpoints over Fast DDS: the arm driver on the
byte-level servo emulator and the simulator, against a subscriber or publisher built as the tool
builds it. `ros2 topic echo` and `ros2 bag record` adapt to the publishers they find and `ros2 bag
play` offers what was recorded, so they match whatever a publisher offers.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rclpy.qos import (
    DurabilityPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
    qos_profile_sensor_data,
    qos_profile_system_default,
)

from bimanual_vla import topics

# What standard tools use (sources: rclcpp/rclpy defaults, ros2cli, robot_state_publisher.cpp,
# MoveIt's current_state_monitor_middleware_handle.cpp (QoS(25)), rviz2's display defaults).
DEFAULT = QoSProfile(depth=10)  # create_subscription/create_publisher(..., 10), `ros2 topic pub`, rviz2 displays
SYSTEM_DEFAULT = qos_profile_system_default  # joint_state_broadcaster, diagnostic_updater / aggregator
SENSOR_DATA = qos_profile_sensor_data  # robot_state_publisher's joint_states, camera drivers, rviz2 set to best effort
MOVEIT_STATE = QoSProfile(depth=25)  # MoveIt's CurrentStateMonitor on joint_states
LATCHED_READER = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)  # rviz2 RobotModel, rsp
CLOCK = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)  # rclcpp ClockQoS, time sources
# `ros2 topic pub --qos-reliability best_effort`, a best-effort teleoperation or driver node
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
# `ros2 topic pub --qos-durability transient_local`, a latched publisher
LATCHED_WRITER = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)

ANY_PUBLISHER = 'subscribe_from_any_publisher'  # LATCHED_INPUT_QOS + RELIABLE_QOS + ANY_PUBLISHER_QOS

# topic: (stack publisher's profile, consumers it must reach, stack subscriber's profile, producers it must hear)
AUDIT: dict[str, tuple[QoSProfile | None, list[QoSProfile], QoSProfile | str | None, list[QoSProfile]]] = {
    'cameras/<cam>/image_raw': (topics.SENSOR_QOS, [SENSOR_DATA], topics.SENSOR_QOS, [DEFAULT, SENSOR_DATA]),
    'cameras/<cam>/camera_info': (topics.SENSOR_QOS, [SENSOR_DATA], None, []),
    'cameras/<cam>/image_raw/compressed': (topics.SENSOR_QOS, [SENSOR_DATA], topics.SENSOR_QOS, [DEFAULT, SENSOR_DATA]),
    # the policy node's clock probe and clock_responder's answer: the stack's own, best effort both ways
    topics.CLOCK_SYNC_PING: (topics.SENSOR_QOS, [], topics.SENSOR_QOS, []),
    topics.CLOCK_SYNC_PONG: (topics.SENSOR_QOS, [], topics.SENSOR_QOS, []),
    'joint_states': (
        topics.STATE_QOS,
        [DEFAULT, SYSTEM_DEFAULT, SENSOR_DATA, MOVEIT_STATE],
        topics.SENSOR_QOS,
        [DEFAULT, SYSTEM_DEFAULT, SENSOR_DATA, BEST_EFFORT],
    ),
    'arms/<arm>/joint_command': (
        topics.COMMAND_QOS,
        [DEFAULT, SENSOR_DATA],
        topics.COMMAND_INPUT_QOS,
        [DEFAULT, SYSTEM_DEFAULT, BEST_EFFORT, topics.COMMAND_QOS],
    ),
    'arms/<arm>/joint_trajectory': (
        topics.TRAJECTORY_QOS,
        [DEFAULT, SYSTEM_DEFAULT],
        topics.TRAJECTORY_QOS,
        [DEFAULT, SYSTEM_DEFAULT],
    ),
    'leader/<arm>/joint_states': (topics.STATE_QOS, [DEFAULT, SENSOR_DATA, MOVEIT_STATE], None, []),
    'estop': (topics.LATCHED_QOS, [DEFAULT, LATCHED_READER], ANY_PUBLISHER, [DEFAULT, BEST_EFFORT, LATCHED_WRITER]),
    'policy/task': (
        topics.LATCHED_QOS,
        [DEFAULT, LATCHED_READER],
        ANY_PUBLISHER,
        [DEFAULT, BEST_EFFORT, LATCHED_WRITER],
    ),
    'policy/subtask': (None, [], ANY_PUBLISHER, [DEFAULT, BEST_EFFORT, LATCHED_WRITER]),
    'policy/reasoning': (topics.LATCHED_QOS, [DEFAULT, LATCHED_READER], None, []),
    'policy/action_chunk': (topics.RELIABLE_QOS, [DEFAULT, SENSOR_DATA], None, []),
    'policy/markers': (topics.RELIABLE_QOS, [DEFAULT, SENSOR_DATA], None, []),
    'robot_description': (topics.LATCHED_QOS, [DEFAULT, LATCHED_READER], None, []),
    'sim/success': (topics.LATCHED_QOS, [DEFAULT, LATCHED_READER], None, []),
    'sim/expert_subtask': (topics.LATCHED_QOS, [DEFAULT, LATCHED_READER], None, []),
    'sim/reset_seed': (topics.RELIABLE_QOS, [DEFAULT], ANY_PUBLISHER, [DEFAULT, BEST_EFFORT]),
    'sim/perturb': (topics.RELIABLE_QOS, [DEFAULT], ANY_PUBLISHER, [DEFAULT, BEST_EFFORT]),
    'sim/expert_coach': (topics.RELIABLE_QOS, [DEFAULT], ANY_PUBLISHER, [DEFAULT, BEST_EFFORT]),
    'record/discard': (topics.RELIABLE_QOS, [DEFAULT], None, []),
    'record/control': (None, [], ANY_PUBLISHER, [DEFAULT, BEST_EFFORT, LATCHED_WRITER]),
    'teleop/intervention': (
        topics.LATCHED_QOS,
        [DEFAULT, LATCHED_READER],
        ANY_PUBLISHER,
        [DEFAULT, BEST_EFFORT, LATCHED_WRITER],
    ),
    'teleop/takeover': (None, [], ANY_PUBLISHER, [DEFAULT, BEST_EFFORT, LATCHED_WRITER]),
    '/diagnostics': (topics.DIAGNOSTICS_QOS, [DEFAULT, SYSTEM_DEFAULT], None, []),
    '/clock': (topics.CLOCK_QOS, [CLOCK], topics.CLOCK_QOS, [CLOCK, DEFAULT]),
}


def matches(publisher: QoSProfile, subscription: QoSProfile | str) -> bool:
    """DDS would match them (rmw's rule); a subscribe_from_any_publisher input matches every publisher
    whose profile one of its three subscriptions accepts."""
    if subscription == ANY_PUBLISHER:
        subs = [topics.LATCHED_INPUT_QOS, topics.RELIABLE_QOS, topics.ANY_PUBLISHER_QOS]
        return any(matches(publisher, s) for s in subs)
    compatibility, _ = qos_check_compatible(publisher, subscription)
    return compatibility != QoSCompatibility.ERROR


@pytest.mark.parametrize('topic', sorted(AUDIT))
def test_every_topic_reaches_standard_consumers_and_hears_standard_producers(topic: str) -> None:
    publisher, consumers, subscription, producers = AUDIT[topic]
    for consumer in consumers:
        assert matches(publisher, consumer), f'{topic}: {consumer} receives nothing from the stack'
    for producer in producers:
        assert matches(producer, subscription), f'{topic}: the stack hears nothing from {producer}'


def test_the_audit_covers_every_topic_name_in_topics_py() -> None:
    """Every topic constant of topics.py (services, below its `services` rule, aside) has a row here
    and in the table of docs/architecture.md."""
    import ast
    import inspect

    source = inspect.getsource(topics)
    topic_part = source[: re.search(r'^# -+ services$', source, re.MULTILINE).start()]
    names = {
        node.value.value
        for node in ast.parse(topic_part).body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        and node.targets[0].id.isupper()
    }
    names -= {topics.RECORD_EPISODE}  # the recorder's (bags/record.py): a row in the doc table, not here
    audited = {t for t in AUDIT if '<' not in t}
    assert names <= audited, sorted(names - audited)
    doc = (Path(__file__).resolve().parents[1] / 'docs' / 'architecture.md').read_text()
    section = doc[doc.index('## Topics, services and QoS') :]
    for topic in AUDIT:
        assert f'`{topic}`' in section, f'{topic} is missing from the QoS table in docs/architecture.md'


# ------------------------------------------------------------------------------ real endpoints

IDS = [1, 2]
NAMES = ['shoulder_pan', 'shoulder_lift']


@pytest.fixture
def arm_driver(tmp_path, ros_context):
    """An arm_driver on a two-servo emulated Feetech bus (no calibration file: identity mapping)."""
    from rclpy.parameter import Parameter

    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator
    from bimanual_vla.drivers.servo.node import ArmDriver

    emulator = ServoBusEmulator('feetech', IDS, max_speed_ticks_per_s=4000)
    link = tmp_path / 'ttyARM0'
    os.symlink(emulator.start(), link)
    joints = [{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in zip(IDS, NAMES, strict=True)]
    calibration = tmp_path / 'left.json'  # zero at 2048 ticks, 4096 ticks a turn
    ranges = {'homing_offset': 0, 'range_min': 0, 'range_max': 4095, 'direction': 1, 'zero_ticks': 2048}
    calibration.write_text(
        json.dumps(
            {
                'format': 'bimanual_vla.calibration',
                'version': 1,
                'arm': 'left',
                'protocol': 'feetech',
                'joints': {n: {'id': i, **ranges} for i, n in zip(IDS, NAMES, strict=True)},
            }
        )
    )
    rig = tmp_path / 'rig.yaml'
    arm = {'name': 'left', 'protocol': 'feetech', 'port': str(link), 'calibration': str(calibration), 'joints': joints}
    rig.write_text(yaml.safe_dump({'name': 'qos_rig', 'urdf': 'urdf/none.urdf', 'arms': [arm]}))
    overrides = [Parameter('rig', value=str(rig)), Parameter('arm', value='left')]
    node = ArmDriver(context=ros_context, parameter_overrides=overrides)
    try:
        yield node, emulator
    finally:
        node.destroy_node()
        emulator.stop()


def _executor(context, *nodes):
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    for node in nodes:
        executor.add_node(node)
    return executor


def _goal_rad(emulator, servo_id: int) -> float:
    return (emulator.servo(servo_id).goal_position - 2048) * 2 * math.pi / 4096


@pytest.mark.ros
@pytest.mark.parametrize('consumer', ['default', 'system_default', 'moveit', 'sensor_data'])
def test_arm_driver_joint_states_reach_a_subscriber_built_as_standard_tools_build_it(
    arm_driver, ros_context, spin, consumer
) -> None:
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    qos = {'default': 10, 'system_default': SYSTEM_DEFAULT, 'moveit': 25, 'sensor_data': SENSOR_DATA}[consumer]
    driver, _ = arm_driver
    peer = Node('qos_consumer', context=ros_context)
    got: list[JointState] = []
    peer.create_subscription(JointState, topics.JOINT_STATES, got.append, qos)
    executor = _executor(ros_context, driver, peer)
    try:
        assert spin(executor, lambda: len(got) >= 3, 20.0), f'{consumer}: {len(got)} joint_states'
        assert list(got[-1].name) == ['left_shoulder_pan', 'left_shoulder_lift']
        (info,) = peer.get_publishers_info_by_topic(topics.JOINT_STATES)
        assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    finally:
        executor.shutdown()
        peer.destroy_node()


@pytest.mark.ros
@pytest.mark.parametrize('producer', ['default', 'best_effort', 'policy_node'])
def test_a_joint_command_from_any_publisher_moves_the_arm(arm_driver, ros_context, spin, producer) -> None:
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    qos = {'default': 10, 'best_effort': BEST_EFFORT, 'policy_node': topics.COMMAND_QOS}[producer]
    driver, emulator = arm_driver
    peer = Node('qos_producer', context=ros_context)
    pub = peer.create_publisher(JointState, topics.arm_command('left'), qos)
    executor = _executor(ros_context, driver, peer)
    try:
        assert spin(executor, lambda: pub.get_subscription_count() == 1, 20.0), f'{producer}: not matched'
        target = 0.3
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and abs(_goal_rad(emulator, 1) - target) > 0.01:
            pub.publish(JointState(name=['left_shoulder_pan'], position=[target]))  # streamed, as a policy does
            spin(executor, lambda: False, 0.05)
        assert abs(_goal_rad(emulator, 1) - target) <= 0.01, f'{producer}: goal {_goal_rad(emulator, 1):.3f}'
    finally:
        executor.shutdown()
        peer.destroy_node()


HUNG_SUBSCRIBER = """
import rclpy, sys
from sensor_msgs.msg import JointState
rclpy.init()
node = rclpy.create_node('hung_consumer')
got = []
node.create_subscription(JointState, 'joint_states', got.append, 10)
while not got:
    rclpy.spin_once(node, timeout_sec=0.1)
print('matched', flush=True)
while True:
    rclpy.spin_once(node, timeout_sec=0.1)
"""


@pytest.mark.ros
@pytest.mark.slow
def test_a_hung_reliable_subscriber_stops_neither_joint_states_nor_commands(arm_driver, ros_context, spin) -> None:
    """A reliable subscriber whose process is stopped (SIGSTOP) never acknowledges: the driver's I/O
    loop keeps publishing to everyone else and keeps executing commands."""
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    driver, emulator = arm_driver
    hung = subprocess.Popen([sys.executable, '-c', HUNG_SUBSCRIBER], stdout=subprocess.PIPE, text=True)
    peer = Node('qos_live_consumer', context=ros_context)
    got: list[JointState] = []
    peer.create_subscription(JointState, topics.JOINT_STATES, got.append, 10)
    pub = peer.create_publisher(JointState, topics.arm_command('left'), topics.COMMAND_QOS)
    executor = _executor(ros_context, driver, peer)
    try:
        assert spin(executor, lambda: bool(got), 20.0)
        assert hung.stdout.readline().strip() == 'matched'
        os.kill(hung.pid, signal.SIGSTOP)
        for target in (0.4, -0.4):  # two moves with the consumer hung
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline and abs(_goal_rad(emulator, 2) - target) > 0.01:
                pub.publish(JointState(name=['left_shoulder_lift'], position=[target]))
                spin(executor, lambda: False, 0.05)
            assert abs(_goal_rad(emulator, 2) - target) <= 0.01
        before = len(got)
        assert spin(executor, lambda: len(got) >= before + 20, 20.0), 'joint_states stopped for the live consumer'
    finally:
        os.kill(hung.pid, signal.SIGCONT)
        hung.kill()
        hung.wait()
        executor.shutdown()
        peer.destroy_node()


@pytest.mark.ros
@pytest.mark.slow
def test_sim_rig_joint_states_reach_a_default_subscriber_and_it_takes_any_command_and_reset(ros_context, spin) -> None:
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Int64

    from bimanual_vla.sim.node import SimRig

    sim = SimRig(
        context=ros_context,
        parameter_overrides=[Parameter('render_rate_hz', value=0.0), Parameter('real_time_factor', value=1.0)],
    )
    peer = Node('qos_sim_peer', context=ros_context)
    latest: dict[str, float] = {}

    def on_joints(msg: JointState) -> None:
        latest.update(zip(msg.name, msg.position, strict=True))

    peer.create_subscription(JointState, topics.JOINT_STATES, on_joints, 10)
    command = peer.create_publisher(JointState, topics.arm_command('left'), BEST_EFFORT)
    reset = peer.create_publisher(Int64, topics.SIM_RESET_SEED, BEST_EFFORT)
    executor = _executor(ros_context, sim, peer)
    try:
        assert spin(executor, lambda: len(latest) == 14, 30.0), sorted(latest)
        assert spin(executor, lambda: command.get_subscription_count() == 1, 20.0)
        start = latest['left_waist']
        target = start + 0.3
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and abs(latest['left_waist'] - target) > 0.05:
            command.publish(JointState(name=['left_waist'], position=[target]))
            spin(executor, lambda: False, 0.05)
        assert abs(latest['left_waist'] - target) <= 0.05, (start, latest['left_waist'])
        assert spin(executor, lambda: reset.get_subscription_count() == 1, 20.0)  # the best-effort one of two

        def reset_seen() -> bool:
            reset.publish(Int64(data=7))
            return spin(executor, lambda: sim._pending_reset == 7 or sim.scene.seed == 7, 0.2)

        deadline = time.monotonic() + 20.0
        while not reset_seen() and time.monotonic() < deadline:
            pass
        assert sim._pending_reset == 7 or sim.scene.seed == 7
    finally:
        executor.shutdown()
        sim.destroy_node()
        peer.destroy_node()


@pytest.mark.ros
def test_robot_description_publisher_latches_the_urdf_for_late_subscribers(ros_context, spin) -> None:
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from bimanual_vla.bringup.description_node import RobotDescriptionNode
    from bimanual_vla.bringup.nodes import robot_description

    node = RobotDescriptionNode(context=ros_context, parameter_overrides=[Parameter('rig', value='aloha_sim')])
    peer = Node('qos_rviz_like', context=ros_context)  # created after the URDF went out, as rviz2 often is
    got: list[str] = []
    peer.create_subscription(String, topics.ROBOT_DESCRIPTION, lambda m: got.append(m.data), LATCHED_READER)
    executor = _executor(ros_context, node, peer)
    try:
        assert spin(executor, lambda: bool(got), 20.0)
        assert got == [robot_description('aloha_sim')]
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()
