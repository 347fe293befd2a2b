"""Message types for bags: rclpy classes, recorded definitions and type hashes, QoS conversion.

A rosbag2 file must carry each topic's message definition and its RIHS01 type hash
so that readers without our Python packages (``ros2 bag``, rosbags, Foxglove) can
decode it. ROS 2 installs the ``.msg`` sources next to the generated code
(``<prefix>/share/<pkg>/msg/<Type>.msg``), both from a distribution and from the
PyPI wheels, so we read those (the definitions the publishers were built from) and
let rosbags render them in the rosbag2 format and hash them. The hash is checked
against the one the publisher announces on the graph.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime


class UnknownMessageTypeError(LookupError):
    """A message type that is neither installed here nor described in the bag."""


def split_type(type_name: str) -> tuple[str, str, str]:
    """'sensor_msgs/msg/Image' -> ('sensor_msgs', 'msg', 'Image'); also accepts 'sensor_msgs/Image'."""
    parts = type_name.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3 or not all(parts):
        raise UnknownMessageTypeError(f'malformed message type name {type_name!r} (expected pkg/msg/Type)')
    return parts[0], parts[1], parts[2]


@functools.cache
def message_class(type_name: str) -> type:
    """The rclpy message class for `type_name`; UnknownMessageTypeError if its package is not installed."""
    pkg, sub, name = split_type(type_name)
    try:
        module = importlib.import_module(f'{pkg}.{sub}')
        return getattr(module, name)
    except (ImportError, AttributeError) as exc:
        raise UnknownMessageTypeError(
            f'message type {type_name} is not installed here (no Python class {pkg}.{sub}.{name}): {exc}'
        ) from exc


def _share_prefixes() -> list[Path]:
    prefixes = [Path(p) for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    prefixes.append(Path(sys.prefix))
    return prefixes


def _interface_source(type_name: str) -> tuple[str, str]:
    """(text, 'msg'|'idl') of the installed interface file for `type_name`."""
    pkg, sub, name = split_type(type_name)
    for prefix in _share_prefixes():
        for ext in ('msg', 'idl'):
            path = prefix / 'share' / pkg / sub / f'{name}.{ext}'
            if path.is_file():
                return path.read_text(encoding='utf-8'), ext
    raise UnknownMessageTypeError(
        f'no interface file for {type_name} under {", ".join(str(p / "share" / pkg / sub) for p in _share_prefixes())}'
    )


def _referenced_types(node: Any, found: set[str]) -> None:
    """Collect 'pkg/msg/Type' names from rosbags' nested field descriptors."""
    if isinstance(node, str):
        if node.count('/') == 2:
            found.add(node)
    elif isinstance(node, tuple | list):
        for item in node:
            _referenced_types(item, found)


@functools.cache
def _store_for(type_name: str) -> Any:
    """A rosbags Typestore holding `type_name` and everything it references, from installed sources."""
    from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

    store = get_typestore(Stores.EMPTY)
    types: dict[str, Any] = {}
    pending, seen = [type_name], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        text, ext = _interface_source(current)
        parsed = get_types_from_msg(text, current) if ext == 'msg' else get_types_from_idl(text)
        types.update(parsed)
        refs: set[str] = set()
        _referenced_types(parsed.get(current), refs)
        pending.extend(refs - seen)
    store.register(types)
    return store


@functools.cache
def type_definition(type_name: str) -> tuple[str, str]:
    """(message definition in rosbag2's ros2msg format, RIHS01 hash) for an installed type."""
    store = _store_for(type_name)
    msgdef, _ = store.generate_msgdef(type_name, ros_version=2)
    return msgdef, store.hash_rihs01(type_name)


# ------------------------------------------------------------------------ QoS

_INFINITE_NS = 2**63 - 1


def _ns(duration: Any) -> int:
    return int(getattr(duration, 'nanoseconds', 0))


def _qos_time(ns: int) -> QosTime:
    sec, nsec = divmod(min(ns, _INFINITE_NS), 1_000_000_000)
    return QosTime(sec, nsec)


def qos_to_bag(profile: Any) -> Qos:
    """rclpy QoSProfile (as offered by a publisher) -> rosbags Qos (what metadata.yaml records)."""
    return Qos(
        history=QosHistory(int(profile.history)),
        depth=int(profile.depth),
        reliability=QosReliability(int(profile.reliability)),
        durability=QosDurability(int(profile.durability)),
        deadline=_qos_time(_ns(profile.deadline)),
        lifespan=_qos_time(_ns(profile.lifespan)),
        liveliness=QosLiveliness(int(profile.liveliness)),
        liveliness_lease_duration=_qos_time(_ns(profile.liveliness_lease_duration)),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def replay_qos(offered: list[Qos], default_depth: int = 10) -> Any:
    """The QoSProfile to republish with, from the profiles the recorded publishers offered.

    Reliability and durability are kept when all recorded publishers agree (so late
    joiners get latched values and best-effort streams stay best effort, exactly as
    live); where they disagree or nothing was recorded, reliable + volatile, which
    every subscriber accepts. Depth: the recorded one if known, else `default_depth`
    (graph queries report depth 0 / history unknown for remote publishers).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability = ReliabilityPolicy.RELIABLE
    durability = DurabilityPolicy.VOLATILE
    depth = default_depth
    if offered:
        rel = {q.reliability for q in offered}
        dur = {q.durability for q in offered}
        if rel == {QosReliability.BEST_EFFORT}:
            reliability = ReliabilityPolicy.BEST_EFFORT
        if dur == {QosDurability.TRANSIENT_LOCAL}:
            durability = DurabilityPolicy.TRANSIENT_LOCAL
            depth = 1
        depths = [q.depth for q in offered if q.history == QosHistory.KEEP_LAST and q.depth > 0]
        if depths:
            depth = max(depths)
    return QoSProfile(reliability=reliability, durability=durability, history=HistoryPolicy.KEEP_LAST, depth=depth)


def subscription_qos(offered_profiles: list[Any], depth: int = 100) -> Any:
    """QoS for recording a topic: compatible with every publisher and as strong as all of them offer.

    Reliable only if every publisher is reliable (a reliable reader does not match a
    best-effort writer); transient local only if every publisher is, so latched
    values published before the recorder started are still captured.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = bool(offered_profiles) and all(p.reliability == ReliabilityPolicy.RELIABLE for p in offered_profiles)
    latched = bool(offered_profiles) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered_profiles)
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
    )
