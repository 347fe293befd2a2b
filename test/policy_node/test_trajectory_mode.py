"""The policy node with ``command_mode: trajectory`` driving the simulated rig (sim_rig plays the trajectories)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers.policy_node import MAX_VEL, RATE, write_policy
from helpers.sim_rig import node_threads, sim_rig_node

from bimanual_vla import topics
from bimanual_vla.config import load_rig

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_trajectory_mode_drives_the_sim_within_limits_and_stops_on_estop(ros_context, node_checkpoint, tmp_path):
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool
    from trajectory_msgs.msg import JointTrajectory

    from bimanual_vla.policy_node.node import PolicyNode
    from bimanual_vla.ros_utils import stamp_to_sec

    rig = load_rig('aloha_sim')
    limits = {f'{a.name}_{j.name}': (j.lower, j.upper) for a in rig.arms for j in a.joints}
    sim = sim_rig_node(ros_context, real_time_factor=1.0, render_rate_hz=10.0, camera_width=64, camera_height=48)
    policy = write_policy(tmp_path, node_checkpoint, safety={'enabled_at_start': True, 'max_velocity_rad_s': MAX_VEL})
    node = PolicyNode(
        context=ros_context,
        parameter_overrides=[
            Parameter('rig', value='aloha_sim'),
            Parameter('policy', value=str(policy)),
            Parameter('command_mode', value='trajectory'),
            Parameter('use_sim_time', value=True),
        ],
    )
    probe = Node('trajectory_probe', context=ros_context)
    deep = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    trajectories: dict[str, list] = {'left': [], 'right': []}
    commands: list = []
    states: list = []
    for arm, store in trajectories.items():
        probe.create_subscription(JointTrajectory, topics.arm_trajectory(arm), store.append, deep)
        probe.create_subscription(JointState, topics.arm_command(arm), commands.append, deep)
    probe.create_subscription(JointState, topics.JOINT_STATES, states.append, topics.SENSOR_QOS)
    estop_pub = probe.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
    executor = node_threads(ros_context, sim, node, probe)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    start_goal = sim.scene.goal('left')

    def wait(predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            time.sleep(0.05)
        return predicate()

    try:
        played = sim._players['left'].counters
        assert wait(lambda: played['accepted'] >= 3, 120), (node.diagnostics_values(), dict(played))
        assert commands == []  # no per-tick commands in this mode
        assert not any(k.startswith('rejected') for k in played), dict(played)
        assert node.output.planner is not None and node.output.planner.counters.trajectories >= 3
        sim_now = sim.scene.time
        for arm, store in trajectories.items():
            assert len(store) >= 3, arm
            for msg in list(store):
                names = list(msg.joint_names)
                assert names == [n for n in limits if n.startswith(f'{arm}_')]
                points = np.array([p.positions for p in msg.points])
                lower = np.array([limits[n][0] for n in names])
                upper = np.array([limits[n][1] for n in names])
                assert np.all(points >= lower - 1e-9) and np.all(points <= upper + 1e-9)
                # the gate's max step between points one control period apart
                assert np.all(np.abs(np.diff(points, axis=0)) <= MAX_VEL / RATE + 1e-9)
                stamps = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
                assert stamps == pytest.approx(np.arange(len(stamps)) / RATE, abs=1e-6)
                assert 0 < stamp_to_sec(msg.header.stamp) <= sim_now + 0.1  # sim time
        # the sim followed them: its goals moved from the start pose, and stayed within the limits
        assert np.max(np.abs(sim.scene.goal('left') - start_goal)) > 1e-3
        for msg in list(states)[-50:]:
            for name, q in zip(msg.name, msg.position, strict=True):
                lo, hi = limits[name]
                assert lo - 0.02 <= q <= hi + 0.02, (name, q)

        # e-stop: the policy sends a stop, the sim drops its trajectories and holds
        estop_pub.publish(Bool(data=True))
        assert wait(lambda: node.output.planner.counters.stops >= 1, 10)
        assert wait(lambda: all(not p.active for p in sim._players.values()), 10)
        assert wait(lambda: sum(len(s) for s in trajectories.values()) > 0 and not trajectories['left'][-1].points, 10)
    finally:
        executor.shutdown(timeout_sec=5)
        thread.join(timeout=10)
        for n in (node, sim, probe):
            n.destroy_node()
