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
from bimanual_vla.bags.read import BagReader
from bimanual_vla.ros_utils import ERROR, OK, WARN, diagnostic_status


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

        self.reader = BagReader(bag)
        for problem in self.reader.problems:
            self.get_logger().warning(f'{bag}: {problem}')
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
        first = self.reader.start_ns + self.start_offset_ns
        clock_period = int(1e9 / self.clock_hz) if self.clock_hz > 0 else 0
        wall0 = time.monotonic_ns()
        next_clock = wall0

        def bag_at(wall: int) -> int:
            return first + int((wall - wall0) * self.rate)

        self._publish_clock(first)
        for msg in self.reader.messages(self.publishers_by_topic.keys(), start_ns=first):
            target = wall0 + int((msg.timestamp_ns - first) / self.rate)
            while not self._stop.is_set():
                now = time.monotonic_ns()
                if clock_period and next_clock <= now:
                    self._publish_clock(bag_at(now))
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
            self.publishers_by_topic[msg.topic].publish(msg.data)
            self.published[msg.topic] += 1
        self._publish_clock(bag_at(time.monotonic_ns()) if not self.loop else self.reader.end_ns)

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
    """Entry point: `ros2 run bimanual_vla bag_replay --ros-args -p bag:=BAG [-p rate:=2.0]`."""
    import rclpy

    from bimanual_vla.rosenv import apply_pip_defaults

    apply_pip_defaults()
    rclpy.init(args=args)
    player = BagPlayer()
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
