"""Record a rig's topics to a rosbag2 bag (MCAP storage) that ``ros2 bag`` and ``rosbags`` read.

Messages are passed through as the raw CDR bytes the middleware delivered
(``raw=True`` subscriptions): nothing is deserialised or re-serialised, so a camera
stream costs one copy. A writer thread owns the bag file; subscription callbacks only
queue bytes, so a slow disk delays writing instead of stalling the executor (which
would make DDS drop best-effort camera frames). If the queue passes its byte limit,
new messages are dropped and counted in diagnostics rather than exhausting memory.

Subscriptions are created when a wanted topic's publishers appear on the graph, with
a QoS every publisher is compatible with (best effort if any publisher is, transient
local if all are, so latched values published before recording started are kept).
The offered QoS profiles, message definitions and RIHS01 type hashes go into the bag
as rosbag2 records them, so ``ros2 bag play`` and our replay republish faithfully.

Episodes: a std_msgs/String on ``record/episode`` with a label starts an episode
(ending the open one), an empty string ends it. The markers are recorded as
messages of the bag and summarised in metadata.yaml custom_data
(``bimanual_vla.episodes``, JSON), so one bag holds many labelled episodes.

Long sessions: ``max_bag_size_mb`` / ``max_bag_duration_s`` split the bag into files as
``ros2 bag record --max-bag-size`` does (``bimanual_vla.bags.split``): each file is closed and
listed in metadata.yaml as soon as it is full, so a crash hours in loses at most the open one.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from bimanual_vla import topics as T
from bimanual_vla.bags.message_types import UnknownMessageTypeError, qos_to_bag, subscription_qos, type_definition
from bimanual_vla.bags.read import EPISODES_CUSTOM_DATA_KEY, Episode, episodes_from_markers
from bimanual_vla.config import RigConfig
from bimanual_vla.ros_utils import ERROR, OK, WARN, diagnostic_status

EPISODE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
)
"""Matches both volatile (``ros2 topic pub``) and transient-local episode marker publishers."""

NEVER_RECORDED = frozenset({'/parameter_events'})


def rig_topics(rig: RigConfig | None) -> list[str]:
    """The topics a rig's bag should hold (relative names), in a stable order."""
    names: list[str] = []
    for cam in rig.cameras if rig else []:
        names += [T.camera_image(cam.name), T.camera_info(cam.name)]
    names.append(T.JOINT_STATES)
    for arm in rig.arms if rig else []:
        names.append(T.arm_command(arm.name))
    for leader in rig.leaders if rig else []:  # teleop: the leaders' positions, one choice of action
        names.append(T.leader_joint_states(leader.follower))
    names += [
        T.POLICY_TASK,
        T.POLICY_SUBTASK,
        T.POLICY_REASONING,
        T.POLICY_ACTION_CHUNK,
        T.ESTOP,
        T.SIM_SUCCESS,
        T.SIM_EXPERT_SUBTASK,
        T.TELEOP_INTERVENTION,
        T.RECORD_DISCARD,
        T.DIAGNOSTICS,
    ]
    return names


@dataclass
class _TopicState:
    name: str
    type: str
    count: int = 0
    bytes: int = 0
    subscription: Any = None


class BagRecorder(Node):
    """Records topics into the bag named by the ``output`` parameter until close()."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('bag_recorder', **kwargs)
        self.output = Path(self.declare_parameter('output', '').value).expanduser()
        if not str(self.output) or str(self.output) == '.':
            raise ValueError('bag_recorder: parameter "output" (the bag directory to create) is required')
        rig_name = self.declare_parameter('rig', '').value
        extra = list(self.declare_parameter('topics', ['']).value or [])
        self.record_all = bool(self.declare_parameter('all', False).value)
        compress = bool(self.declare_parameter('compress', False).value)
        discovery_period = float(self.declare_parameter('discovery_period_s', 0.5).value)
        self.queue_limit = int(float(self.declare_parameter('queue_limit_mb', 1024.0).value) * 2**20)
        split_mb = float(self.declare_parameter('max_bag_size_mb', 0.0).value)
        split_s = float(self.declare_parameter('max_bag_duration_s', 0.0).value)
        self.split_at_episode_end = bool(self.declare_parameter('split_on_episode_end', False).value)
        if split_mb < 0 or split_s < 0:
            raise ValueError('bag_recorder: max_bag_size_mb and max_bag_duration_s must be >= 0 (0: no split)')

        rig = None
        if rig_name:
            from bimanual_vla.config import load_rig

            rig = load_rig(rig_name)
        wanted = ([] if (self.record_all and not rig_name) else rig_topics(rig)) + [t for t in extra if t]
        self.wanted = {self.resolve_topic_name(t) for t in wanted}
        self.episode_topic = self.resolve_topic_name(T.RECORD_EPISODE)
        self.wanted.add(self.episode_topic)
        self.expected = {self.resolve_topic_name(t) for t in rig_topics(rig)} if rig else set()

        from bimanual_vla.bags.split import SplitBagWriter

        self._writer = SplitBagWriter(
            self.output,
            compress=compress,
            max_bytes=int(split_mb * 2**20) if split_mb > 0 else None,
            max_duration_s=split_s if split_s > 0 else None,
            split_on_request=self.split_at_episode_end,
        )

        self.topic_states: dict[str, _TopicState] = {}
        self.unrecordable: dict[str, str] = {}
        self.dropped = 0
        self.write_error: str | None = None
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._markers: list[tuple[int, str]] = []
        self._closed = False
        self._started_ns = time.time_ns()
        self._thread = threading.Thread(target=self._write_loop, name='bag_writer', daemon=True)
        self._thread.start()
        if rig is not None and rig.sim is not None:
            # A simulated rig stamps on sim time: say so, so every bag consumer reads it on header stamps.
            from bimanual_vla.bags.time_base import TIME_BASE_KEY

            self._queue.put(('custom', TIME_BASE_KEY, 'header'))

        # The episode topic is subscribed up front: a one-shot marker must not be lost to discovery.
        self._subscribe(self.episode_topic, 'std_msgs/msg/String', [], EPISODE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, T.DIAGNOSTICS, T.DIAGNOSTICS_QOS)
        self._discovery_timer = self.create_timer(discovery_period, self.discover)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        self.discover()
        what = 'all topics' if self.record_all else ', '.join(sorted(self.wanted))
        self.get_logger().info(f'recording {what} to {self.output}')

    # ----------------------------------------------------------- discovery

    def discover(self) -> None:
        """Subscribe to wanted topics whose publishers have appeared since the last look."""
        if self._closed:
            return
        for name, types in self.get_topic_names_and_types():
            if name in self.topic_states or name in self.unrecordable or name in NEVER_RECORDED:
                continue
            if not (self.record_all or name in self.wanted):
                continue
            infos = self.get_publishers_info_by_topic(name)
            if not infos:
                continue
            if len(types) > 1:
                self.get_logger().warning(f'{name} is published with several types {types}; recording {types[0]}')
            try:
                self._subscribe(name, types[0], infos, subscription_qos([i.qos_profile for i in infos]))
            except UnknownMessageTypeError as exc:
                self.unrecordable[name] = str(exc)
                self.get_logger().error(f'cannot record {name}: {exc}')

    def _subscribe(self, name: str, type_name: str, infos: list[Any], qos: QoSProfile) -> None:
        from bimanual_vla.bags.message_types import message_class

        cls = message_class(type_name)
        msgdef, digest = type_definition(type_name)
        offered = [qos_to_bag(i.qos_profile) for i in infos]
        hashes = {str(i.topic_type_hash) for i in infos if getattr(i.topic_type_hash, 'version', 0) > 0}
        if hashes and digest not in hashes:
            self.get_logger().warning(
                f'{name}: publishers announce type hash {sorted(hashes)} but the installed {type_name} '
                f'hashes to {digest}; recording the installed definition'
            )
        state = _TopicState(name, type_name)
        self.topic_states[name] = state
        self._queue.put(('connection', name, type_name, msgdef, digest, offered))

        def on_message(data: bytes, info: dict[str, Any], state: _TopicState = state) -> None:
            self._on_message(state, data, info)

        state.subscription = self.create_subscription(cls, name, on_message, qos, raw=True)

    # ------------------------------------------------------------ messages

    def _on_message(self, state: _TopicState, data: bytes, info: dict[str, Any]) -> None:
        if self._closed:
            return
        stamp = int(info.get('received_timestamp') or 0) or time.time_ns()
        size = len(data)
        with self._lock:
            if self._queued_bytes + size > self.queue_limit or self.write_error:
                self.dropped += 1
                return
            self._queued_bytes += size
        state.count += 1
        state.bytes += size
        label = self._on_marker(stamp, data) if state.name == self.episode_topic else None
        self._queue.put(('message', state.name, stamp, data))
        if label == '' and self.split_at_episode_end:  # the end marker written, the episode's file closes
            self._queue.put(('split',))

    def _on_marker(self, stamp: int, data: bytes) -> str:
        from rclpy.serialization import deserialize_message
        from std_msgs.msg import String

        label = deserialize_message(data, String).data
        self._markers.append((stamp, label))
        # in order with the messages: a split closed from now on lists this episode in metadata.yaml
        episodes = json.dumps([e.__dict__ for e in self.episodes])
        self._queue.put(('custom', EPISODES_CUSTOM_DATA_KEY, episodes))
        what = f'episode {label!r} started' if label else 'episode ended'
        self.get_logger().info(what)
        return label

    @property
    def episodes(self) -> list[Episode]:
        return episodes_from_markers(list(self._markers))

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if item[0] == 'connection':
                    _, name, type_name, msgdef, digest, offered = item
                    self._writer.add_connection(name, type_name, msgdef=msgdef, rihs01=digest, offered=offered)
                elif item[0] == 'custom':
                    self._writer.set_custom_data(item[1], item[2])
                elif item[0] == 'split':
                    self._writer.split()
                else:
                    _, name, stamp, data = item
                    with self._lock:
                        self._queued_bytes -= len(data)
                    if self.write_error is None:
                        self._writer.write(name, stamp, data)
            except Exception as exc:  # disk full, permissions: stop writing, keep what is written
                if self.write_error is None:
                    self.write_error = f'{type(exc).__name__}: {exc}'
                    self.get_logger().error(f'writing {self.output} failed: {self.write_error}')

    # --------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        level, message = OK, 'recording'
        missing = sorted(t for t in self.expected if t not in self.topic_states)
        if missing:
            level, message = WARN, f'no publisher yet for {", ".join(missing)}'
        if self.unrecordable:
            level, message = ERROR, f'cannot record {", ".join(sorted(self.unrecordable))}'
        if self.write_error:
            level, message = ERROR, f'write failed: {self.write_error}'
        values: dict[str, Any] = {
            'bag': str(self.output),
            'topics': len(self.topic_states),
            'messages': sum(s.count for s in self.topic_states.values()),
            'megabytes': sum(s.bytes for s in self.topic_states.values()) / 2**20,
            'queued_megabytes': self._queued_bytes / 2**20,
            'dropped': self.dropped,
            'episodes': len(self.episodes),
            'closed_files': len(self._writer.closed_files),
        }
        for state in self.topic_states.values():
            values[f'count {state.name}'] = state.count
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status.append(diagnostic_status(f'{self.get_name()}: bag', level, message, values))
        self._diag_pub.publish(msg)

    # ------------------------------------------------------------- closing

    def close(self) -> Path:
        """Stop recording, write what is queued, and finish the bag (summary + metadata.yaml)."""
        if self._closed:
            return self.output
        self._closed = True
        for timer in (self._discovery_timer, self._diag_timer):
            timer.cancel()
        self._queue.put(None)
        self._thread.join()
        episodes = [e.__dict__ for e in self.episodes]
        self._writer.set_custom_data(EPISODES_CUSTOM_DATA_KEY, json.dumps(episodes))
        self._writer.set_custom_data('bimanual_vla.dropped_messages', str(self.dropped))
        self._writer.close()
        total = sum(s.count for s in self.topic_states.values())
        self.get_logger().info(
            f'closed {self.output}: {total} messages on {len(self.topic_states)} topics, '
            f'{len(episodes)} episode(s), {self.dropped} dropped'
        )
        return self.output


def main(args: list[str] | None = None) -> int:
    """Entry point: `ros2 run bimanual_vla bag_record --ros-args -p output:=BAG [-p rig:=NAME]`.

    A missing or mistyped parameter, a rig file that is not there or an output that exists: one line
    naming it, exit status 2 (as `ros_utils.run_node` does for the other nodes), never a traceback.
    """
    import sys

    import rclpy
    from rclpy.exceptions import InvalidParameterTypeException

    from bimanual_vla.config import ConfigError
    from bimanual_vla.node_parameters import type_exception_text
    from bimanual_vla.rosenv import apply_pip_defaults

    apply_pip_defaults()
    stop = StopSignals()  # a Ctrl-C while the bag is being set up still closes it
    rclpy.init(args=args, signal_handler_options=rclpy_signal_options())
    try:
        recorder = BagRecorder()
    except (ConfigError, ValueError, FileExistsError, InvalidParameterTypeException) as exc:
        stop.restore()
        text = type_exception_text(exc) if isinstance(exc, InvalidParameterTypeException) else exc
        print(f'bag_record: error: {text}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except BaseException:
        stop.restore()
        raise
    return spin_until_signal(recorder, stop)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT/SIGTERM caught as a request to stop, from before the recorder exists until its bag is closed.

    The recorder logs "recording" and creates its bag directory in its constructor. With rclpy's own
    signal handlers, a Ctrl-C there shuts the context down under the constructor, or raises outside
    the spin's clean-up, and leaves a bag without metadata.yaml. Install this before `rclpy.init`
    and pass `rclpy_signal_options()` to it: a stop signal only sets `requested`, and
    `spin_until_signal` closes the bag whenever it was set.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def rclpy_signal_options() -> Any:
    """`rclpy.init(signal_handler_options=...)` that leaves SIGINT/SIGTERM to `StopSignals`."""
    from rclpy.signals import SignalHandlerOptions

    return SignalHandlerOptions.NO


def spin_until_signal(recorder: BagRecorder, stop: StopSignals | None = None) -> int:
    """Spin until SIGINT/SIGTERM (or the context is shut down), then close the bag, complete and readable."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    stop = stop or StopSignals()
    executor = SingleThreadedExecutor(context=recorder.context)
    executor.add_node(recorder)
    try:
        while not stop.requested.is_set() and recorder.context.ok():
            executor.spin_once(timeout_sec=0.1)  # a signal is seen within 0.1 s
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        recorder.close()
        executor.shutdown()
        recorder.destroy_node()
        if recorder.context.ok():
            rclpy.shutdown(context=recorder.context)
        stop.restore()
    return 0
