"""Replay a bag: republish its messages with their recorded timing and drive ``/clock``.

Messages go out as the recorded CDR bytes (``Publisher.publish`` accepts ``bytes``), so
replay is byte-exact and cheap. Each topic is published with the QoS its recorded
publishers offered (best-effort camera streams stay best effort, latched topics stay
transient local), so subscribers match exactly as they did live.

Timing: message i is published at ``wall_start + (t_i - t_first) / rate``. A dedicated
thread sleeps between messages; it also publishes ``rosgraph_msgs/Clock`` at
``clock_hz`` with the bag time of "now", so nodes started with ``use_sim_time:=true``
(the policy node, controllers) run their timers and stamps on bag time and behave as
they would have live, at any replay rate.

Which clock ``t_i`` is on is the bag's time base (``time_base`` parameter, default ``auto``:
:mod:`bimanual_vla.bags.time_base`). On ``receive`` it is the recorder's receive time. On
``header`` (a sim recorded faster than real time, whose stamps are sim time) messages keep their
recorded order but are paced by sim time: each is placed at the header stamp of the newest joint
state read before it (:class:`StampTimeline`), and ``/clock`` carries that sim time, so an 8.98 s
episode recorded in 2 s replays in 8.98 s. Where sim time goes back (a reset between episodes)
playback goes on without a pause and ``/clock`` goes back with it, as it did live.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rosgraph_msgs.msg import Clock

from bimanual_vla import topics as T
from bimanual_vla.bags.message_types import UnknownMessageTypeError, message_class, replay_qos
from bimanual_vla.bags.read import BagMessage, BagReader
from bimanual_vla.bags.time_base import AUTO, header_stamp_ns, resolve_time_base
from bimanual_vla.ros_utils import ERROR, OK, WARN, diagnostic_status

_STAMPED_REFERENCE_TYPES = ('sensor_msgs/msg/JointState', 'sensor_msgs/msg/Image')


class StampTimeline:
    """Places messages read in receive order on the sim clock of their header stamps (time base header).

    `place` gives (play, clock) for a message: ``clock`` is the header stamp of the newest message of
    the `reference` topic read so far (joint states), ``play`` the same plus the sim time lost to resets
    (a stamp going back), so play positions never decrease. None before the first reference stamp.
    """

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self.clock: int | None = None
        self.offset = 0  # sim time lost to resets so far: play = clock + offset

    def place(self, msg: BagMessage) -> tuple[int, int] | None:
        if msg.topic == self.reference:
            try:
                stamp = header_stamp_ns(msg.data)
            except ValueError:
                stamp = None
            if stamp is not None:
                if self.clock is not None and stamp < self.clock:
                    self.offset += self.clock - stamp
                self.clock = stamp
        if self.clock is None:
            return None
        return self.clock + self.offset, self.clock


def _reference_topic(reader: BagReader) -> str | None:
    """The stamped topic a header-time-base replay is paced by: joint states, else a camera."""
    for type_name in _STAMPED_REFERENCE_TYPES:
        names = sorted(t for t, info in reader.topics.items() if info.type == type_name and info.count)
        names.sort(key=lambda t: not t.endswith('/joint_states'))
        if names:
            return names[0]
    return None


def _time_msg(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class BagPlayer(Node):
    """Publishes the bag named by the ``bag`` parameter; see module docstring for timing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('bag_player', **kwargs)
        bag = str(self.declare_parameter('bag', '').value)
        if not bag:
            raise ValueError('bag_player: parameter "bag" (the bag to replay) is required')
        self.rate = float(self.declare_parameter('rate', 1.0).value)
        if not self.rate > 0:
            raise ValueError(f'bag_player: rate must be > 0, got {self.rate}')
        self.loop = bool(self.declare_parameter('loop', False).value)
        self.start_offset_ns = int(float(self.declare_parameter('start_offset_s', 0.0).value) * 1e9)
        only = [t for t in (self.declare_parameter('topics', ['']).value or []) if t]
        self.clock_hz = float(self.declare_parameter('clock_hz', 100.0).value)
        self.wait_for_subscribers_s = float(self.declare_parameter('wait_for_subscribers_s', 0.0).value)
        self.delay_s = float(self.declare_parameter('delay_s', 0.0).value)
        autostart = bool(self.declare_parameter('autostart', True).value)
        requested_base = str(self.declare_parameter('time_base', AUTO).value)

        self.reader = BagReader(bag)
        for problem in self.reader.problems:
            self.get_logger().warning(f'{bag}: {problem}')
        self.time_base = resolve_time_base(self.reader, requested_base)
        self.reference_topic = _reference_topic(self.reader) if self.time_base.header else None
        if self.time_base.header and self.reference_topic is None:
            raise ValueError(f'{bag}: time base header needs stamped joint states or images; the bag has none')
        self.get_logger().info(self.time_base.line(bag))
        if only:
            self.reader.require_topics(only)
            wanted = {self.resolve_topic_name(t) for t in only}
        else:
            wanted = set(self.reader.topics)
        if self.clock_hz > 0 and T.CLOCK in wanted:
            wanted.discard(T.CLOCK)  # we publish /clock ourselves; two clocks would fight
            self.get_logger().info('not replaying the recorded /clock: publishing bag time on /clock instead')
        self.skipped: dict[str, str] = {}
        self.publishers_by_topic: dict[str, Any] = {}
        for name in sorted(wanted):
            info = self.reader.topics[name]
            try:
                cls = message_class(info.type)
            except UnknownMessageTypeError as exc:
                self.skipped[name] = str(exc)
                self.get_logger().error(f'not replaying {name}: {exc}')
                continue
            self.publishers_by_topic[name] = self.create_publisher(cls, name, replay_qos(list(info.offered_qos)))
        self.published: dict[str, int] = dict.fromkeys(self.publishers_by_topic, 0)
        self.clock_pub = self.create_publisher(Clock, T.CLOCK, T.CLOCK_QOS) if self.clock_hz > 0 else None
        self.loops_done = 0
        self.bag_time_ns = self.reader.start_ns + self.start_offset_ns
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='bag_player', daemon=True)
        self._diag_pub = self.create_publisher(DiagnosticArray, T.DIAGNOSTICS, T.DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f'replaying {len(self.publishers_by_topic)} topics of {bag} '
            f'({self.reader.duration_s:.1f} s) at rate {self.rate:g}{" in a loop" if self.loop else ""}'
        )
        if autostart:
            self.start()

    def start(self) -> None:
        if not self._thread.is_alive() and not self.finished.is_set():
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.reader.close()

    # ------------------------------------------------------------ playback

    def _wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + self.wait_for_subscribers_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if all(p.get_subscription_count() > 0 for p in self.publishers_by_topic.values()):
                return
            self._stop.wait(0.02)
        lonely = sorted(n for n, p in self.publishers_by_topic.items() if p.get_subscription_count() == 0)
        if lonely:
            self.get_logger().warning(f'starting without subscribers on {", ".join(lonely)}')

    def _publish_clock(self, bag_ns: int) -> None:
        self.bag_time_ns = bag_ns
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=_time_msg(bag_ns)))

    def _run(self) -> None:
        try:
            if self.wait_for_subscribers_s > 0:
                self._wait_for_subscribers()
            if self.delay_s > 0:
                self._stop.wait(self.delay_s)
            while not self._stop.is_set():
                self._play_once()
                self.loops_done += 1
                if not self.loop:
                    break
        except Exception as exc:  # a damaged bag must not kill the process silently
            self.get_logger().error(f'replay stopped: {exc}')
        finally:
            self.finished.set()

    def _play_once(self) -> None:
        """One pass over the bag, paced on its time base (module docstring)."""
        timeline = StampTimeline(self.reference_topic) if self.reference_topic else None
        clock_period = int(1e9 / self.clock_hz) if self.clock_hz > 0 else 0
        # play positions: receive times, or (header) sim time made monotonic by the timeline
        first: int | None = None if timeline else self.reader.start_ns + self.start_offset_ns
        wall0 = next_clock = time.monotonic_ns()
        lost = 0  # play - clock: sim time lost to resets (header)

        def bag_at(wall: int) -> int:
            assert first is not None
            return first + int((wall - wall0) * self.rate) - lost

        if first is not None:
            self._publish_clock(first)
        topics = set(self.publishers_by_topic) | ({timeline.reference} if timeline else set())
        for msg in self.reader.messages(topics, start_ns=None if timeline else first):
            play = msg.timestamp_ns
            if timeline is not None:
                placed = timeline.place(msg)
                if placed is None:  # before the first stamp: nothing to pace by yet
                    self._publish(msg)
                    continue
                play, lost = placed[0], placed[0] - placed[1]
                if first is None:
                    first, wall0 = play + self.start_offset_ns, time.monotonic_ns()
                    next_clock = wall0
                if play < first:  # --start-offset on the sim clock
                    continue
            target = wall0 + int((play - first) / self.rate)
            while not self._stop.is_set():
                now = time.monotonic_ns()
                if clock_period and next_clock <= now:
                    self._publish_clock(min(bag_at(now), play - lost) if timeline else bag_at(now))
                    next_clock += clock_period
                    if next_clock < now:  # fell behind (loaded machine): don't burst stale ticks
                        next_clock = now + clock_period
                    continue
                if now >= target:
                    break
                wake = min(target, next_clock) if clock_period else target
                self._stop.wait(max(0, wake - now) / 1e9)
            if self._stop.is_set():
                return
            self._publish(msg)
        if first is None:
            return
        end = self.reader.end_ns if timeline is None else self.bag_time_ns
        self._publish_clock(bag_at(time.monotonic_ns()) if not self.loop else end)

    def _publish(self, msg: BagMessage) -> None:
        publisher = self.publishers_by_topic.get(msg.topic)
        if publisher is None:  # the reference topic read for pacing only
            return
        publisher.publish(msg.data)
        self.published[msg.topic] += 1

    # --------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        level, message = OK, 'replaying' if not self.finished.is_set() else 'finished'
        if self.reader.problems:
            level, message = WARN, f'damaged bag: {self.reader.problems[0]}'
        if self.skipped:
            level, message = ERROR, f'cannot replay {", ".join(sorted(self.skipped))}'
        values = {
            'bag': str(self.reader.path),
            'rate': self.rate,
            'bag_time_s': self.bag_time_ns * 1e-9,
            'progress_s': max(0, self.bag_time_ns - self.reader.start_ns) * 1e-9,
            'duration_s': self.reader.duration_s,
            'loops_done': self.loops_done,
            'published': sum(self.published.values()),
        }
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status.append(diagnostic_status(f'{self.get_name()}: playback', level, message, values))
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    """Entry point: `ros2 run bimanual_vla bag_replay --ros-args -p bag:=BAG [-p rate:=2.0]`.

    A missing or mistyped parameter or a bag that cannot be read: one line naming it, exit status 2
    (as `ros_utils.run_node` does for the other nodes), never a traceback.
    """
    import sys

    import rclpy
    from rclpy.exceptions import InvalidParameterTypeException

    from bimanual_vla.bags.read import BagError
    from bimanual_vla.config import ConfigError
    from bimanual_vla.node_parameters import type_exception_text
    from bimanual_vla.rosenv import apply_pip_defaults

    apply_pip_defaults()
    rclpy.init(args=args)
    try:
        player = BagPlayer()
    except (ConfigError, BagError, ValueError, InvalidParameterTypeException) as exc:
        text = type_exception_text(exc) if isinstance(exc, InvalidParameterTypeException) else exc
        print(f'bag_replay: error: {text}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    return spin_until_done(player)


def spin_until_done(player: BagPlayer) -> int:
    """Spin until the bag has played (or forever with loop) or SIGINT; then stop cleanly."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=player.context)
    executor.add_node(player)
    try:
        while player.context.ok() and not player.finished.is_set():
            executor.spin_once(timeout_sec=0.1)
        linger_until = time.monotonic() + 0.5  # let reliable transports deliver the last messages
        while player.context.ok() and time.monotonic() < linger_until:
            executor.spin_once(timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        player.stop()
        executor.shutdown()
        player.destroy_node()
        if player.context.ok():
            rclpy.shutdown(context=player.context)
    return 0 if not player.skipped else 1
