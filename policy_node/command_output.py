"""Where the policy node's gated actions go, per ``command_mode``: the ROS side of it.

``tick``: one ``arms/<arm>/joint_command`` per arm per control tick (teleoperation-style streaming).
``trajectory``: ``arms/<arm>/joint_trajectory`` when ``trajectory_plan.TrajectoryPlanner`` says so
(a new chunk, or a stop), which the arm drivers (and ``sim_rig``) play at their own rate.
``decide`` runs under the node's lock (it reads the scheduler and the gate), ``publish`` outside it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from bimanual_vla import topics
from bimanual_vla.policy_node.chunking import Chunk, ChunkExecutor
from bimanual_vla.policy_node.messages import chunk_trajectory, joint_command
from bimanual_vla.policy_node.safety import CommandGate, GateResult
from bimanual_vla.policy_node.trajectory_plan import PlannedTrajectory, TrajectoryPlanner
from bimanual_vla.ros_utils import sec_to_stamp

Outgoing = tuple[float, np.ndarray] | PlannedTrajectory
"""A tick's command (its time, the gated positions) or a planned trajectory."""


class CommandOutput:
    """The publishers of one command mode, and what a tick sends on them."""

    def __init__(
        self,
        node: Node,
        mode: str,
        arms: Mapping[str, tuple[list[str], np.ndarray]],
        gate: CommandGate,
        period_s: float,
    ) -> None:
        """``arms``: arm -> (its qualified joint names, their columns in the checkpoint's order)."""
        self.mode, self.arms, self.gate = mode, dict(arms), gate
        self.planner = TrajectoryPlanner(gate, period_s) if mode == 'trajectory' else None
        if self.planner is None:
            self._pubs = {a: node.create_publisher(JointState, topics.arm_command(a), topics.COMMAND_QOS) for a in arms}
        else:
            self._pubs = {
                a: node.create_publisher(JointTrajectory, topics.arm_trajectory(a), topics.TRAJECTORY_QOS) for a in arms
            }

    def decide(self, now: float, result: GateResult, executor: ChunkExecutor) -> Outgoing | None:
        """What this tick sends (None: nothing). Call under the lock that guards ``executor`` and the gate."""
        if self.planner is not None:
            return self.planner.plan(now, result, executor)
        return None if result.command is None else (now, result.command)

    def publish(self, out: Outgoing) -> bool:
        """Send ``out``; True when it carried motion (a command or a non-empty trajectory)."""
        muted = self.gate.muted_arms  # taken over by a human (takeover.py): teleop drives them, not the policy
        if isinstance(out, PlannedTrajectory):
            for arm, (names, cols) in self.arms.items():
                if arm in muted:
                    continue
                if out.stop:
                    msg = JointTrajectory(joint_names=list(names))
                    msg.header.stamp = sec_to_stamp(out.t0)
                else:
                    msg = chunk_trajectory(Chunk(out.points[:, cols], t0=out.t0, dt=out.dt), names)
                self._pubs[arm].publish(msg)
            return not out.stop
        now, command = out
        stamp = sec_to_stamp(now)
        for arm, (names, cols) in self.arms.items():
            if arm not in muted:
                self._pubs[arm].publish(joint_command(stamp, names, command[cols]))
        return True
