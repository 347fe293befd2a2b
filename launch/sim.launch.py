"""Simulated rig: sim_rig (MuJoCo ALOHA, or the SO-101 twin behind the real arm_drivers) on sim time,
plus the policy node, robot_state_publisher, and optionally rviz2 and a bag recorder. `task` and `seed`
default to the rig's `sim:` block.

    ros2 launch bimanual_vla sim.launch.py task:=transfer_cube seed:=3 rviz:=true
    ros2 launch bimanual_vla sim.launch.py rig:=so101_sim policy:=none
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from bimanual_vla.bringup.launch_actions import launch_actions, sim_processes, truthy


def _nodes(context):
    """Everything is decided and every executable checked before the first process starts."""

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    processes = sim_processes(
        arg('rig'),
        arg('policy'),
        task=arg('task'),
        seed=arg('seed'),
        servo_bus=arg('servo_bus'),
        rviz=truthy(arg('rviz')),
        record=arg('record'),
        record_split_mb=arg('record_split_mb'),
        only=arg('only'),
    )
    return launch_actions(processes)


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument('rig', default_value='aloha_sim', description='simulated rig YAML or name'),
            DeclareLaunchArgument(
                'task',
                default_value='',
                description="transfer_cube | insertion; SO-101 twin: handover_cube | lift_bar; '': the rig's sim.task",
            ),
            DeclareLaunchArgument(
                'seed', default_value='', description="seed of the object poses; '': the rig's sim.seed"
            ),
            DeclareLaunchArgument(
                'servo_bus',
                default_value='',
                description='feetech | dynamixel: each sim arm behind an emulated servo bus, driven by arm_driver',
            ),
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
