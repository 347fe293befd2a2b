"""replay paces a simulated recording by its sim clock (the bag's time base), not by the squeezed receive times."""

from __future__ import annotations

import time

import pytest
from helpers.datasets import HEADER_OFFSET, MS, SEC, T0, BagSpec, write_bag

from bimanual_vla.bags.read import BagMessage
from bimanual_vla.bags.replay import StampTimeline


def _js(stamp_ns: int, recv_ns: int) -> BagMessage:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    msg = JointState(name=['j'], position=[0.0])
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, SEC)
    return BagMessage('/joint_states', 'sensor_msgs/msg/JointState', recv_ns, serialize_message(msg))


def test_timeline_places_messages_on_sim_time_and_never_goes_back() -> None:
    line = StampTimeline('/joint_states')
    task = BagMessage('/policy/task', 'std_msgs/msg/String', 5, b'')
    assert line.place(task) is None  # nothing to pace by before the first stamp
    placed = [line.place(_js(s * MS, r)) for r, s in enumerate([0, 20, 40, 8980])]  # 8.98 s of sim time
    assert placed == [(0, 0), (20 * MS, 20 * MS), (40 * MS, 40 * MS), (8980 * MS, 8980 * MS)]
    assert line.place(task) == (8980 * MS, 8980 * MS)  # unstamped: at the newest joint state's time
    # a reset: sim time goes back to 0; play positions go on, /clock follows the sim
    assert line.place(_js(0, 10)) == (8980 * MS, 0)
    assert line.place(_js(20 * MS, 11)) == (9000 * MS, 20 * MS)


@pytest.mark.ros
def test_replay_of_a_fast_sim_recording_takes_its_sim_duration(tmp_path, ros_context, spin) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState

    from bimanual_vla import topics as T
    from bimanual_vla.bags.replay import BagPlayer

    # 2 s of sim time recorded 4x faster than real time (received within 0.5 s), stamps on the sim clock
    spec = BagSpec(end_s=2.0, speed=4.0, header_offset=HEADER_OFFSET, camera_gap=None, markers=False,
                   time_base='header')  # fmt: skip
    bag = write_bag(tmp_path / 'sim', spec)
    listener = Node('listener', context=ros_context)
    arrivals: list[float] = []
    clocks: list[int] = []
    listener.create_subscription(JointState, '/joint_states', lambda m: arrivals.append(time.monotonic()), 100)
    listener.create_subscription(
        Clock, '/clock', lambda m: clocks.append(m.clock.sec * SEC + m.clock.nanosec), T.CLOCK_QOS
    )
    player = BagPlayer(
        context=ros_context,
        parameter_overrides=[
            Parameter('bag', value=str(bag)),
            Parameter('rate', value=2.0),
            Parameter('topics', value=['/joint_states']),
            Parameter('wait_for_subscribers_s', value=15.0),
            Parameter('autostart', value=False),
        ],
    )
    assert player.time_base.base == 'header' and player.time_base.source == 'metadata'
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(listener)
    executor.add_node(player)
    assert spin(executor, lambda: player.clock_pub.get_subscription_count() > 0, 15.0)
    player.start()
    assert spin(executor, lambda: player.finished.is_set(), 30.0)
    spin(executor, lambda: False, 0.3)
    player.stop()
    executor.shutdown()

    assert len(arrivals) == 200  # 2 arms x 50 Hz x 2 s
    # 2 s of sim time at rate 2 take ~1 s of wall time (receive times would give 0.25 s)
    assert arrivals[-1] - arrivals[0] >= 0.9, arrivals[-1] - arrivals[0]
    sim_lo, sim_hi = T0 + HEADER_OFFSET, T0 + HEADER_OFFSET + 2 * SEC
    assert clocks and all(sim_lo <= c <= sim_hi for c in clocks), (clocks[:3], clocks[-3:])  # /clock in sim time
    assert clocks == sorted(clocks)
