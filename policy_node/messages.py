"""The policy node's outgoing messages, built from plain values: one arm's joint command, a chunk's
trajectory, the diagnostics array, the markers' reasoning label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bimanual_vla.policy_node.chunking import Chunk
from bimanual_vla.ros_utils import ERROR, OK, STALE, WARN, diagnostic_status, sec_to_stamp

LEVELS = {'OK': OK, 'WARN': WARN, 'ERROR': ERROR, 'STALE': STALE}
"""``diagnostics.status_level``'s level names as the message's bytes."""


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


def diagnostic_array(stamp: Time, name: str, level: str, message: str, values: Mapping[str, object]) -> DiagnosticArray:
    """``/diagnostics``: one status ``name`` at ``level`` (a name of ``LEVELS``), values rendered as text."""
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status.append(diagnostic_status(name, LEVELS[level], message, values))
    return array


def reasoning_label(subtask: str, source: str) -> str:
    """The subtask as the markers show it: marked ``[coach]`` when it came from policy/subtask."""
    return f'[coach] {subtask}' if source == 'override' else subtask
