"""The policy node's outgoing messages, built from arrays: one arm's joint command, a chunk's trajectory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bimanual_vla.policy_node.chunking import Chunk
from bimanual_vla.ros_utils import sec_to_stamp


def joint_command(stamp: Time, names: list[str], positions: np.ndarray) -> JointState:
    """One arm's ``arms/<arm>/joint_command``: its joints' positions, stamped with the tick."""
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = names
    msg.position = [float(v) for v in positions]
    return msg


def chunk_trajectory(chunk: Chunk, joint_names: Sequence[str]) -> JointTrajectory:
    """``policy/action_chunk``: stamped with the chunk's start, a point every ``chunk.dt``."""
    msg = JointTrajectory()
    msg.header.stamp = sec_to_stamp(chunk.t0)
    msg.joint_names = list(joint_names)
    for i, row in enumerate(chunk.actions):
        ns = int(round(i * chunk.dt * 1e9))
        point = JointTrajectoryPoint(positions=[float(v) for v in row])
        point.time_from_start = Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        msg.points.append(point)
    return msg
