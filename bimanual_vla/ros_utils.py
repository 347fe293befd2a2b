"""Small helpers every node shares: rig parameter, diagnostics status, time conversions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.node import Node

from bimanual_vla.config import RigConfig, load_rig

# Levels as the message wants them (a single byte: b'\x00' .. b'\x03').
OK: bytes = DiagnosticStatus.OK
WARN: bytes = DiagnosticStatus.WARN
ERROR: bytes = DiagnosticStatus.ERROR
STALE: bytes = DiagnosticStatus.STALE


def declare_rig(node: Node, default: str = '') -> RigConfig:
    """Declare the `rig` parameter (a rig YAML path or shipped rig name) and load it.

    Raises ConfigError (naming file and field) if the parameter is empty or the file is invalid.
    """
    from bimanual_vla.config import ConfigError

    rig = node.declare_parameter('rig', default).get_parameter_value().string_value
    if not rig:
        raise ConfigError(f'node {node.get_name()}: parameter "rig" is required (a rig YAML path or name)')
    return load_rig(rig)


def diagnostic_status(
    name: str, level: bytes, message: str, values: Mapping[str, Any] | None = None, hardware_id: str = ''
) -> DiagnosticStatus:
    """A DiagnosticStatus with values rendered as strings (floats with 4 significant digits)."""
    status = DiagnosticStatus(name=name, level=level, message=message, hardware_id=hardware_id)
    for key, value in (values or {}).items():
        text = f'{value:.4g}' if isinstance(value, float) else str(value)
        status.values.append(KeyValue(key=key, value=text))
    return status


def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(seconds: float) -> Time:
    sec = int(seconds // 1)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=sec, nanosec=nanosec)


def run_node(
    label: str,
    node_class: Callable[[], Node],
    args: list[str] | None = None,
    *,
    startup_errors: tuple[type[BaseException], ...] = (ValueError,),
) -> int:
    """The body of every node's ``main()``: start, spin until Ctrl-C, clean up; exit status.

    A node whose constructor raises one of `startup_errors` (bad config, missing device or
    checkpoint) prints one line and returns 2 instead of a traceback. The node spins on a
    SingleThreadedExecutor: every node keeps its slow work in threads of its own, and rclpy's
    MultiThreadedExecutor costs more than it gives (see ``bimanual_vla/executors.py``).
    """
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from bimanual_vla.rosenv import apply_pip_defaults

    apply_pip_defaults()
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = node_class()
        except startup_errors as exc:
            print(f'{label}: error: {exc}', file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
