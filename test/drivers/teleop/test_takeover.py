"""Human takeover: the detector by value, then on emulated buses with the real arm_driver, a scripted leader
and a policy stand-in made of the policy node's own gate, takeover and command output: the policy is muted
while the human drives, the follower starts from where it is, and the hand-back resumes without a jump."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from bimanual_vla import topics
from bimanual_vla.drivers.teleop.engage import ENGAGED, RAMPING, Engagement
from bimanual_vla.drivers.teleop.takeover import END, POLICY, START, TakeoverDetector

NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
QUALIFIED = [f'left_{n}' for n in NAMES]
K = 2 * math.pi / 4096


def _detector(**kw) -> TakeoverDetector:
    engagement = Engagement(['a', 'b'], tolerance_rad=0.05, timeout_s=0.5, ramp_velocity_rad_s=1.0)
    return TakeoverDetector(engagement, threshold_rad=0.15, still_rad=0.02, release_s=1.0, **kw)


def test_moving_the_leader_takes_over_with_a_ramp_from_the_follower_and_stillness_hands_back():
    d = _detector()
    follower = [0.8, 0.0]  # where the policy has the arm
    decision, event = d.update(0.0, [0.0, 0.0], follower)
    assert (decision.command, decision.state, event) == (None, POLICY, None)
    decision, event = d.update(0.1, [0.1, 0.0], follower)  # 0.1 rad: below the threshold
    assert decision.command is None and event is None
    decision, event = d.update(0.2, [0.2, 0.0], follower)
    assert event == START and d.human and d.reason == 'leader moved 0.20 rad'
    assert decision.state == RAMPING and decision.command == pytest.approx(follower)  # from where it is
    decision, _ = d.update(0.3, [0.2, 0.0], follower)
    assert decision.command == pytest.approx([0.7, 0.0])  # 1 rad/s toward the leader, no jump
    t, pose = 0.3, [0.7, 0.0]
    while decision.state != ENGAGED:
        t += 0.1
        decision, event = d.update(t, [0.2, 0.0], pose)
        pose = decision.command
        assert event is None
    # held still for release_s once engaged: handed back
    for k in range(1, 13):
        decision, event = d.update(t + 0.1 * k, [0.2, 0.005], [0.2, 0.0])
        if event is not None:
            break
    assert k >= 10  # a second of stillness counted from the engagement, not from the takeover
    assert event == END and not d.human and decision.command is None and d.state == POLICY
    assert d.reason == 'leader still for 1 s'
    # the rest pose is now where the leader was left: a small nudge does not take over again
    assert d.update(t + 1.2, [0.3, 0.0], [0.2, 0.0])[1] is None
    assert d.update(t + 1.3, [0.4, 0.0], [0.2, 0.0])[1] == START


def test_the_operator_can_take_over_and_hand_back_and_an_estop_hands_back():
    d = _detector()
    d.update(0.0, [0.0, 0.0], [0.0, 0.0])
    d.request(True)
    assert d.update(0.1, [0.0, 0.0], [0.0, 0.0])[1] == START and d.reason == 'operator asked'
    d.request(False)
    assert d.update(0.2, [0.1, 0.0], [0.0, 0.0])[1] == END
    d.request(True)
    d.update(0.3, [0.0, 0.0], [0.0, 0.0])
    assert d.set_estop(True) == END and not d.human
    assert d.update(0.4, [0.5, 0.5], [0.0, 0.0])[1] is None  # no takeover during the e-stop
    d.set_estop(False)
    assert d.update(0.5, [0.5, 0.5], [0.0, 0.0])[1] == START  # released: moving the leader takes over again


class _PolicyStandIn:
    """The policy node's output path without a model: a fixed target through CommandGate, takeover.attach and
    CommandOutput at 50 Hz, the measured pose from joint_states, as PolicyNode wires them."""

    def __init__(self, context, rig, target: np.ndarray) -> None:
        from rclpy.node import Node
        from sensor_msgs.msg import JointState

        from bimanual_vla.policy_node import takeover
        from bimanual_vla.policy_node.chunking import ChunkExecutor
        from bimanual_vla.policy_node.command_output import CommandOutput
        from bimanual_vla.policy_node.safety import CommandGate

        self.node = Node('policy_stand_in', context=context)
        self.gate = CommandGate.from_rig(rig, QUALIFIED, max_velocity_rad_s=2.0, enabled=True)
        self.lock = threading.Lock()
        self.executor = ChunkExecutor('naive')
        arms = {'left': (QUALIFIED, np.arange(6))}
        self.output = CommandOutput(self.node, 'tick', arms, self.gate, 0.02)
        self.takeover = takeover.attach(self.node, arms, self.lock, self.gate, self)
        self.target = target
        self.measured: np.ndarray | None = None
        self.sent: list[tuple[float, np.ndarray, np.ndarray]] = []  # (t, command, measured) actually published
        self.muted_ticks = 0
        self.node.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, topics.SENSOR_QOS)
        self.node.create_timer(0.02, self._tick)

    def _on_joints(self, msg) -> None:
        pos = dict(zip(msg.name, msg.position, strict=False))
        if all(n in pos for n in QUALIFIED):
            self.measured = np.array([pos[n] for n in QUALIFIED])

    def _tick(self) -> None:
        if self.measured is None:
            return
        with self.lock:
            result = self.gate.step(self.target, measured=self.measured, inputs_fresh=True)
            muted = bool(self.gate.muted_arms)
        self.muted_ticks += muted
        if result.command is not None:
            self.output.publish((time.monotonic(), result.command))
            if not muted:
                self.sent.append((time.monotonic(), result.command.copy(), self.measured.copy()))


@pytest.mark.ros
@pytest.mark.slow
def test_a_takeover_mutes_the_policy_and_hands_back_without_a_jump(tmp_path: Path, ros_context, spin) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from bimanual_vla.config import load_rig
    from bimanual_vla.drivers.servo.emulated_motion import Motion, MotionPlayer
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator
    from bimanual_vla.drivers.servo.node import ArmDriver
    from bimanual_vla.drivers.teleop.node import TeleopNode
    from bimanual_vla.intervention_msgs import parse_intervention

    # The leader rests at 0 for 4 s (the policy drives the arm to pan 0.6), the hand then moves the pan
    # to -0.3 over 1.5 s and lets go: held still, the arm is handed back to the policy.
    t = np.array([0.0, 4.0, 5.5, 30.0])
    pan = np.array([0.0, 0.0, -0.3, -0.3])
    motion = Motion(t, ('1',), pan[:, None])  # servo 1 (shoulder_pan), identity calibration
    follower = ServoBusEmulator('feetech', range(1, 7), max_speed_ticks_per_s=4000)
    leader = ServoBusEmulator('feetech', range(1, 7))
    goals: list[tuple[float, int]] = []
    follower.on_goal = lambda sid, ticks: goals.append((time.monotonic(), ticks)) if sid == 1 else None
    os.symlink(follower.start(), tmp_path / 'ttyF')
    os.symlink(leader.start(), tmp_path / 'ttyL')
    joints = [{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in enumerate(NAMES, 1)]
    spec = {
        'name': 'takeover_rig', 'urdf': 'urdf/none.urdf',
        'arms': [{'name': 'left', 'protocol': 'feetech', 'port': str(tmp_path / 'ttyF'), 'joints': joints}],
        'leaders': [{'name': 'left_leader', 'protocol': 'feetech', 'port': str(tmp_path / 'ttyL'), 'follower': 'left',
                     'joints': [{'id': i, 'name': n} for i, n in enumerate(NAMES, 1)]}],
    }  # fmt: skip
    rig_path = tmp_path / 'rig.yaml'
    rig_path.write_text(yaml.safe_dump(spec))
    rig = load_rig(rig_path)
    player = MotionPlayer(leader, motion)
    rig_param = Parameter('rig', value=str(rig_path))
    nodes = []
    try:
        driver = ArmDriver(context=ros_context, parameter_overrides=[rig_param, Parameter('arm', value='left')])
        nodes.append(driver)
        teleop = TeleopNode(context=ros_context, parameter_overrides=[rig_param, Parameter('takeover', value=True)])
        nodes.append(teleop)
        import collections

        teleop.command_log = collections.deque()
        policy = _PolicyStandIn(ros_context, rig, np.array([0.6, 0, 0, 0, 0, 0]))
        nodes.append(policy.node)
        peer = Node('takeover_peer', context=ros_context)
        nodes.append(peer)
        events: list[tuple[float, str]] = []
        on_event = lambda m: events.append((time.monotonic(), m.data))  # noqa: E731
        peer.create_subscription(String, topics.TELEOP_INTERVENTION, on_event, topics.LATCHED_QOS)
        executor = SingleThreadedExecutor(context=ros_context)
        for node in nodes:
            executor.add_node(node)
        assert spin(executor, lambda: policy.measured is not None, 15)
        player.start()
        # the policy drives the pan to 0.6 while the leader rests
        assert spin(executor, lambda: policy.measured is not None and abs(policy.measured[0] - 0.6) < 0.02, 15)
        assert teleop.channels[0].takeover.state == POLICY and not teleop.command_log
        assert spin(executor, lambda: any('"start"' in e for _, e in events), 15), events
        took = next(t for t, e in events if '"start"' in e)
        at_takeover = policy.measured.copy()
        assert spin(executor, lambda: any('"end"' in e for _, e in events), 20), events
        gave_back = next(t for t, e in events if '"end"' in e)
        assert spin(executor, lambda: len([s for s in policy.sent if s[0] > gave_back + 0.5]) > 10, 10)
        assert [parse_intervention(e) for _, e in events][-3:] == [frozenset(), {'left'}, frozenset()]
    finally:
        player.stop()
        for node in reversed(nodes):
            node.destroy_node()
        leader.stop()
        follower.stop()
    # muted: nothing sent by the policy between the takeover and the hand-back (a tick's slack for delivery)
    assert policy.muted_ticks > 50
    assert not [s for s in policy.sent if took + 0.05 < s[0] < gave_back - 0.05]
    # the human's first command started at the follower's measured pose (the ramp), not at the leader's
    first_teleop = teleop.command_log[0]
    assert abs(first_teleop[3][0] - at_takeover[0]) < 0.1, (first_teleop[3][0], at_takeover[0])
    # handed back: the policy's first command moves at most the gate's step (2 rad/s at 50 Hz) from its pose
    t_resume, command, measured = next(s for s in policy.sent if s[0] > gave_back)
    assert abs(command[0] - measured[0]) <= 0.04 + 1e-9, (command[0], measured[0])
    assert measured[0] < -0.2  # where the human left it
    # at the emulator: no goal step larger than the driver's max step, before, during or after
    ticks = np.array([g for _, g in goals])
    assert np.max(np.abs(np.diff(ticks))) * K <= rig.arms[0].max_step_rad + 1.5 * K
