"""The ``estop_input`` node: a terminal key and an evdev key (USB foot pedal) as e-stop sources.

A thin adapter from :mod:`bimanual_vla.drivers.estop.input` to the ``estop`` topic (std_msgs/Bool, true =
stop, ``topics.LATCHED_QOS``): the readers' threads feed an :class:`EstopArbiter`, and every
change of its state is published and logged with the input that caused it.

Parameters:
  keyboard (bool, true)     space stops, r releases, on this process's terminal; off (one log
                            line) when standard input is not a terminal or not in the foreground
  device (str, '')          evdev device (/dev/input/eventN or a /dev/input/by-id/ link); '' = none
  key (str, KEY_SPACE)      the device's key: a name (KEY_B, BTN_0, ...) or a code (48, 0x30)
  mode (str, latch)         latch: a press stops until r / the topic releases;
                            hold: dead-man, motion only while the key is held down
  takeover_arms (str, '')   comma-separated arms: the same terminal's takeover keys publish on
                            ``teleop/takeover`` (t takes every arm over, h hands all back, 1-9 one arm:
                            ``drivers/teleop/takeover.py``); '' = no takeover keys

The node follows the topic too: an ``estop`` from another publisher sets or clears the latch (so
a later press is published as a change), and this node republishes its state when that differs
from the message: a release from the topic does not override a hold-mode pedal that is up, and a
late subscriber never gets a stale value from this node. Like every subscriber of a user-facing
input it hears a publisher of any QoS (the three subscriptions of
``ros_utils.subscribe_from_any_publisher``, deduplicated by ``NewestPerPublisher``); it needs each
message's publisher GID to tell its own messages from others', so it subscribes with the same
profiles itself. On a middleware that reports no GID it does not follow the topic (logged once).
"""

from __future__ import annotations

import sys
import threading

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.subscription import MessageInfo
from std_msgs.msg import Bool, String

from bimanual_vla import topics
from bimanual_vla.drivers.estop.input import (
    MODES,
    DeviceStatus,
    EstopArbiter,
    EvdevEstop,
    KeyboardEstop,
    keyboard_unavailable_reason,
    parse_key,
    stdin_fd,
)
from bimanual_vla.drivers.teleop.takeover import takeover_command
from bimanual_vla.ros_utils import ERROR, OK, WARN, diagnostic_status, run_node, subscribe_from_any_publisher


class EstopInput(Node):
    """Publishes ``estop`` from the keyboard (space / r) and an optional evdev key."""

    def __init__(self, node_name: str = 'estop_input', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        use_keyboard = bool(self.declare_parameter('keyboard', True).value)
        device = str(self.declare_parameter('device', '').value)
        key = str(self.declare_parameter('key', 'KEY_SPACE').value)
        self.mode = str(self.declare_parameter('mode', 'latch').value)
        takeover_arms = str(self.declare_parameter('takeover_arms', '').value)
        self.takeover_arms = [a.strip() for a in takeover_arms.split(',') if a.strip()]
        if self.mode not in MODES:
            raise ValueError(f'node {self.get_name()}: parameter mode must be one of {MODES}, not {self.mode!r}')
        parse_key(key)  # a bad key name fails here, at start

        self._lock = threading.Lock()  # arbiter and publishing: reader threads and the executor
        self.arbiter = EstopArbiter()
        self.published: bool | None = None
        self.changes = 0
        self.refused_releases = 0
        self.keyboard: KeyboardEstop | None = None
        self.keyboard_state = 'off'
        self.device: EvdevEstop | None = None

        self.estop_pub = self.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
        self._own_gids = self._publisher_gids()
        self.diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)
        # volatile: a takeover key pressed before teleop started is not replayed to it later
        self.takeover_pub = (
            self.create_publisher(String, topics.TELEOP_TAKEOVER, topics.RELIABLE_QOS) if self.takeover_arms else None
        )
        self._no_gid_logged = False
        subscribe_from_any_publisher(self, Bool, topics.ESTOP, self._on_topic, latched=True, with_info=True)
        self.create_timer(1.0, self._publish_diagnostics)

        if device:
            self.device = EvdevEstop(device, self._on_device, key=key, mode=self.mode, on_status=self._on_device_status)
            if self.mode == 'hold':
                self.arbiter.hold(self.device.name, self.device.asserting)
        if use_keyboard:
            fd = stdin_fd()
            reason = 'standard input has no file descriptor' if fd is None else keyboard_unavailable_reason(fd)
            if reason is None and fd is not None:
                self.get_logger().info('keyboard e-stop: SPACE stops, r releases')
                on_other_key = self._on_takeover_key if self.takeover_pub is not None else None
                self.keyboard = KeyboardEstop(fd, self._on_latch_input, on_other_key=on_other_key).start()
                if on_other_key is not None:
                    numbered = ', '.join(f'{i} {arm}' for i, arm in enumerate(self.takeover_arms[:9], 1))
                    self.get_logger().info(f'takeover keys: t takes every arm over, h hands back, {numbered}')
                self.keyboard_state = 'on'
            else:
                self.keyboard_state = f'off: {reason}'
                self.get_logger().info(f'keyboard e-stop off: {reason}')
        if self.device is not None:
            what = 'a press stops' if self.mode == 'latch' else 'dead-man: motion only while held down'
            self.get_logger().info(f'e-stop device {device} key {self.device.status.key} ({self.mode}: {what})')
            with self._lock:
                if self.arbiter.active:
                    self._publish(True, f'{self.device.name} not held yet')
            self.device.start()

    # ------------------------------------------------------------- inputs

    def _on_latch_input(self, active: bool, source: str) -> None:
        with self._lock:
            self.arbiter.latch(active)
            self._changed(active, source)

    def _on_takeover_key(self, key: str) -> None:
        """A key that is not the e-stop's: a takeover request on ``teleop/takeover`` if it is one."""
        command = takeover_command(key, self.takeover_arms)
        if command is None or self.takeover_pub is None:
            return
        self.takeover_pub.publish(String(data=command))
        self.get_logger().info(f'takeover key {key}: teleop/takeover {command!r}')

    def _on_device(self, active: bool, source: str) -> None:
        with self._lock:
            if self.mode == 'hold':
                self.arbiter.hold(self.device.name, active)
            else:
                self.arbiter.latch(active)
            self._changed(active, source)

    def _on_topic(self, msg: Bool, info: MessageInfo) -> None:
        gid = (info.get('publisher_gid') or {}).get('data')
        with self._lock:
            if not self._own_gids:
                self._own_gids = self._publisher_gids()
            if gid is None or not self._own_gids:
                # Without GIDs our own messages look like anyone's: following them could loop.
                if not self._no_gid_logged:
                    self._no_gid_logged = True
                    self.get_logger().warning('the middleware reports no publisher GID: not following the estop topic')
                return
            if bytes(gid) in self._own_gids:
                return
            self.arbiter.latch(bool(msg.data))
            if self.arbiter.active == msg.data:
                if self.published is not None and self.published != msg.data:
                    self._publish(bool(msg.data), 'another publisher on the estop topic (republished)')
                else:
                    self.get_logger().info(f'estop topic: {msg.data} from another publisher')
                return
            self.refused_releases += 1
            self.get_logger().warning(
                f'e-stop release from the topic refused: held by {", ".join(self.arbiter.holding())}'
            )
            self._publish(True, 'dead-man input up')

    def _changed(self, requested: bool, source: str) -> None:
        """Publish the arbiter's state if it changed; say so when a release request leaves it asserted."""
        active = self.arbiter.active
        if active != self.published:
            self._publish(active, source)
        elif active and not requested:
            holding = self.arbiter.holding()
            why = f'held by {", ".join(holding)}' if holding else 'latched (keyboard r or the topic releases it)'
            self.get_logger().warning(f'{source}: e-stop stays asserted: {why}')

    def _publish(self, active: bool, source: str) -> None:
        """Publish `active` (caller holds the lock) and log the change with its source."""
        self.estop_pub.publish(Bool(data=active))
        self.published = active
        self.changes += 1
        if active:
            self.get_logger().warning(f'E-STOP ASSERTED by {source}')
        else:
            self.get_logger().info(f'e-stop released by {source}')

    def _on_device_status(self, status: DeviceStatus) -> None:
        if status.state == 'open':
            self.get_logger().info(f'e-stop device {status.path}: open')
        elif status.state in ('missing', 'vanished'):
            consequence = 'e-stop asserted until it is back' if status.mode == 'hold' else 'its key cannot stop'
            self.get_logger().error(f'e-stop device {status.path} {status.state}: {status.message} ({consequence})')

    def _publisher_gids(self) -> set[bytes]:
        """GIDs of this node's own publishers on the estop topic, to recognise its own messages."""
        return {
            bytes(info.endpoint_gid)
            for info in self.get_publishers_info_by_topic(self.estop_pub.topic_name)
            if info.node_name == self.get_name() and info.node_namespace == self.get_namespace()
        }

    # --------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        with self._lock:
            active, latched, holding = self.arbiter.active, self.arbiter.latched, self.arbiter.holding()
        values: dict[str, object] = {
            'active': active,
            'latched': latched,
            'holding': ','.join(holding),
            'keyboard': self.keyboard_state,
            'changes': self.changes,
            'refused_releases': self.refused_releases,
        }
        level, problems = OK, []
        if self.keyboard is not None and not self.keyboard.running:
            values['keyboard'] = f'closed: {self.keyboard.closed_reason}'
            problems.append('keyboard closed')
            level = WARN
        hardware_id = ''
        if self.device is not None:
            status = self.device.status
            hardware_id = status.path
            values.update(
                device=status.path,
                device_state=status.state,
                device_message=status.message,
                key=status.key,
                mode=status.mode,
                pressed='unknown' if status.pressed is None else status.pressed,
                events=status.events,
                opens=status.opens,
                vanished=status.vanished,
                truncated_bytes=status.truncated_bytes,
                dropped=status.dropped,
            )
            if status.state != 'open':
                problems.append(f'device {status.state}: {status.message}')
                level = ERROR
        if active:
            problems.insert(0, 'E-STOP ACTIVE' + (f' (held by {", ".join(holding)})' if holding else ''))
            level = max(level, WARN)
        message = '; '.join(problems) if problems else 'e-stop released'
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(diagnostic_status(f'{self.get_name()}: e-stop inputs', level, message, values, hardware_id))
        self.diag_pub.publish(array)

    # ------------------------------------------------------------ teardown

    def destroy_node(self) -> None:
        # Also called on a node whose constructor failed half-way; restores the terminal.
        if getattr(self, 'keyboard', None) is not None:
            self.keyboard.close()
        if getattr(self, 'device', None) is not None:
            self.device.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node('estop_input', EstopInput, args, startup_errors=(ValueError,))


if __name__ == '__main__':
    sys.exit(main())
