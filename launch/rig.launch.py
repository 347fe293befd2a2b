"""Real rig: one arm_driver per arm and one camera_driver per camera from the rig YAML, the policy
node, robot_state_publisher with the rig's URDF, and optionally rviz2 and a bag recorder.
robot_state_publisher and rviz2 are optional (left out with one warning when not installed); a missing
executable of this package stops the launch before anything starts (bimanual_vla/bringup/launch_actions.py).

    ros2 launch bimanual_vla rig.launch.py rig:=so101_bimanual policy:=default rviz:=true record:=~/bags/run1
    ros2 launch bimanual_vla rig.launch.py rig:=my_rig only:=robot     # on the robot; only:=policy on the GPU host
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from bimanual_vla.bringup.launch_actions import launch_actions, rig_processes, truthy


def _nodes(context):
    """Everything is decided and every executable checked before the first process starts."""

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    processes = rig_processes(
        arg('rig'),
        arg('policy'),
        rviz=truthy(arg('rviz')),
        record=arg('record'),
        record_split_mb=arg('record_split_mb'),
        only=arg('only'),
    )
    return launch_actions(processes)


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument('rig', default_value='so101_bimanual', description='rig YAML path or shipped name'),
            DeclareLaunchArgument('policy', default_value='default', description='policy YAML or name; empty: none'),
            DeclareLaunchArgument('rviz', default_value='false', description='start rviz2 with bimanual.rviz'),
            DeclareLaunchArgument('record', default_value='', description='record a bag to this directory'),
            DeclareLaunchArgument(
                'record_split_mb', default_value='0', description='split the bag into files of this many MB (0: one)'
            ),
            DeclareLaunchArgument(
                'only',
                default_value='',
                description="robot | policy: one half of a rig split across two hosts (docs/remote_policy.md); '': all",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
