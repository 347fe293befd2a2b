"""Launch actions shared by launch/*.launch.py: bimanual_vla.bringup.nodes specs as launch_ros Nodes.

Imported only by launch files (it needs launch_ros). Kept thin on purpose: which nodes a rig has
and their parameters come from `bimanual_vla.bringup.nodes`, the same source `bimanual-vla run` uses.
"""

from __future__ import annotations

from launch.actions import LogInfo, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch_ros.actions import Node

from bimanual_vla.bringup.nodes import NodeSpec, robot_description
from bimanual_vla.bringup.supervision import LAUNCH_RESPAWN_DELAY_S
from bimanual_vla.config import share_dir

PACKAGE = 'bimanual_vla'


def spec_action(spec: NodeSpec) -> Node:
    """One node; drivers and the policy node are respawned by launch when their process dies."""
    delay = LAUNCH_RESPAWN_DELAY_S.get(spec.executable)
    respawn = {'respawn': True, 'respawn_delay': delay} if delay is not None else {}
    return Node(
        package=PACKAGE,
        executable=spec.executable,
        name=spec.name,
        parameters=[spec.parameters],
        output='screen',
        **respawn,
    )


def spec_actions(specs: list[NodeSpec]) -> list:
    """The nodes, plus for each respawned one a rule that says in the log why it is restarting."""
    actions: list = []
    for spec in specs:
        node = spec_action(spec)
        actions.append(node)
        delay = LAUNCH_RESPAWN_DELAY_S.get(spec.executable)
        if delay is not None:
            note = ''
            if spec.executable == 'policy_node':
                note = ' (disabled, as at start-up, unless the policy file enables it at start)'
            message = f'{spec.name} exited; the arms hold (driver watchdog); respawning in {delay:g} s{note}'
            actions.append(RegisterEventHandler(OnProcessExit(target_action=node, on_exit=[LogInfo(msg=message)])))
    return actions


def robot_state_publisher(rig: str, use_sim_time: bool) -> Node:
    return Node(
        package='robot_state_publisher',
        executable='robot_state_publisher',
        parameters=[{'robot_description': robot_description(rig), 'use_sim_time': use_sim_time}],
        output='screen',
    )


def rviz(use_sim_time: bool) -> Node:
    return Node(
        package='rviz2',
        executable='rviz2',
        arguments=['-d', str(share_dir() / 'config' / 'rviz' / 'bimanual.rviz')],
        parameters=[{'use_sim_time': use_sim_time}],
        output='screen',
    )


def recorder(rig: str, out: str, split_mb: str = '0') -> Node:
    """`bimanual-vla record`; `split_mb` > 0 closes a file every so many MB (long sessions, see bag_split)."""
    arguments = ['record', out, '--rig', rig, '--max-bag-size', str(float(split_mb or 0))]
    return Node(package=PACKAGE, executable='bimanual-vla', arguments=arguments, output='screen')


def bringup_actions(context, rig: str, specs: list[NodeSpec], use_sim_time: bool) -> list[Node]:
    """The rig's nodes plus what every bringup launch adds: robot_state_publisher, and rviz2 and a
    bag recorder when the `rviz` / `record` launch arguments ask for them."""
    from launch.substitutions import LaunchConfiguration

    actions = spec_actions(specs) + [robot_state_publisher(rig, use_sim_time=use_sim_time)]
    if truthy(LaunchConfiguration('rviz').perform(context)):
        actions.append(rviz(use_sim_time=use_sim_time))
    record = LaunchConfiguration('record').perform(context)
    if record:
        actions.append(recorder(rig, record, LaunchConfiguration('record_split_mb').perform(context)))
    return actions


def truthy(text: str) -> bool:
    return text.strip().lower() in ('1', 'true', 'yes', 'on')
