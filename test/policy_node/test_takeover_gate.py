"""Human takeover on the policy side: a taken-over arm is not commanded and follows its measured pose; handed
back, it resumes from there at the gate's max step, and the executing chunk is dropped; the command output
sends the muted arm nothing (over Fast DDS)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bimanual_vla import topics
from bimanual_vla.intervention_msgs import intervention_payload
from bimanual_vla.policy_node.chunking import Chunk, ChunkExecutor
from bimanual_vla.policy_node.safety import OK, CommandGate
from bimanual_vla.policy_node.takeover import Takeover

ARMS = {'left': (['left_a', 'left_b'], np.array([0, 1])), 'right': (['right_a'], np.array([2]))}
STEP = 0.04


def _gate() -> CommandGate:
    return CommandGate(['left_a', 'left_b', 'right_a'], -np.ones(3), np.ones(3), STEP, enabled=True)


def test_a_muted_arm_follows_its_measured_pose_and_resumes_from_it_without_a_jump():
    gate, takeover = _gate(), Takeover(ARMS, 3)
    scheduler = SimpleNamespace(executor=ChunkExecutor('naive'))
    proposal = np.array([0.5, 0.5, 0.5])
    first = gate.step(proposal, measured=np.zeros(3), inputs_fresh=True)
    np.testing.assert_allclose(first.command, [STEP, STEP, STEP])
    line = takeover.apply(intervention_payload(['left'], 'start', 'left'), gate, scheduler)
    assert line == 'left taken over by a human: muted' and gate.muted_arms == {'left'}
    # the human moves the left arm to -0.6 over a few ticks; the policy keeps proposing 0.5
    for k, measured_left in enumerate(np.linspace(0.0, -0.6, 8)):
        result = gate.step(proposal, measured=np.array([measured_left, measured_left, 0.0]), inputs_fresh=True)
        assert result.reason == OK
        np.testing.assert_allclose(result.command[:2], measured_left)  # reference = where the human has it
        assert result.command[2] == pytest.approx(min(0.5, STEP * (k + 2)))  # the right arm carries on
    scheduler.executor.add(Chunk(np.tile(proposal, (5, 1)), t0=1.0, dt=0.02), now=1.0)
    line = takeover.apply(intervention_payload([], 'end', 'left'), gate, scheduler)
    assert line == 'left handed back: resuming from the measured pose'
    assert scheduler.executor.current is None  # the next chunk is planned from the measured state
    assert gate.muted_arms == frozenset() and not gate.muted.any()
    resumed = gate.step(proposal, measured=np.array([-0.6, -0.6, 0.3]), inputs_fresh=True)
    np.testing.assert_allclose(resumed.command[:2], -0.6 + STEP)  # from the human's pose, one max step
    assert (takeover.takeovers, takeover.releases) == (1, 1)


def test_intervention_messages_for_other_arms_or_malformed_change_nothing():
    gate, takeover = _gate(), Takeover(ARMS, 3)
    scheduler = SimpleNamespace(executor=ChunkExecutor('naive'))
    assert takeover.apply(intervention_payload(['third_arm']), gate, scheduler) is None
    assert takeover.apply('right, left', gate, scheduler) == 'left, right taken over by a human: muted'
    np.testing.assert_array_equal(gate.muted, [True, True, True])
    with pytest.raises(ValueError, match='"arms" must be a list'):
        takeover.apply('{"arms": 3}', gate, scheduler)
    assert takeover.human == {'left', 'right'}


@pytest.mark.ros
def test_the_command_output_sends_a_muted_arm_nothing(ros_context, spin) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from bimanual_vla.policy_node.command_output import CommandOutput

    node = Node('takeover_output_test', context=ros_context)
    gate = _gate()
    output = CommandOutput(node, 'tick', ARMS, gate, 0.02)
    got: dict[str, list] = {'left': [], 'right': []}
    for arm in ARMS:
        node.create_subscription(JointState, topics.arm_command(arm), got[arm].append, topics.TRAJECTORY_QOS)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    assert spin(executor, lambda: all(p.get_subscription_count() == 1 for p in output._pubs.values()), 10)
    Takeover(ARMS, 3).apply('left', gate, SimpleNamespace(executor=ChunkExecutor('naive')))
    for k in range(3):
        result = gate.step(np.full(3, 0.5), measured=np.zeros(3), inputs_fresh=True)
        output.publish(output.decide(5.0 + 0.02 * k, result, ChunkExecutor('naive')))
    assert spin(executor, lambda: got['right'] and got['right'][-1].position[0] == pytest.approx(3 * STEP), 5)
    spin(executor, lambda: False, 0.3)
    assert got['left'] == []  # keep-last-1 QoS: the right arm's newest command arrived, the left got none
    node.destroy_node()
