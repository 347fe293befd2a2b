"""The policy node's link side (policy_node/remote_link.py) over real rclpy/Fast DDS: JPEG camera input,
the clock probe against a responder, and enabling refused for a clock offset over its bound."""

from __future__ import annotations

import threading
import time

import pytest
from helpers.policy_node import CAMERAS, remote_rig_file, wait_for, write_policy

from bimanual_vla import topics

pytestmark = [pytest.mark.ros, pytest.mark.slow]


class Spinner:
    """Nodes of this test on an executor thread of their own (the harness spins the rig and the policy)."""

    def __init__(self, context, *nodes) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor(context=context)
        self.nodes = nodes
        for node in nodes:
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.thread.join(timeout=10)
        for node in self.nodes:
            node.destroy_node()


def jpeg_relay(context):
    """A node that republishes the synthetic rig's raw frames as JPEG on image_raw/compressed."""
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage, Image

    from bimanual_vla.image_msgs import CompressedPublisher, image_to_rgb

    node = Node('jpeg_relay', context=context)
    node.relayed = 0
    for cam in CAMERAS:
        out = CompressedPublisher(
            node.create_publisher(CompressedImage, topics.camera_image_compressed(cam), topics.SENSOR_QOS), 80
        )

        def relay(msg, out=out) -> None:
            node.relayed += out.publish(image_to_rgb(msg), msg.header)

        node.create_subscription(Image, topics.camera_image(cam), relay, topics.SENSOR_QOS)
    return node


def call_enable(node, value: bool) -> tuple[bool, str]:
    from std_srvs.srv import SetBool

    client = node.create_client(SetBool, topics.POLICY_ENABLE)
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(SetBool.Request(data=value))
    assert wait_for(future.done, 10)
    return future.result().success, future.result().message


def test_policy_runs_on_compressed_images_and_only_on_them(
    policy_harness, ros_context, node_checkpoint, tmp_path
) -> None:
    rig, start = policy_harness
    node = start(write_policy(tmp_path, node_checkpoint), image_transport='compressed')
    assert node.diagnostics_values()['image_transport'] == 'compressed'
    # Raw frames flow, but the node reads JPEG only: no frame, no chunk.
    assert not wait_for(lambda: rig.count(rig.chunks) > 0, 3)
    assert any('no frame' in s for s in node.scheduler.stale)
    relay = Spinner(ros_context, jpeg_relay(ros_context))
    try:
        assert wait_for(lambda: rig.count(rig.chunks) >= 2, 60), node.diagnostics_values()
        values = node.diagnostics_values()
        assert values['bad_images'] == 0 and relay.nodes[0].relayed > 0
        assert call_enable(rig.node, True) == (True, 'enabled')
        assert wait_for(lambda: rig.count(rig.commands['left']) >= 20, 30), node.diagnostics_values()
    finally:
        relay.close()


def offset_responder(context, offset_s: float):
    """clock_responder's answer, from a robot clock ``offset_s`` ahead of this one."""
    from rclpy.duration import Duration
    from rclpy.node import Node
    from sensor_msgs.msg import TimeReference

    node = Node('fake_robot_clock', context=context)
    pub = node.create_publisher(TimeReference, topics.CLOCK_SYNC_PONG, topics.SENSOR_QOS)

    def on_ping(msg: TimeReference) -> None:
        now = node.get_clock().now() + Duration(nanoseconds=int(offset_s * 1e9))
        answer = TimeReference(source=msg.source, time_ref=now.to_msg())
        answer.header.frame_id = msg.header.frame_id
        answer.header.stamp = now.to_msg()
        pub.publish(answer)

    node.create_subscription(TimeReference, topics.CLOCK_SYNC_PING, on_ping, topics.SENSOR_QOS)
    return node


def test_clock_probe_measures_the_offset_and_refuses_to_enable_beyond_the_bound(
    policy_harness, ros_context, node_checkpoint, tmp_path
) -> None:
    rig, start = policy_harness
    node = start(write_policy(tmp_path, node_checkpoint), max_clock_offset_s=0.05)
    assert call_enable(rig.node, True) == (True, 'enabled')  # one computer, no responder: one clock
    assert call_enable(rig.node, False) == (True, 'disabled')
    robot = Spinner(ros_context, offset_responder(ros_context, 0.3))
    try:
        assert wait_for(lambda: node.link.clock.answers >= 3, 10), node.link.values()
        values = node.diagnostics_values()
        # NTP's bound: an exchange's offset is wrong by at most half its round trip (load lengthens them)
        error_bound_ms = values['clock_round_trip_ms_max'] / 2.0 + 1.0
        assert values['clock_offset_ms'] == pytest.approx(300.0, abs=error_bound_ms)
        assert values['clock_round_trip_ms_p50'] > 0.0
        # the moment it was enabled above may have sent a command: count from here
        sent_before = rig.count(rig.commands['left'])
        ok, message = call_enable(rig.node, True)
        assert not ok and 'exceeds max_clock_offset_s (50 ms)' in message
        assert not node.gate.enabled
        time.sleep(0.5)  # an enabled node would send ~25 commands in this time
        assert rig.count(rig.commands['left']) == sent_before
    finally:
        robot.close()


def test_clock_responder_answers_with_the_same_clock(policy_harness, ros_context, node_checkpoint, tmp_path) -> None:
    from bimanual_vla.bringup.clock_responder import ClockResponder

    rig, start = policy_harness
    # the widest allowed offset: on a loaded machine one clock can still measure tens of ms apart
    node = start(write_policy(tmp_path, node_checkpoint), max_clock_offset_s=0.5)
    robot = Spinner(ros_context, ClockResponder(context=ros_context))
    try:
        assert wait_for(lambda: node.link.clock.answers >= 3, 10), node.link.values()
        # one machine, one clock: the offset is zero within half the round trip (NTP's error bound)
        error_bound_s = max(node.link.clock.round_trips) / 2.0 + 1e-3
        assert abs(node.link.clock.offset_s) <= error_bound_s
        assert robot.nodes[0].answered >= 3
        assert node.scheduler.link_delay_s == pytest.approx(node.link.clock.one_way_delay_s())
        assert call_enable(rig.node, True) == (True, 'enabled')
    finally:
        robot.close()


def test_a_remote_rig_sends_trajectories_unless_told_otherwise(policy_harness, node_checkpoint, tmp_path) -> None:
    rig_file = remote_rig_file(tmp_path, 'gpu-box')
    _, start = policy_harness
    node = start(write_policy(tmp_path, node_checkpoint), rig=str(rig_file), image_transport='raw')
    assert node.command_mode == 'trajectory' and not node.scheduler.ticks_lead_by_link
    assert 'arms/left/joint_trajectory' in [p.topic_name.lstrip('/') for p in node.output._pubs.values()]


def test_a_remote_rig_enabled_at_start_waits_for_the_clock_offset(
    policy_harness, ros_context, node_checkpoint, tmp_path
) -> None:
    from bimanual_vla.bringup.clock_responder import ClockResponder

    rig_file = remote_rig_file(tmp_path, 'gpu-box')
    rig, start = policy_harness
    policy = write_policy(tmp_path, node_checkpoint, safety={'max_velocity_rad_s': 2.0, 'enabled_at_start': True})
    # the synthetic rig publishes raw frames and counts per-tick commands (a remote rig defaults to trajectories)
    node = start(policy, rig=str(rig_file), image_transport='raw', command_mode='tick')
    assert node.rig.policy_host == 'gpu-box' and node.link.clock.required
    assert not node.gate.enabled  # no offset measured yet: held disabled
    ok, message = call_enable(rig.node, True)
    assert not ok and 'not measured' in message
    assert not wait_for(lambda: rig.count(rig.commands['left']) > 0, 3)
    robot = Spinner(ros_context, ClockResponder(context=ros_context))
    try:
        assert wait_for(lambda: node.gate.enabled, 10), node.link.values()  # enabled at the first good offset
        assert wait_for(lambda: rig.count(rig.commands['left']) >= 20, 60), node.diagnostics_values()
    finally:
        robot.close()
