"""`clock_responder`: answers the policy node's clock probes, on the robot's computer.

Started with the robot half of a rig whose policy runs elsewhere (the rig file's `policy_host`,
`bimanual-vla run --only robot`; docs/remote_policy.md). Each probe on `clock_sync/ping` is answered
at once on `clock_sync/pong` with the robot clock's time it arrived (`time_ref`) and the time the
answer leaves (`header.stamp`), NTP's t2 and t3; the policy node computes the offset and round trip
(`bimanual_vla.policy_node.clock_offset`). The clock is the node's ROS time: sim time on a simulated
rig, the clock the drivers and cameras stamp with. Best effort both ways: a lost probe is one sample
fewer, never a retransmission that would make the round trip look longer than the link.
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from sensor_msgs.msg import TimeReference

from bimanual_vla import topics
from bimanual_vla.config import ConfigError
from bimanual_vla.ros_utils import run_node


class ClockResponder(Node):
    """No parameters besides rclpy's own (`use_sim_time`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__('clock_responder', **kwargs)
        self.answered = 0
        self._pub = self.create_publisher(TimeReference, topics.CLOCK_SYNC_PONG, topics.SENSOR_QOS)
        self.create_subscription(TimeReference, topics.CLOCK_SYNC_PING, self._on_ping, topics.SENSOR_QOS)

    def _on_ping(self, msg: TimeReference) -> None:
        received = self.get_clock().now()
        if received.nanoseconds == 0:  # use_sim_time and no /clock yet: nothing honest to answer
            return
        answer = TimeReference(source=msg.source, time_ref=received.to_msg())
        answer.header.frame_id = msg.header.frame_id
        answer.header.stamp = self.get_clock().now().to_msg()
        self._pub.publish(answer)
        self.answered += 1


def main(args: list[str] | None = None) -> int:
    return run_node('clock_responder', ClockResponder, args, startup_errors=(ConfigError,))


if __name__ == '__main__':
    sys.exit(main())
