"""CommandOutput: the messages each command mode puts on the arms' topics, read back over Fast DDS."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla import topics
from bimanual_vla.policy_node.chunking import Chunk, ChunkExecutor
from bimanual_vla.policy_node.safety import CommandGate

pytestmark = pytest.mark.ros

ARMS = {'left': (['left_a', 'left_b'], np.array([0, 1])), 'right': (['right_a'], np.array([2]))}


def setup(ros_context, spin, mode: str):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from bimanual_vla.policy_node.command_output import CommandOutput

    node = Node('command_output_test', context=ros_context)
    gate = CommandGate(['left_a', 'left_b', 'right_a'], -np.ones(3), np.ones(3), 0.04, enabled=True)
    output = CommandOutput(node, mode, ARMS, gate, 0.02)
    got: dict[str, list] = {'left': [], 'right': []}
    msg_type, topic = (JointState, topics.arm_command) if mode == 'tick' else (JointTrajectory, topics.arm_trajectory)
    for arm in ARMS:
        node.create_subscription(msg_type, topic(arm), got[arm].append, topics.TRAJECTORY_QOS)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    assert spin(executor, lambda: all(p.get_subscription_count() == 1 for p in output._pubs.values()), 10)
    return node, gate, output, got, executor


def test_tick_mode_sends_each_arm_its_columns_of_the_gated_command(ros_context, spin) -> None:
    node, gate, output, got, executor = setup(ros_context, spin, 'tick')
    ex = ChunkExecutor('naive')
    ex.add(Chunk(np.array([[0.01, 0.02, 0.03]] * 3), t0=5.0, dt=0.02), now=5.0)
    result = gate.step(ex.step(5.0).action, measured=np.zeros(3), inputs_fresh=True)
    out = output.decide(5.0, result, ex)
    assert out is not None and output.publish(out)
    assert spin(executor, lambda: got['left'] and got['right'], 5)
    assert list(got['left'][0].name) == ['left_a', 'left_b'] and list(got['left'][0].position) == [0.01, 0.02]
    assert list(got['right'][0].position) == [0.03] and got['right'][0].header.stamp.sec == 5
    node.destroy_node()


def test_trajectory_mode_sends_points_per_arm_then_an_empty_stop(ros_context, spin) -> None:
    node, gate, output, got, executor = setup(ros_context, spin, 'trajectory')
    ex = ChunkExecutor('naive')
    ex.add(Chunk(np.array([[0.0, 0.0, 0.0], [0.02, -0.02, 0.01], [0.04, -0.04, 0.02]]), t0=5.0, dt=0.02), now=5.0)
    out = output.decide(5.0, gate.step(ex.step(5.0).action, measured=np.zeros(3), inputs_fresh=True), ex)
    assert out is not None and output.publish(out)
    assert spin(executor, lambda: len(got['left']) == 1 and len(got['right']) == 1, 5)
    gate.set_estop(True)
    stop = output.decide(5.02, gate.step(ex.step(5.02).action, measured=np.zeros(3), inputs_fresh=True), ex)
    assert stop is not None and not output.publish(stop)  # a stop carries no motion
    assert spin(executor, lambda: len(got['left']) == 2 and len(got['right']) == 2, 5)
    left, right = got['left'][0], got['right'][0]
    assert list(left.joint_names) == ['left_a', 'left_b'] and list(right.joint_names) == ['right_a']
    assert [list(p.positions) for p in left.points] == [[0.0, 0.0], [0.02, -0.02], [0.04, -0.04]]
    assert [list(p.positions) for p in right.points] == [[0.0], [0.01], [0.02]]
    assert [p.time_from_start.nanosec for p in right.points] == [0, 20_000_000, 40_000_000]
    assert left.header.stamp.sec == 5 and left.header.stamp.nanosec == 0
    assert list(got['left'][1].joint_names) == ['left_a', 'left_b'] and got['left'][1].points == []
    node.destroy_node()
