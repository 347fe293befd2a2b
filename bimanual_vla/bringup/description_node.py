"""`robot_description_publisher`: the rig's URDF on `robot_description`, for launches without
robot_state_publisher.

robot_state_publisher is optional in the launch files (bimanual_vla/bringup/launch_actions.py): where
it is not installed, this node starts in its place so rviz2's RobotModel, MoveIt and the recorder
still get the URDF (latched: reliable, transient local, as robot_state_publisher publishes it). It
publishes no TF. `bimanual-vla run` composes the same publisher (compose.RobotDescriptionPublisher).
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from std_msgs.msg import String

from bimanual_vla import topics
from bimanual_vla.bringup.nodes import robot_description
from bimanual_vla.config import ConfigError
from bimanual_vla.ros_utils import run_node


class RobotDescriptionNode(Node):
    """Configured by its `rig` parameter (a rig YAML path or shipped name) alone."""

    def __init__(self, **kwargs) -> None:
        super().__init__('robot_description_publisher', **kwargs)
        rig = self.declare_parameter('rig', '').get_parameter_value().string_value
        if not rig:
            raise ConfigError(f'node {self.get_name()}: parameter "rig" is required (a rig YAML path or name)')
        try:
            urdf = robot_description(rig)
        except OSError as exc:
            raise ConfigError(f'{rig}: urdf: cannot read {exc.filename}: {exc.strerror}') from None
        self._pub = self.create_publisher(String, topics.ROBOT_DESCRIPTION, topics.LATCHED_QOS)
        self._pub.publish(String(data=urdf))


def main(args: list[str] | None = None) -> int:
    return run_node('robot_description_publisher', RobotDescriptionNode, args, startup_errors=(ConfigError,))


if __name__ == '__main__':
    sys.exit(main())
