"""The teleop node on emulated buses: a scripted leader drives the real arm_driver of its follower.

Leader and follower are emulated STS3215 buses on pseudo-terminals; the leader's servos follow a
motion file (the scripted hand), the follower's goals are taken where they arrive, at its emulator.
Both arms have calibrations that differ from the identity (offsets, a reversed joint), so a wrong
mapping through either one shows.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from bimanual_vla import topics
from bimanual_vla.drivers.servo.calibration import load_calibration
from bimanual_vla.drivers.servo.emulated_motion import Motion, MotionPlayer

pytestmark = pytest.mark.ros

NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
QUALIFIED = [f'left_{n}' for n in NAMES]
K = 2 * math.pi / 4096
# Leader gripper 0..1 rad drives the follower's 0..0.5 rad.
GRIPPER = {'joint': 'gripper', 'leader_closed': 0.0, 'leader_open': 1.0, 'follower_closed': 0.0, 'follower_open': 0.5}


def calibration(arm: str, protocol: str = 'feetech', **joints: dict) -> dict:
    base = {'homing_offset': 0, 'range_min': 0, 'range_max': 4095, 'direction': 1, 'zero_ticks': 2048}
    return {
        'format': 'bimanual_vla.calibration',
        'arm': arm,
        'protocol': protocol,
        'joints': {n: {**base, 'id': i, **joints.get(n, {})} for i, n in enumerate(NAMES, 1)},
    }


def sine_motion(duration: float, amplitude: float = 0.4, period: float = 3.0) -> Motion:
    """Every joint on its own phase of a sine from 0 (where the follower starts); the gripper 0..0.8."""
    t = np.arange(0.0, duration + 1e-9, 0.01)
    columns = []
    for i in range(5):
        columns.append(amplitude * np.sin(2 * math.pi * t / period + i * 0.3) - amplitude * math.sin(i * 0.3))
    columns.append(0.4 - 0.4 * np.cos(2 * math.pi * t / period))
    return Motion(t, tuple(NAMES), np.stack(columns, axis=1))


def still_motion(pose: list[float]) -> Motion:
    return Motion(np.array([0.0]), tuple(NAMES), np.array([pose]))


class TeleopHarness:
    """Leader emulator + motion, follower emulator + arm_driver, the teleop node, and a peer that watches."""

    def __init__(self, tmp_path: Path, context, spin, motion: Motion, protocol: str = 'feetech', **params) -> None:
        from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

        self.tmp_path, self.context, self._spin, self.params = tmp_path, context, spin, params
        self.follower = ServoBusEmulator(protocol, range(1, 7), max_speed_ticks_per_s=4000)
        self.leader = ServoBusEmulator(protocol, range(1, 7))
        self.goals: list[tuple[float, int, int]] = []
        self.follower.on_goal = lambda sid, ticks: self.goals.append((time.monotonic(), sid, ticks))
        links = {'follower': tmp_path / 'ttyF', 'leader': tmp_path / 'ttyL'}
        os.symlink(self.follower.start(), links['follower'])
        os.symlink(self.leader.start(), links['leader'])
        # The follower's wrist_flex is mounted reversed, the leader's shoulder_pan sits 300 ticks off centre.
        f_cal, l_cal = tmp_path / 'follower.json', tmp_path / 'leader.json'
        f_cal.write_text(json.dumps(calibration('left', protocol, wrist_flex={'direction': -1})))
        l_cal.write_text(json.dumps(calibration('left_leader', protocol, shoulder_pan={'zero_ticks': 1748})))
        self.follower_cal = load_calibration(f_cal)
        self.leader_cal = load_calibration(l_cal)
        rig = {
            'name': 'teleop_rig',
            'urdf': 'urdf/none.urdf',
            'arms': [
                {
                    'name': 'left',
                    'protocol': protocol,
                    'port': str(links['follower']),
                    'calibration': str(f_cal),
                    'gripper': 'gripper',
                    'joints': [{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in enumerate(NAMES, 1)],
                }
            ],
            'leaders': [
                {
                    'name': 'left_leader',
                    'protocol': protocol,
                    'port': str(links['leader']),
                    'calibration': str(l_cal),
                    'follower': 'left',
                    'gripper': GRIPPER,
                    'joints': [{'id': i, 'name': n} for i, n in enumerate(NAMES, 1)],
                }
            ],
        }
        self.rig = tmp_path / 'rig.yaml'
        self.rig.write_text(yaml.safe_dump(rig))
        self.player = MotionPlayer(self.leader, motion, calibration=self.leader_cal)

    def start(self) -> TeleopHarness:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from std_srvs.srv import SetBool

        from bimanual_vla.drivers.servo.node import ArmDriver
        from bimanual_vla.drivers.teleop.node import TeleopNode

        self.player.start()
        rig = Parameter('rig', value=str(self.rig))
        self.driver = ArmDriver(context=self.context, parameter_overrides=[rig, Parameter('arm', value='left')])
        params = [rig] + [Parameter(k, value=v) for k, v in self.params.items()]
        self.node = TeleopNode(context=self.context, parameter_overrides=params)
        self.node.command_log = collections.deque()  # (arm, leader read t, published t, targets): the node's clock
        self.peer = Node('teleop_test_peer', context=self.context)
        self.commands: list[tuple[float, list[float]]] = []
        self.leader_states: list = []
        self.diags: list = []
        self.peer.create_subscription(
            JointState,
            topics.arm_command('left'),
            lambda m: self.commands.append((time.monotonic(), list(m.position))),
            topics.RELIABLE_QOS,
        )
        self.peer.create_subscription(
            JointState, topics.leader_joint_states('left'), self.leader_states.append, topics.SENSOR_QOS
        )
        self.peer.create_subscription(
            DiagnosticArray,
            topics.DIAGNOSTICS,
            lambda m: self.diags.extend(s for s in m.status if 'leader left_leader' in s.name),
            topics.DIAGNOSTICS_QOS,
        )
        self.estop_pub = self.peer.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
        self.enable = self.peer.create_client(SetBool, topics.TELEOP_ENABLE)
        self.executor = SingleThreadedExecutor(context=self.context)
        for node in (self.driver, self.node, self.peer):
            self.executor.add_node(node)
        return self

    def spin(self, predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
        return self._spin(self.executor, predicate, timeout)

    def state(self) -> str:
        return self.node.channels[0].engagement.state

    def reason(self) -> str:
        return self.node.channels[0].engagement.reason

    def diag(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.diags[-1].values} if self.diags else {}

    def follower_goal_rad(self, since: float = 0.0) -> dict[str, list[tuple[float, float]]]:
        """The follower's goals as written to its servos, in its joint angles, per joint."""
        out: dict[str, list[tuple[float, float]]] = {n: [] for n in NAMES}
        for t, sid, ticks in list(self.goals):
            if t >= since:
                name = NAMES[sid - 1]
                out[name].append((t, self.follower_cal.to_radians(name, ticks)))
        return out

    def call_enable(self, on: bool):
        from std_srvs.srv import SetBool

        assert self.spin(self.enable.service_is_ready, 10), 'teleop/enable not available'
        future = self.enable.call_async(SetBool.Request(data=on))
        assert self.spin(future.done, 10), 'teleop/enable did not answer'
        return future.result()

    def close(self) -> None:
        if hasattr(self, 'executor'):
            self.executor.shutdown()
            for node in (self.node, self.driver, self.peer):
                node.destroy_node()
        self.player.stop()
        self.leader.stop()
        self.follower.stop()


@pytest.fixture
def harness(tmp_path: Path, ros_context, spin):
    made: list[TeleopHarness] = []

    def make(motion: Motion, protocol: str = 'feetech', **params) -> TeleopHarness:
        made.append(TeleopHarness(tmp_path, ros_context, spin, motion, protocol, **params).start())
        return made[-1]

    yield make
    for h in made:
        h.close()


def expected_follower(motion: Motion, t: float) -> np.ndarray:
    """Where the follower should be when the leader is at its motion's time ``t``."""
    pose = motion.at(t)
    pose[5] = min(max(pose[5], 0.0), 1.0) * 0.5
    return pose


@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])  # SO-101 and Koch leader/follower pairs
def test_the_follower_tracks_the_leader_through_both_calibrations(harness, protocol: str) -> None:
    motion = sine_motion(4.0)
    h = harness(motion, protocol)
    assert h.spin(lambda: h.state() == 'engaged', 15), h.reason()
    trigger = h.leader.servo(6)  # Koch: the trigger is a current-limited spring; SO-101: limp like the rest
    assert trigger.torque_enabled == (protocol == 'dynamixel')
    assert not any(h.leader.servo(sid).torque_enabled for sid in range(1, 6))
    if protocol == 'dynamixel':
        assert trigger.read_register('operating_mode') == 5
    assert h.spin(lambda: h.player.finished, 15)
    # The motion ends still: the follower ends where the leader's pose maps to, joint by joint.
    final = expected_follower(motion, motion.duration_s)

    def arrived() -> bool:
        goals = h.follower_goal_rad()
        return all(goals[n] and abs(goals[n][-1][1] - final[i]) <= 1.5 * K for i, n in enumerate(NAMES))

    assert h.spin(arrived, 10)

    def present() -> list[float]:
        return [h.follower_cal.to_radians(n, h.follower.servo(i).present_position) for i, n in enumerate(NAMES, 1)]

    # and the servos get there (they move at their own speed after the last goal)
    assert h.spin(lambda: np.max(np.abs(np.array(present()) - final)) <= 1.5 * K, 5), present()
    # On the way, every goal written was a pose the leader had been in (within a tick and a half), never
    # one it had not reached yet: the follower followed rather than led or wandered.
    start = h.player._t0
    # The leader's path sampled every 0.5 ms (linear between the motion's 10 ms samples; 0.5 ms of it is
    # at most 0.3 tick), so within a tick and a half means the two roundings to ticks and no more.
    grid = np.arange(0.0, motion.duration_s + 0.0005, 0.0005)
    path = np.stack([expected_follower(motion, t) for t in grid])
    goals = h.follower_goal_rad(since=start + 0.5)  # after engaging
    for i, name in enumerate(NAMES):
        assert len({round(v, 6) for _, v in goals[name]}) > 50, name  # it moved, goal after goal
        for t, value in goals[name]:
            reached = path[: np.searchsorted(grid, t - start, side='right'), i]
            assert np.min(np.abs(reached - value)) <= 1.5 * K, (name, t - start, value)
    # What the leader asked for went out on leader/left/joint_states, in follower joint names.
    assert list(h.leader_states[-1].name) == QUALIFIED
    assert h.spin(lambda: np.max(np.abs(np.array(h.leader_states[-1].position) - final)) <= 1.5 * K, 5)


def test_a_silent_leader_makes_the_follower_hold_and_says_why(harness) -> None:
    motion = sine_motion(12.0, amplitude=0.5, period=4.0)
    h = harness(motion)
    assert h.spin(lambda: h.state() == 'engaged', 15), h.reason()
    assert h.spin(lambda: len(h.commands) > 20, 10)
    h.leader.faults.missing_ids = {1, 2, 3, 4, 5, 6}  # the leader's cable is pulled
    silent_at = time.monotonic()
    assert h.spin(lambda: h.state() == 'leader_lost', 5), h.reason()
    assert h.reason().startswith('leader silent for')
    assert h.spin(lambda: h.diag().get('state') == 'leader_lost', 5)
    assert h.diags[-1].level == b'\x02' and h.diags[-1].message.startswith('leader silent for')
    lost_at = time.monotonic()
    h.spin(lambda: False, 1.5)  # the leader keeps moving in the hand; nothing reaches the follower
    assert not [e for e in h.node.command_log if e[1] > lost_at]  # no command from a reading since
    held = h.follower_goal_rad(since=lost_at + 0.5)
    for name in NAMES:
        values = {round(v, 9) for _, v in held[name]}
        assert len(values) <= 1, (name, values)  # the driver holds its last target
    # Back: teleop resumes only through the start check (too_far where the leader moved on meanwhile).
    h.leader.faults.missing_ids = set()
    assert h.spin(lambda: h.state() in ('too_far', 'engaged') and h.state() != 'leader_lost', 5), h.reason()
    assert time.monotonic() - silent_at > 1.5


def test_estop_stops_teleop_until_released_and_rearmed(harness) -> None:
    from std_msgs.msg import Bool

    h = harness(still_motion([0.05, 0.0, -0.05, 0.0, 0.0, 0.1]))
    assert h.spin(lambda: h.state() == 'engaged', 15), h.reason()
    h.estop_pub.publish(Bool(data=True))
    assert h.spin(lambda: h.state() == 'estop', 5), h.reason()
    stopped = time.monotonic()
    h.spin(lambda: False, 0.5)
    assert not [e for e in h.node.command_log if e[1] > stopped]  # no reading since became a command
    h.estop_pub.publish(Bool(data=False))
    assert h.spin(lambda: h.state() == 'disarmed', 5), h.reason()
    assert 're-arm teleop (teleop/enable)' in h.reason()
    released = time.monotonic()
    h.spin(lambda: False, 0.5)
    assert not [e for e in h.node.command_log if e[1] > released]  # released is not re-armed
    response = h.call_enable(True)
    assert response.success and response.message == 'left: armed'
    assert h.spin(lambda: h.state() == 'engaged', 5), h.reason()
    assert h.spin(lambda: any(e[1] > released + 0.5 for e in h.node.command_log), 5)
    assert h.spin(lambda: any(c[0] > released + 0.5 for c in h.commands), 5)  # and they reach the arm


def test_teleop_refuses_to_start_when_poses_differ(harness) -> None:
    h = harness(still_motion([0.6, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert h.spin(lambda: h.state() == 'too_far', 15), h.reason()
    assert h.reason().startswith('shoulder_pan: leader +0.600 rad, follower +0.000 rad (more than 0.2 apart)')
    h.spin(lambda: False, 1.0)
    assert h.commands == [] and h.state() == 'too_far'
    goals = h.follower_goal_rad()
    assert all(abs(v) <= K for _, v in goals['shoulder_pan'])  # the follower never moved toward the leader
    assert h.spin(lambda: h.diag().get('state') == 'too_far', 5)
    assert h.diags[-1].message.startswith('shoulder_pan: leader +0.600 rad')


def test_with_ramp_the_follower_moves_to_the_leader_slowly_then_follows(harness) -> None:
    h = harness(still_motion([0.6, 0.0, 0.0, 0.0, 0.0, 0.0]), ramp=True, ramp_velocity_rad_s=0.4)
    assert h.spin(lambda: h.state() == 'ramping', 15), h.reason()
    assert h.spin(lambda: h.state() == 'engaged', 10), h.reason()
    assert h.reason() == 'engaged (ramped to the leader)'
    assert h.spin(lambda: (g := h.follower_goal_rad()['shoulder_pan']) and abs(g[-1][1] - 0.6) <= K, 5)
    pan = h.follower_goal_rad()['shoulder_pan']
    log = list(h.node.command_log)
    ramp = [(t, targets[0]) for _, t, _, targets in log if targets[0] < 0.5]  # the hand-over is at >= 0.4
    assert len(ramp) > 20 and ramp[0][1] == pytest.approx(0.0, abs=2 * K)  # from where the follower was
    # Monotonic, and never faster than 0.4 rad/s between two leader readings (by the node's own clock).
    for (t0, a), (t1, b) in zip(ramp, ramp[1:], strict=False):
        assert 0 <= b - a <= 0.4 * (t1 - t0) + 1e-9
    # Handed over within the start tolerance: the step after the last ramp command (however long the
    # wait for that leader reading on a loaded machine) came within 0.2 of the leader, which reads
    # 0.6 to within a few ticks (its position goes through ticks and two calibrations).
    handover_t = next(t for _, t, _, targets in log if t > ramp[-1][0] and targets[0] >= 0.5)
    assert ramp[-1][1] >= 0.6 - 0.2 - 0.4 * (handover_t - ramp[-1][0]) - 3 * K
    assert ramp[-1][1] < 0.4 + 3 * K  # and not earlier
    assert pan[-1][1] == pytest.approx(0.6, abs=K)


def test_the_node_declares_the_parameters_the_table_lists(harness) -> None:
    from bimanual_vla.node_parameters import ANY, NODE_PARAMETERS

    h = harness(still_motion([0.0] * 6))
    types = {'BOOL': 'bool', 'INTEGER': 'integer', 'DOUBLE': 'double', 'STRING': 'string'}
    declared = {
        name: ANY if h.node.describe_parameter(name).dynamic_typing else types[p.type_.name]
        for name, p in h.node._parameters.items()
    }
    assert declared == NODE_PARAMETERS['teleop']
