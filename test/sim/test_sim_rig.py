"""The sim_rig node over real rclpy/Fast DDS: images, clock, limits, e-stop, reset, and an episode
driven by the scripted expert publishing joint_command from a separate node."""

from __future__ import annotations

import math

import gym_aloha  # noqa: F401  (make test installs the sim extra; a missing one must fail, not skip)
import mujoco  # noqa: F401
import numpy as np
import pytest
from helpers.sim_rig import node_threads, sim_rig_node

from bimanual_vla import topics

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def test_topics_limits_estop_and_reset(ros_context, spin) -> None:
    from rclpy.node import Node
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from std_msgs.msg import Bool, Int64

    sim = sim_rig_node(ros_context, real_time_factor=1.0, render_rate_hz=10.0, seed=4)
    probe = Node('probe', context=ros_context)
    ex = node_threads(ros_context, sim, probe)
    images: dict[str, list[Image]] = {c: [] for c in ('top', 'left_wrist', 'right_wrist')}
    infos: list[CameraInfo] = []
    clocks: list[int] = []
    latest: dict[str, float] = {}
    for cam in images:
        probe.create_subscription(Image, topics.camera_image(cam), images[cam].append, topics.SENSOR_QOS)
    probe.create_subscription(CameraInfo, topics.camera_info('top'), infos.append, topics.SENSOR_QOS)
    probe.create_subscription(Clock, topics.CLOCK, lambda m: clocks.append(_stamp_ns(m.clock)), topics.CLOCK_QOS)

    def on_joints(msg: JointState) -> None:
        latest.update(zip(msg.name, msg.position, strict=True))

    probe.create_subscription(JointState, topics.JOINT_STATES, on_joints, topics.SENSOR_QOS)
    cmd = probe.create_publisher(JointState, topics.arm_command('right'), topics.COMMAND_QOS)
    estop = probe.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
    reset = probe.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
    try:
        # images: size, encoding, frame, sim-time stamps on the control grid
        assert spin(ex, lambda: all(len(v) >= 2 for v in images.values()) and infos and len(latest) == 14, 30.0)
        for cam, msgs in images.items():
            img = msgs[-1]
            assert (img.width, img.height, img.encoding, img.step) == (320, 240, 'rgb8', 960)
            assert len(img.data) == 240 * 960 and img.header.frame_id == f'{cam}_optical_frame'
            assert _stamp_ns(img.header.stamp) % 20_000_000 == 0 and _stamp_ns(img.header.stamp) > 0
        assert infos[-1].k[0] > 0 and infos[-1].header.frame_id == 'top_optical_frame'
        assert clocks == sorted(clocks) and _stamp_ns(images['top'][-1].header.stamp) <= clocks[-1]
        assert set(latest) == {
            f'{a}_{j}'
            for a in ('left', 'right')
            for j in ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate', 'gripper')
        }

        # beyond the limit: clamped to the rig's waist limit (3.14158) and followed there
        assert spin(ex, lambda: cmd.get_subscription_count() > 0, 10.0)
        cmd.publish(JointState(name=['right_waist'], position=[10.0]))
        assert spin(ex, lambda: abs(latest['right_waist'] - 3.14158) < 0.02, 20.0), latest['right_waist']
        # NaN rejected: the goal stays where it was
        cmd.publish(JointState(name=['right_waist'], position=[math.nan]))
        assert spin(ex, lambda: sim._rejected >= 1, 10.0)
        spin(ex, lambda: False, 0.5)
        assert abs(latest['right_waist'] - 3.14158) < 0.02
        assert sim.scene.goal('right')[0] == pytest.approx(3.14158)

        # e-stop: hold, ignore commands; released: follow again
        estop.publish(Bool(data=True))
        assert spin(ex, lambda: sim._estop, 10.0)
        held = latest['right_waist']
        cmd.publish(JointState(name=['right_waist'], position=[0.0]))
        spin(ex, lambda: False, 1.0)
        assert abs(latest['right_waist'] - held) < 0.02
        estop.publish(Bool(data=False))
        assert spin(ex, lambda: not sim._estop, 10.0)
        cmd.publish(JointState(name=['right_waist'], position=[0.6]))
        assert spin(ex, lambda: abs(latest['right_waist'] - 0.6) < 0.03, 20.0)
        assert sim._rejected >= 1

        # reset to a seed: arms back to the start pose, object placed from that seed
        from bimanual_vla.sim.scene import sample_object_poses

        reset.publish(Int64(data=9))
        assert spin(ex, lambda: sim.scene.seed == 9 and abs(latest['right_waist']) < 0.01, 20.0)
        with sim._lock:
            cube = sim.scene.object_pose('red_box_joint')
        assert np.allclose(cube[:2], sample_object_poses('transfer_cube', 9)['red_box_joint'][:2], atol=0.01)
    finally:
        ex.shutdown()
        sim.destroy_node()
        probe.destroy_node()


def test_expert_drives_sim_over_topics_to_success(ros_context, spin) -> None:
    """A separate node plays the scripted expert through arms/<arm>/joint_command, timed by joint_states."""
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool

    from bimanual_vla.config import load_rig
    from bimanual_vla.sim.expert import ScriptedExpert

    seed = 5
    rig = load_rig('aloha_sim')
    expert = ScriptedExpert(rig, 'transfer_cube', seed)
    sim = sim_rig_node(ros_context, real_time_factor=1.0, render_rate_hz=0.0, seed=seed)
    driver = Node('expert_driver', context=ros_context)
    pubs = {
        a: driver.create_publisher(JointState, topics.arm_command(a), topics.COMMAND_QOS) for a in ('left', 'right')
    }
    success: list[bool] = []
    last_step = [-1]
    labels: list[str] = []

    def on_joints(msg: JointState) -> None:
        step = round(_stamp_ns(msg.header.stamp) / 20_000_000)  # the tick that comes next
        if step == last_step[0]:
            return
        last_step[0] = step
        targets, label = expert.act(step)
        labels.append(label)
        for arm, target in targets.items():
            pubs[arm].publish(JointState(name=rig.arm(arm).qualified_joint_names(), position=target.tolist()))

    driver.create_subscription(JointState, topics.JOINT_STATES, on_joints, topics.SENSOR_QOS)
    driver.create_subscription(Bool, topics.SIM_SUCCESS, lambda m: success.append(m.data), topics.RELIABLE_QOS)
    ex = node_threads(ros_context, sim, driver)
    try:
        assert spin(ex, lambda: all(p.get_subscription_count() for p in pubs.values()), 10.0)
        with sim._lock:
            sim._pending_reset = seed  # start the episode now that the expert is connected
        assert spin(ex, lambda: last_step[0] >= expert.num_steps + 10, 60.0), 'expert episode did not finish'
        assert spin(ex, lambda: bool(success) and success[-1], 5.0), f'stage {sim.scene.reward}'
        assert 'grasp the cube with the left gripper' in labels
    finally:
        ex.shutdown()
        sim.destroy_node()
        driver.destroy_node()


def test_builtin_expert_mode_publishes_subtasks_and_commands(ros_context, spin) -> None:
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, String

    sim = sim_rig_node(ros_context, real_time_factor=0.0, render_rate_hz=0.0, expert=True, seed=2, task='insertion')
    probe = Node('probe2', context=ros_context)
    subtasks: list[str] = []
    commands: list[JointState] = []
    success: list[bool] = []
    probe.create_subscription(String, topics.SIM_EXPERT_SUBTASK, lambda m: subtasks.append(m.data), 50)
    probe.create_subscription(JointState, topics.arm_command('left'), commands.append, topics.COMMAND_QOS)
    probe.create_subscription(Bool, topics.SIM_SUCCESS, lambda m: success.append(m.data), topics.LATCHED_QOS)
    ex = node_threads(ros_context, sim, probe)
    try:
        assert spin(ex, lambda: bool(success) and success[-1], 60.0), f'stage {sim.scene.reward}'
        assert 'grasp the peg and the socket' in subtasks and 'insert the peg into the socket' in subtasks
        assert commands and len(commands[-1].position) == 7 and commands[-1].name[0] == 'left_waist'
        # Each command is stamped when it was issued: the target for tick k (acting from k dt to
        # (k + 1) dt) carries the stamp k dt, as a real rig's recorded commands do.
        from bimanual_vla.config import load_rig
        from bimanual_vla.sim.expert import ScriptedExpert

        expert = ScriptedExpert(load_rig('aloha_sim'), 'insertion', 2)
        checked = 0
        for msg in commands:
            k = round(_stamp_ns(msg.header.stamp) / 20_000_000)
            if k < expert.num_steps - 1:
                assert _stamp_ns(msg.header.stamp) == k * 20_000_000
                np.testing.assert_allclose(msg.position, expert.act(k)[0]['left'], atol=1e-9)
                checked += 1
        assert checked > 100
    finally:
        ex.shutdown()
        sim.destroy_node()
        probe.destroy_node()


def test_a_whole_number_for_a_double_parameter_is_taken_as_that_double(ros_context) -> None:
    """`run --set sim_rig.render_rate_hz=0`: YAML makes 0 an integer, which rclpy refuses for a double."""
    from bimanual_vla.bringup.compose import instantiate
    from bimanual_vla.bringup.nodes import NodeSpec
    from bimanual_vla.config import ConfigError

    node = instantiate(NodeSpec('sim_rig', 'sim_rig', {'render_rate_hz': 0, 'real_time_factor': 2}), ros_context)
    try:
        assert node.render_rate_hz == 0.0 and node.real_time_factor == 2.0
        assert node.get_parameter('render_rate_hz').type_.name == 'DOUBLE'
    finally:
        node.destroy_node()
    with pytest.raises(ConfigError) as err:  # a string is still refused, in one line naming the parameter
        instantiate(NodeSpec('sim_rig', 'sim_rig', {'render_rate_hz': 'fast'}), ros_context)
    assert str(err.value) == "node sim_rig: parameter render_rate_hz: must be a floating-point number, got 'fast'"
