"""What launch/*.launch.py start, decided before anything starts: the pure part of the launch files.

A launch file's OpaqueFunction reads its launch arguments and calls one of `rig_processes`,
`sim_processes` or `replay_processes` (plain values in, `ProcessSpec`s out: which package,
executable, node name, parameters, arguments, respawn), then `launch_actions(processes)`, which
checks every executable exactly where launch_ros will look for it (`find_executable`, what
`ExecutableInPackage` does: `<prefix of the package in the ament index>/lib/<package>/<executable>`)
*before* a single action exists:

- a required process (this package's nodes, the recorder, the replayer) that is not there stops the
  launch with one line naming what is missing and how to get it, and no node has started, so none is
  left running as an orphan;
- an optional one (robot_state_publisher, rviz2) that is not there is left out with one warning;
  instead of robot_state_publisher, this package's `robot_description_publisher` puts the rig's URDF
  on `robot_description` (latched, as robot_state_publisher does; no TF without it).

The policy node is decided as `bimanual-vla run` decides it (`preflight.policy_for_rig`): the shipped
default policy whose checkpoint does not fit the rig (the ALOHA checkpoint on an SO-101 rig) is left
out with one warning saying what is missing and how to get it, and the drivers and cameras start; a
policy file the user named whose checkpoint is missing, broken or made for another rig is a
ConfigError (one line) before anything starts. A policy node started without a checkpoint it can
load would exit at once and be respawned every 2 s for ever.

Only `launch_actions` (and `build_actions`) import launch / launch_ros, inside the function, so the
rest is importable and tested where no ROS distribution is installed. Which nodes a rig has and their
parameters come from `bimanual_vla.bringup.nodes`, the source `bimanual-vla run` uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bimanual_vla.bringup.launch_availability import COLCON_HINT, PACKAGE, find_executable
from bimanual_vla.bringup.nodes import HALVES, Half, NodeSpec, rig_nodes, robot_description
from bimanual_vla.bringup.preflight import policy_for_rig
from bimanual_vla.bringup.supervision import LAUNCH_RESPAWN_DELAY_S
from bimanual_vla.config import ConfigError, load_rig, share_dir

# How a launch user gets a checkpoint for a rig that has none: a launch takes a policy file, not --set.
LAUNCH_HOW_TO_GET_A_CHECKPOINT = (
    'to drive this rig with a policy, record demonstrations (bimanual-vla record), train on them '
    '(bimanual-vla train --data BAG --out DIR), then pass policy:=FILE, a policy YAML whose checkpoint: is DIR'
)


@dataclass(frozen=True)
class ProcessSpec:
    """One process a launch file starts, as launch_ros's `Node` takes it.

    `optional` is empty for a process the launch cannot do without; otherwise it says what is lost
    without it (the one warning when its package is missing). `replacement` starts in its place then.
    `left_out` is the one warning for a process decided against before the check (the default policy
    without a checkpoint for the rig): `plan` logs it and never looks for the executable.
    """

    package: str
    executable: str
    name: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    arguments: tuple[str, ...] = ()
    remappings: tuple[tuple[str, str], ...] = ()
    respawn_delay_s: float | None = None
    exit_message: str = ''
    optional: str = ''
    replacement: ProcessSpec | None = None
    left_out: str = ''


class LaunchPlanError(RuntimeError):
    """A required executable is missing: the launch stops before starting anything."""


@dataclass(frozen=True)
class LaunchPlan:
    processes: list[ProcessSpec]
    warnings: list[str]


# ------------------------------------------------------------------------------ the processes


def node_process(spec: NodeSpec) -> ProcessSpec:
    """One of this package's nodes; drivers and the policy node are respawned when their process dies."""
    delay = LAUNCH_RESPAWN_DELAY_S.get(spec.executable)
    message = ''
    if delay is not None:
        note = ''
        if spec.executable == 'policy_node':
            note = ' (disabled, as at start-up, unless the policy file enables it at start)'
        message = f'{spec.name} exited; the arms hold (driver watchdog); respawning in {delay:g} s{note}'
    return ProcessSpec(
        PACKAGE, spec.executable, spec.name, dict(spec.parameters), respawn_delay_s=delay, exit_message=message
    )


def description_processes(rig: str, use_sim_time: bool) -> ProcessSpec:
    """robot_state_publisher (TF and robot_description); without it, robot_description alone."""
    fallback = ProcessSpec(
        PACKAGE, 'robot_description_publisher', parameters={'rig': rig, 'use_sim_time': use_sim_time}
    )
    return ProcessSpec(
        'robot_state_publisher',
        'robot_state_publisher',
        parameters={'robot_description': robot_description(rig), 'use_sim_time': use_sim_time},
        optional='no TF for rviz2 (robot_description_publisher publishes the URDF instead)',
        replacement=fallback,
    )


def rviz_process(use_sim_time: bool) -> ProcessSpec:
    return ProcessSpec(
        'rviz2',
        'rviz2',
        parameters={'use_sim_time': use_sim_time},
        arguments=('-d', str(share_dir() / 'config' / 'rviz' / 'bimanual.rviz')),
        optional='no visualisation (rviz:=true asked for it)',
    )


def recorder_process(rig: str, out: str, split_mb: str = '0') -> ProcessSpec:
    """`bimanual-vla record`; `split_mb` > 0 closes a file every so many MB (long sessions, see bag_split)."""
    arguments = ('record', out, '--rig', rig, '--max-bag-size', str(float(split_mb or 0)))
    return ProcessSpec(PACKAGE, 'bimanual-vla', arguments=arguments)


def replayer_process(bag: str, rate: str) -> ProcessSpec:
    return ProcessSpec(PACKAGE, 'bimanual-vla', arguments=('replay', bag, '--rate', rate))


def choose_policy(rig: str, policy: str) -> tuple[str | None, list[ProcessSpec]]:
    """The policy file the policy node gets (None: no policy node) and the left-out policy node, if any.

    `policy` is the launch argument: '' or 'none' asks for no policy node; 'default' (the launch
    files' default) is the shipped policy, left out with its one warning where its checkpoint does
    not fit the rig; any other file is the user's, and a checkpoint of it that does not fit raises
    ConfigError (`<file>: checkpoint: <dir>: <problem>`).
    """
    if policy.strip() == '':
        return None, []
    notes: list[str] = []
    asked = None if policy == 'default' else policy
    chosen = policy_for_rig(load_rig(rig), asked, {}, notes.append, how_to=LAUNCH_HOW_TO_GET_A_CHECKPOINT)
    return chosen, [ProcessSpec(PACKAGE, 'policy_node', 'policy_node', left_out=note) for note in notes]


def launch_half(only: str) -> Half | None:
    """The `only:=` launch argument: '' for the whole rig, `robot` or `policy` for one half of a rig split
    across two computers (docs/remote_policy.md), as `bimanual-vla run --only`."""
    if only.strip() == '':
        return None
    if only not in HALVES:
        raise ConfigError(f"only:={only}: must be one of {', '.join(HALVES)} or '' (the whole rig)")
    return only  # type: ignore[return-value]


def choose_half_policy(rig: str, policy: str, half: Half | None) -> tuple[str | None, list[ProcessSpec]]:
    """`choose_policy` for one half: the robot half has no policy node (it runs on the policy host), and
    the policy half without a policy to run is a ConfigError (it would start nothing)."""
    if half == 'robot':
        return None, []
    chosen, left_out = choose_policy(rig, policy)
    if half == 'policy' and chosen is None:
        why = f': {left_out[0].left_out}' if left_out else ' (policy:= is empty)'
        raise ConfigError(f'only:=policy: no policy to run on rig {rig!r}{why}')
    return chosen, left_out


def bringup_processes(
    rig: str,
    policy: str,
    *,
    use_sim_time: bool,
    rviz: bool,
    record: str,
    record_split_mb: str,
    only: str = '',
    sim_overrides: dict[str, Any] | None = None,
) -> list[ProcessSpec]:
    """The rig's nodes for the half `only` asks for (`launch_half`), the policy node per `choose_policy`
    (with the warning of one left out), and what every bringup launch adds: robot_state_publisher (on
    the robot's side only: the policy half gets the robot's), and rviz2 and a bag recorder when asked for."""
    half = launch_half(only)
    chosen, left_out = choose_half_policy(rig, policy, half)
    specs = rig_nodes(rig, policy=chosen, use_sim_time=use_sim_time, sim_overrides=sim_overrides, only=half)
    processes = [node_process(s) for s in specs] + list(left_out)
    if half != 'policy':
        processes.append(description_processes(rig, use_sim_time))
    if rviz:
        processes.append(rviz_process(use_sim_time))
    if record:
        processes.append(recorder_process(rig, record, record_split_mb))
    return processes


def rig_processes(
    rig: str, policy: str, *, rviz: bool, record: str, record_split_mb: str = '0', only: str = ''
) -> list[ProcessSpec]:
    """launch/rig.launch.py: drivers per arm and camera, the policy node (`policy`: see `choose_policy`);
    `only`: one half (`launch_half`)."""
    return bringup_processes(
        rig, policy, use_sim_time=False, rviz=rviz, record=record, record_split_mb=record_split_mb, only=only
    )


def sim_processes(
    rig: str,
    policy: str,
    *,
    task: str = '',
    seed: str = '',
    servo_bus: str = '',
    rviz: bool,
    record: str,
    record_split_mb: str = '0',
    only: str = '',
) -> list[ProcessSpec]:
    """launch/sim.launch.py: sim_rig (behind arm_drivers with `servo_bus`) on sim time, the policy node.

    `task`, `seed`, `servo_bus` reach sim_rig only when given ('' = the rig's `sim:` block), so one
    launch file serves rigs whose tasks differ (ALOHA's transfer_cube, the SO-101 twin's handover_cube).
    `only`: one half (`launch_half`); the policy half runs on the sim's clock, which reaches it over the link.
    """
    sim: dict[str, Any] = {}
    if task:
        sim['task'] = task
    if seed:
        sim['seed'] = int(seed)
    if servo_bus:
        sim['servo_bus'] = servo_bus
    return bringup_processes(
        rig,
        policy,
        use_sim_time=True,
        rviz=rviz,
        record=record,
        record_split_mb=record_split_mb,
        only=only,
        sim_overrides=sim,
    )


def replay_processes(bag: str, rig: str, policy: str, rate: str, *, rviz: bool) -> list[ProcessSpec]:
    """launch/replay.launch.py: the bag (with /clock) and the policy node on bag time, no drivers."""
    chosen, left_out = choose_policy(rig, policy)
    processes = [replayer_process(bag, rate), *left_out]
    if chosen is not None:
        policy_node = NodeSpec('policy_node', 'policy_node', {'rig': rig, 'policy': chosen, 'use_sim_time': True})
        processes.append(node_process(policy_node))
    processes.append(description_processes(rig, True))
    if rviz:
        processes.append(rviz_process(use_sim_time=True))
    return processes


# ------------------------------------------------------------------------------ the check


def plan(processes: Sequence[ProcessSpec], find: Callable[[str, str], str | None] | None = None) -> LaunchPlan:
    """Check every executable before anything starts: the processes to start and one warning per
    optional one left out (and per one decided against, `left_out`); LaunchPlanError (one line) if a
    required one is missing. `find` defaults to `find_executable`."""
    find = find or find_executable
    missing: list[str] = []
    warnings: list[str] = []
    kept: list[ProcessSpec] = []
    for process in processes:
        if process.left_out:
            warnings.append(process.left_out)
            continue
        if find(process.package, process.executable) is not None:
            kept.append(process)
            continue
        label = f'{process.package}/{process.executable}'
        if not process.optional:
            missing.append(label)
            continue
        warnings.append(f'{label} is not installed: skipped, {process.optional}')
        if process.replacement is not None:
            kept.append(process.replacement)
            if find(process.replacement.package, process.replacement.executable) is None:
                missing.append(f'{process.replacement.package}/{process.replacement.executable}')
    if missing:
        own = any(label.startswith(f'{PACKAGE}/') for label in missing)
        raise LaunchPlanError(
            f'not found: {", ".join(dict.fromkeys(missing))}; nothing was started' + (f'. {COLCON_HINT}' if own else '')
        )
    return LaunchPlan(kept, warnings)


# ------------------------------------------------------------------------------ launch_ros


def build_actions(processes: Sequence[ProcessSpec]) -> list:
    """launch_ros Nodes for `processes`, each respawned one with an OnProcessExit rule saying why."""
    from launch.actions import LogInfo, RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch_ros.actions import Node

    actions: list = []
    for process in processes:
        kwargs: dict[str, Any] = {'package': process.package, 'executable': process.executable, 'output': 'screen'}
        if process.name is not None:
            kwargs['name'] = process.name
        if process.parameters:
            kwargs['parameters'] = [process.parameters]
        if process.arguments:
            kwargs['arguments'] = list(process.arguments)
        if process.remappings:
            kwargs['remappings'] = list(process.remappings)
        if process.respawn_delay_s is not None:
            kwargs.update(respawn=True, respawn_delay=process.respawn_delay_s)
        node = Node(**kwargs)
        actions.append(node)
        if process.exit_message:
            rule = OnProcessExit(target_action=node, on_exit=[LogInfo(msg=process.exit_message)])
            actions.append(RegisterEventHandler(rule))
    return actions


def launch_actions(processes: Sequence[ProcessSpec]) -> list:
    """What a launch file's OpaqueFunction returns: the checked plan as actions, warnings logged.

    Raises LaunchPlanError (launch prints its one line and exits non-zero) before any action exists.
    """
    import launch.logging

    checked = plan(processes)
    logger = launch.logging.get_logger('bimanual_vla')
    for warning in checked.warnings:
        logger.warning(warning)
    return build_actions(checked.processes)


def truthy(text: str) -> bool:
    return text.strip().lower() in ('1', 'true', 'yes', 'on')
