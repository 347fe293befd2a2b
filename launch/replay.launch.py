"""Offline test of a policy on a recording: replay a bag (with /clock) and run the policy node on
bag time. No drivers: the policy's commands go to the topics, where you can record or inspect them.

    ros2 launch bimanual_vla replay.launch.py bag:=~/bags/run1 rig:=so101_bimanual rate:=1.0
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from bimanual_vla.bringup.launch_actions import PACKAGE, robot_state_publisher, rviz, spec_actions, truthy
from bimanual_vla.bringup.nodes import NodeSpec


def _nodes(context):
    rig = LaunchConfiguration('rig').perform(context)
    bag = LaunchConfiguration('bag').perform(context)
    rate = LaunchConfiguration('rate').perform(context)
    policy = LaunchConfiguration('policy').perform(context)
    replay = Node(
        package=PACKAGE,
        executable='bimanual-vla',
        arguments=['replay', bag, '--rate', rate],
        output='screen',
    )
    policy_node = NodeSpec('policy_node', 'policy_node', {'rig': rig, 'policy': policy, 'use_sim_time': True})
    actions = [replay, *spec_actions([policy_node]), robot_state_publisher(rig, use_sim_time=True)]
    if truthy(LaunchConfiguration('rviz').perform(context)):
        actions.append(rviz(use_sim_time=True))
    return actions


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
