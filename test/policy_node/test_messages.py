"""The policy node's outgoing messages built from plain values (policy_node/messages.py), by value."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus

from bimanual_vla.policy_node.chunking import Chunk
from bimanual_vla.policy_node.messages import chunk_trajectory, diagnostic_array, joint_command, reasoning_label


def test_joint_command_holds_the_arms_joints_stamped_with_the_tick() -> None:
    msg = joint_command(Time(sec=12, nanosec=5), ['left_a', 'left_b'], np.array([0.25, -1.5]))
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 5)
    assert list(msg.name) == ['left_a', 'left_b'] and list(msg.position) == [0.25, -1.5]


def test_chunk_trajectory_starts_at_the_chunks_time_with_a_point_every_dt() -> None:
    chunk = Chunk(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]), t0=10.5, dt=0.25, seq=0)
    msg = chunk_trajectory(chunk, ['a', 'b'])
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (10, 500_000_000)
    assert list(msg.joint_names) == ['a', 'b']
    assert [list(p.positions) for p in msg.points] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert [(p.time_from_start.sec, p.time_from_start.nanosec) for p in msg.points] == [
        (0, 0),
        (0, 250_000_000),
        (0, 500_000_000),
    ]


def test_diagnostic_array_maps_the_level_name_to_its_byte_and_renders_values() -> None:
    array = diagnostic_array(Time(sec=3), 'policy_node: policy', 'STALE', 'stale inputs: x', {'a': 1.23456, 'b': 'ok'})
    assert array.header.stamp.sec == 3
    (status,) = array.status
    assert (status.name, status.level, status.message) == (
        'policy_node: policy',
        DiagnosticStatus.STALE,
        'stale inputs: x',
    )
    assert [(kv.key, kv.value) for kv in status.values] == [('a', '1.235'), ('b', 'ok')]


def test_a_coached_subtask_is_marked_in_the_markers_label() -> None:
    assert reasoning_label('grasp', 'override') == '[coach] grasp'
    assert reasoning_label('grasp', 'model') == 'grasp'
