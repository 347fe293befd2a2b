"""Offline test of a policy on a recording: replay a bag (with /clock) and run the policy node on
bag time. No drivers: the policy's commands go to the topics, where you can record or inspect them.

    ros2 launch bimanual_vla replay.launch.py bag:=~/bags/run1 rig:=so101_bimanual rate:=1.0
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from bimanual_vla.bringup.launch_actions import launch_actions, replay_processes, truthy


def _nodes(context):
    """Everything is decided and every executable checked before the first process starts."""

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    processes = replay_processes(arg('bag'), arg('rig'), arg('policy'), arg('rate'), rviz=truthy(arg('rviz')))
    return launch_actions(processes)


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument('bag', description='rosbag2 directory to replay'),
            DeclareLaunchArgument('rig', default_value='aloha_sim', description='rig the bag was recorded on'),
            DeclareLaunchArgument('policy', default_value='default', description='policy YAML or name'),
            DeclareLaunchArgument('rate', default_value='1.0', description='replay speed factor'),
            DeclareLaunchArgument('rviz', default_value='false', description='start rviz2 with bimanual.rviz'),
            OpaqueFunction(function=_nodes),
        ]
    )
