"""Real rclpy over real Fast DDS: two nodes in one executor exchange a JointState."""

from __future__ import annotations

import os

import pytest

from bimanual_vla import topics

pytestmark = pytest.mark.ros


def test_environment_keeps_discovery_on_localhost() -> None:
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert 1 <= int(os.environ['ROS_DOMAIN_ID']) <= 101


def test_two_nodes_exchange_joint_state(ros_context, spin) -> None:
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from bimanual_vla.bringup.executors import NodeThreads

    talker = Node('talker', context=ros_context)
    listener = Node('listener', context=ros_context)
    received: list[JointState] = []
    listener.create_subscription(JointState, topics.JOINT_STATES, received.append, topics.SENSOR_QOS)
    pub = talker.create_publisher(JointState, topics.JOINT_STATES, topics.SENSOR_QOS)
    executor = NodeThreads(context=ros_context)
    executor.add_node(talker)
    executor.add_node(listener)

    msg = JointState()
    msg.header.stamp.sec = 42
    msg.header.stamp.nanosec = 7
    msg.name = ['left_shoulder_pan', 'left_gripper']
    msg.position = [0.25, -1.5]

    assert spin(executor, lambda: pub.get_subscription_count() == 1, 10.0), 'discovery did not match'
    # Best-effort: publish until one sample lands, as a sensor driver would keep publishing.
    for _ in range(100):
        pub.publish(msg)
        if spin(executor, lambda: bool(received), 0.1):
            break
    assert received, 'no JointState received over Fast DDS'
    got = received[0]
    assert list(got.name) == ['left_shoulder_pan', 'left_gripper']
    assert list(got.position) == [0.25, -1.5]
    assert (got.header.stamp.sec, got.header.stamp.nanosec) == (42, 7)
    executor.shutdown()
    talker.destroy_node()
    listener.destroy_node()


def test_qos_profiles_match_contract() -> None:
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    assert topics.SENSOR_QOS.reliability == ReliabilityPolicy.BEST_EFFORT
    assert topics.COMMAND_QOS.reliability == ReliabilityPolicy.RELIABLE and topics.COMMAND_QOS.depth == 1
    for latched in (topics.LATCHED_QOS,):
        assert latched.durability == DurabilityPolicy.TRANSIENT_LOCAL
        assert latched.reliability == ReliabilityPolicy.RELIABLE
    assert topics.camera_image('base') == 'cameras/base/image_raw'
    assert topics.arm_command('left') == 'arms/left/joint_command'
    assert topics.camera_frame('left_wrist') == 'left_wrist_optical_frame'
