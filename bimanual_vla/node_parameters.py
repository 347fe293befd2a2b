"""The parameters each node executable declares, by name and type, checked before the node starts.

rclpy silently ignores an override of a parameter that no node declares (`-p inference.num_steps:=-1`,
`run --set policy_node.inference.num_steps=-1` would change nothing), and refuses a value of the
wrong type with a bare `InvalidParameterTypeException`. Every node's `main()` (through
`ros_utils.run_node`), the bringup (`bringup/compose.py`) and `run --set` check the overrides
against this table first, and say what is wrong in one line: `parameter enabled: must be true or
false, got 'maybe'`. test/bringup/test_node_parameters.py constructs every node class and compares
what it declares with this table, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bimanual_vla.config import ConfigError

BOOL, INTEGER, DOUBLE, STRING, ANY = 'bool', 'integer', 'double', 'string', 'any'

# rclpy declares these on every node.
_RCLPY: dict[str, str] = {'use_sim_time': BOOL, 'start_type_description_service': BOOL}

NODE_PARAMETERS: dict[str, dict[str, str]] = {
    'arm_driver': {
        'rig': STRING,
        'arm': STRING,
        'read_rate_hz': DOUBLE,
        'command_timeout_s': DOUBLE,
        'max_step_rad': DOUBLE,
        'max_velocity_rad_s': DOUBLE,
        'estop_action': STRING,
        'calibration': STRING,
        'torque_on_start': BOOL,
        'torque_off_on_exit': BOOL,
        **_RCLPY,
    },
    'camera_driver': {
        'rig': STRING,
        'camera': STRING,
        'source': ANY,  # a device path, an index, a video file or test_pattern
        'camera_info_file': STRING,
        'reconnect_initial_s': DOUBLE,
        'reconnect_max_s': DOUBLE,
        'frozen_after_s': ANY,  # checked against its bound by the node
        'jpeg_quality': INTEGER,
        **_RCLPY,
    },
    'sim_rig': {
        'rig': STRING,
        'task': STRING,
        'seed': INTEGER,
        'real_time_factor': DOUBLE,
        'servo_bus': STRING,
        'render_rate_hz': DOUBLE,
        'camera_width': INTEGER,
        'camera_height': INTEGER,
        'expert': BOOL,
        'expert_noise_rad': DOUBLE,
        'expert_max_joint_speed': DOUBLE,
        'expert_approach': STRING,
        'expert_time_warp': DOUBLE,
        'expert_meet_jitter': DOUBLE,
        'expert_aim_left': BOOL,
        'servo_bus_dir': STRING,
        'jpeg_quality': INTEGER,
        **_RCLPY,
    },
    'policy_node': {
        'rig': STRING,
        'policy': STRING,
        'checkpoint': STRING,
        'enabled': BOOL,
        'chunking': STRING,
        'markers_every_n_chunks': INTEGER,
        'command_mode': STRING,
        'image_transport': STRING,
        'max_clock_offset_s': DOUBLE,
        **_RCLPY,
    },
    'estop_input': {
        'keyboard': BOOL,
        'device': STRING,
        'key': STRING,
        'mode': STRING,
        'takeover_arms': STRING,
        **_RCLPY,
    },
    'robot_description_publisher': {'rig': STRING, **_RCLPY},
    'clock_responder': {**_RCLPY},
    'teleop': {
        'rig': STRING,
        'leaders': STRING,
        'armed': BOOL,
        'ramp': BOOL,
        'ramp_velocity_rad_s': DOUBLE,
        'follower_max_age_s': DOUBLE,
        'takeover': BOOL,
        'takeover_threshold_rad': DOUBLE,
        'takeover_still_rad': DOUBLE,
        'takeover_release_s': DOUBLE,
        **_RCLPY,
    },
}


def value_problem(kind: str, value: Any, *, convert: bool) -> tuple[Any, str | None]:
    """(the value as the node will get it, None) or (value, what is wrong with it) for a parameter of `kind`.

    `convert`: a caller that passes the value on itself (`run --set`, the bringup) may give a whole
    number to a double (`--set sim_rig.real_time_factor=1`) or a number to a string parameter; a
    value that rclpy hands over as parsed (`-p x:=5`) must already have the declared type.
    """
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == ANY:
        return value, None
    if kind == BOOL:
        return value, None if isinstance(value, bool) else f'must be true or false, got {value!r}'
    if kind == INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value, None if ok else f'must be an integer, got {value!r}'
    if kind == DOUBLE:
        if isinstance(value, float):
            return value, None
        if is_number and convert:
            return float(value), None
        hint = f' (write {float(value)!r})' if is_number else ''
        return value, f'must be a floating-point number{hint}, got {value!r}'
    if isinstance(value, str):
        return value, None
    if is_number and convert:
        return str(value), None
    return value, f'must be a string, got {value!r}'


def check_overrides(executable: str, params: Mapping[str, Any], where: str, *, convert: bool) -> dict[str, Any]:
    """`params` as the node will get them; ConfigError `<where><name>: <problem>` for the first bad one.

    `where` names how the user gave them: `'--set policy_node.'`, `'parameter '`.
    """
    declared = NODE_PARAMETERS.get(executable)
    if declared is None:
        raise ConfigError(f'{where.rstrip(". ")}: unknown node executable {executable!r}')
    out: dict[str, Any] = {}
    for name, value in params.items():
        kind = declared.get(name)
        if kind is None:
            names = ', '.join(sorted(declared))
            raise ConfigError(f'{where}{name}: {executable} declares no parameter {name} (its parameters: {names})')
        out[name], problem = value_problem(kind, value, convert=convert)
        if problem:
            raise ConfigError(f'{where}{name}: {problem}')
    return out


def type_exception_text(exc: Exception) -> str:
    """rclpy's InvalidParameterTypeException in the one-line form (`parameter rate: Trying to set ...`).

    rclpy makes its one argument `<message>: <parameter name>`.
    """
    message, _, name = str(exc).rpartition(': ')
    return f'parameter {name}: {message}' if message else f'parameter ?: {exc}'


def check_node_overrides(executable: str, context: Any = None) -> None:
    """Check the overrides a node executable was started with (`--ros-args -p ...`, a params file).

    A plain rclpy node of the same name sees the same overrides as the node to come (the remapping
    of `__node` and the per-name sections of a params file apply alike); it is made and destroyed here,
    before the real node opens a port or loads a model. ConfigError names the parameter. An executable
    the table does not list is not checked.
    """
    from rclpy.node import Node

    if executable not in NODE_PARAMETERS:
        return
    probe = Node(executable, context=context, enable_rosout=False, start_parameter_services=False)
    try:
        # rclpy has no public accessor for a node's overrides
        overrides = {name: p.value for name, p in probe._parameter_overrides.items()}
    finally:
        probe.destroy_node()
    check_overrides(executable, overrides, 'parameter ', convert=False)
