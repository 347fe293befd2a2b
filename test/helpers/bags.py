"""Bags with known contents for the bag tests: synthetic messages, a bag written with rosbags, a live
recording of synthetic rig traffic with BagRecorder.

Shared by test/bags/test_bags.py and test/bags/test_bag_split.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from bimanual_vla import topics as T

SEC = 1_000_000_000


def image_msg(i: int, size: int = 12) -> object:
    from sensor_msgs.msg import Image

    width = size // 3
    msg = Image(height=1, width=width, encoding='rgb8', step=size)
    msg.header.frame_id = T.camera_frame('base')
    msg.header.stamp.sec = i
    msg.data = bytes((i + k) % 256 for k in range(size))
    return msg


def joints_msg(i: int) -> object:
    from sensor_msgs.msg import JointState

    # velocity/effort empty on purpose: rclpy serialises this with trailing alignment bytes (DESIGN.md pitfalls).
    msg = JointState(name=['left_shoulder_pan', 'left_gripper'], position=[0.01 * i, -0.5])
    msg.header.stamp.sec = i
    return msg


def write_bag(path: Path, entries: list[tuple[str, str, int, bytes]], compress: bool = False) -> None:
    """A bag written with rosbags' Writer (as our recorder does) from rclpy-serialised bytes."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    from bimanual_vla.bags.message_types import type_definition

    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    conns = {}
    with writer:
        for topic, type_name, ts, data in entries:
            if topic not in conns:
                msgdef, digest = type_definition(type_name)
                conns[topic] = writer.add_connection(topic, type_name, msgdef=msgdef, rihs01=digest)
            writer.write(conns[topic], ts, data)


def entries_images(n: int, size: int, t0: int = 100 * SEC, period: int = SEC // 10) -> list:
    from rclpy.serialization import serialize_message

    out = []
    for i in range(n):
        out.append(
            ('/cameras/base/image_raw', 'sensor_msgs/msg/Image', t0 + i * period, serialize_message(image_msg(i, size)))
        )
        out.append(
            ('/joint_states', 'sensor_msgs/msg/JointState', t0 + i * period + 1, serialize_message(joints_msg(i)))
        )
    return out


def spin_for(executor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.01)


def record_live(ros_context, spin, out: Path, extra: list | None = None) -> dict:
    """Record ~2 s of synthetic rig traffic with BagRecorder (`extra` parameters); return what was published."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from bimanual_vla.bags.record import BagRecorder

    src = Node('bag_test_source', context=ros_context)
    pub_js = src.create_publisher(type(joints_msg(0)), T.JOINT_STATES, T.SENSOR_QOS)
    pub_img = src.create_publisher(type(image_msg(0)), T.camera_image('base'), T.SENSOR_QOS)
    pub_task = src.create_publisher(String, T.POLICY_TASK, T.LATCHED_QOS)
    pub_ep = src.create_publisher(String, T.RECORD_EPISODE, T.RELIABLE_QOS)
    pub_task.publish(String(data='transfer the cube'))  # before the recorder exists: latched
    rec = BagRecorder(
        context=ros_context,
        parameter_overrides=[
            Parameter('output', value=str(out)),
            Parameter('topics', value=[T.JOINT_STATES, T.camera_image('base'), T.POLICY_TASK]),
            Parameter('discovery_period_s', value=0.1),
            *(extra or []),
        ],
    )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(src)
    executor.add_node(rec)
    wanted = {'/joint_states', '/cameras/base/image_raw', '/policy/task'}
    assert spin(executor, lambda: wanted <= set(rec.topic_states), 15.0), rec.topic_states
    assert spin(
        executor,
        lambda: (
            pub_js.get_subscription_count() and pub_img.get_subscription_count() and pub_ep.get_subscription_count()
        ),
        15.0,
    )
    assert spin(executor, lambda: rec.topic_states['/policy/task'].count == 1, 10.0), 'latched task not recorded'
    hashes = {str(i.topic_type_hash) for i in src.get_publishers_info_by_topic('/joint_states')}
    pub_ep.publish(String(data='episode_a'))
    n = 40
    for i in range(n):
        pub_js.publish(joints_msg(i))
        if i % 4 == 0:
            pub_img.publish(image_msg(i, 3 * 64))
        if i == 20:
            pub_ep.publish(String(data='episode_b'))
        spin_for(executor, 0.03)
    pub_ep.publish(String(data=''))
    assert spin(executor, lambda: rec.topic_states['/joint_states'].count >= n, 10.0)
    assert spin(executor, lambda: rec.topic_states['/record/episode'].count == 3, 10.0)
    rec.close()
    executor.shutdown()
    rec.destroy_node()
    src.destroy_node()
    return {'n': n, 'joint_hashes': hashes}
