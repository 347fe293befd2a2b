"""Synthetic rig bags with known values, for the dataset, export and evaluation tests.

Messages are serialised by rclpy (with the trailing alignment bytes it writes, see DESIGN.md
pitfalls) and written with rosbags' Writer as our recorder writes them. Every value is a
closed-form function of time, so tests can compute what a sample must contain.

Layout (aloha_sim rig: arms left/right with 7 joints, cameras top/left_wrist/right_wrist):

* joint_states: one message per arm every 20 ms (left at +1 ms, right at +2 ms);
  joint j of arm a at tick i reads ``state_value(a, j, i)``;
* arms/<arm>/joint_command: every 20 ms at +3 ms, ``command_value(a, j, i)``;
* cameras: 10 Hz at +4 ms, 6x8 rgb8 frames filled with ``frame_value(cam, n)``;
* policy/task (before the first episode), sim/expert_subtask labels, record/episode markers;
* optionally (``leader``) leader/<arm>/joint_states every 20 ms at +5 ms, ``leader_value(a, j, i)``,
  and (``strings``) any std_msgs/String messages (record/discard, teleop/intervention markers).

By default header stamps equal receive times (a live rig: one clock). ``header_offset`` puts the
stamps on another clock (like sim time); ``speed`` > 1 records a sim run faster than real time:
the stamps keep the timeline above while the messages arrive ``speed`` times faster (receive
time ``T0 + (t - T0) / speed``), as ``collect`` records; ``time_base`` writes the metadata key
``collect`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SEC = 1_000_000_000
MS = 1_000_000
T0 = 1000 * SEC
ARMS = ('left', 'right')
JOINTS = ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate', 'gripper')
CAMERAS = ('top', 'left_wrist', 'right_wrist')
JOINT_NAMES = [f'{a}_{j}' for a in ARMS for j in JOINTS]
TASK = 'transfer the cube to the left arm'
HEADER_OFFSET = 5 * SEC - T0  # header stamps run on another clock (like sim time): recv + this


def state_value(arm: int, joint: int, tick: int) -> float:
    return 0.1 * joint + 0.01 * arm + 0.002 * tick


def command_value(arm: int, joint: int, tick: int) -> float:
    return 0.1 * joint + 0.01 * arm + 0.002 * tick + 0.05


def leader_value(arm: int, joint: int, tick: int) -> float:
    return 0.1 * joint + 0.01 * arm + 0.002 * tick - 0.07


def frame_value(cam: int, n: int) -> int:
    return (n * 7 + cam * 50) % 256


@dataclass
class BagSpec:
    """What to put in a synthetic bag (times relative to T0, seconds)."""

    episodes: list[tuple[str, float, float]] = field(default_factory=lambda: [('a', 0.0, 2.0), ('b', 2.5, 4.5)])
    markers: bool = True
    end_s: float = 4.5
    cameras: tuple[str, ...] = CAMERAS
    camera_gap: tuple[str, float, float] | None = ('right_wrist', 3.0, 3.7)  # camera silent in [from, to)
    commands: bool = True
    subtasks: tuple[tuple[float, str], ...] = ((0.0, 'reach the cube'), (1.0, 'grasp the cube'), (2.6, 'lift it'))
    subtask_topic: str = '/sim/expert_subtask'
    task: str | None = TASK
    image_size: tuple[int, int] = (6, 8)  # height, width
    header_offset: int = 0  # 0: header stamps equal receive times (as a live rig on one clock)
    speed: float = 1.0  # sim seconds per receive second (a sim run faster than real time)
    time_base: str | None = None  # metadata custom_data bimanual_vla.time_base, as collect writes it
    leader: bool = False  # also teleop leaders' positions on leader/<arm>/joint_states
    strings: tuple[tuple[str, float, str], ...] = ()  # (topic, time s, text) std_msgs/String messages


def _header(msg, t: int, offset: int = HEADER_OFFSET) -> None:
    stamp = t + offset
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, SEC)


def received(t: int, speed: float) -> int:
    """When a message of nominal time `t` reaches the recorder in a run `speed` times real time."""
    return T0 + round((t - T0) / speed)


def build_entries(spec: BagSpec) -> list[tuple[str, str, int, bytes]]:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    out: list[tuple[str, str, int, bytes]] = []
    js, st = 'sensor_msgs/msg/JointState', 'std_msgs/msg/String'
    if spec.task is not None:
        out.append(('/policy/task', st, T0 - SEC // 2, serialize_message(String(data=spec.task))))
    ticks = int(spec.end_s * 50)
    for i in range(ticks):
        base = T0 + i * 20 * MS
        for a, arm in enumerate(ARMS):
            msg = JointState(name=[f'{arm}_{j}' for j in JOINTS], position=[state_value(a, j, i) for j in range(7)])
            _header(msg, base + (1 + a) * MS, spec.header_offset)
            out.append(('/joint_states', js, base + (1 + a) * MS, serialize_message(msg)))
            if spec.commands:
                cmd = JointState(
                    name=[f'{arm}_{j}' for j in JOINTS], position=[command_value(a, j, i) for j in range(7)]
                )
                _header(cmd, base + 3 * MS, spec.header_offset)
                out.append((f'/arms/{arm}/joint_command', js, base + 3 * MS, serialize_message(cmd)))
            if spec.leader:
                lead = JointState(
                    name=[f'{arm}_{j}' for j in JOINTS], position=[leader_value(a, j, i) for j in range(7)]
                )
                _header(lead, base + 5 * MS, spec.header_offset)
                out.append((f'/leader/{arm}/joint_states', js, base + 5 * MS, serialize_message(lead)))
    h, w = spec.image_size
    for n in range(int(spec.end_s * 10)):
        recv = T0 + n * 100 * MS + 4 * MS
        for c, cam in enumerate(CAMERAS):
            if cam not in spec.cameras:
                continue
            gap = spec.camera_gap
            if gap and gap[0] == cam and T0 + int(gap[1] * SEC) <= recv < T0 + int(gap[2] * SEC):
                continue
            img = Image(height=h, width=w, encoding='rgb8', step=3 * w, data=bytes([frame_value(c, n)]) * (h * w * 3))
            img.header.frame_id = f'{cam}_optical_frame'
            _header(img, recv, spec.header_offset)
            out.append((f'/cameras/{cam}/image_raw', 'sensor_msgs/msg/Image', recv, serialize_message(img)))
    for t, label in spec.subtasks:
        out.append((spec.subtask_topic, st, T0 + int(t * SEC), serialize_message(String(data=label))))
    for topic, t, text in spec.strings:
        out.append((topic, st, T0 + int(t * SEC), serialize_message(String(data=text))))
    if spec.markers:
        for label, start, stop in spec.episodes:
            out.append(('/record/episode', st, T0 + int(start * SEC), serialize_message(String(data=label))))
            out.append(('/record/episode', st, T0 + int(stop * SEC), serialize_message(String(data=''))))
    if spec.speed != 1.0:
        out = [(topic, type_name, received(t, spec.speed), data) for topic, type_name, t, data in out]
    out.sort(key=lambda e: e[2])
    return out


def write_bag(path: Path, spec: BagSpec | None = None) -> Path:
    """Write the synthetic bag to `path` (a new rosbag2 directory, MCAP) and return it."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from bimanual_vla.bags.message_types import type_definition

    entries = build_entries(spec or BagSpec())
    conns = {}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        if spec is not None and spec.time_base is not None:
            from bimanual_vla.bags.time_base import TIME_BASE_KEY

            writer.set_custom_data(TIME_BASE_KEY, spec.time_base)
        for topic, type_name, ts, data in entries:
            if topic not in conns:
                msgdef, digest = type_definition(type_name)
                conns[topic] = writer.add_connection(topic, type_name, msgdef=msgdef, rihs01=digest)
            writer.write(conns[topic], ts, data)
    return path
