"""The ``teleop`` node: leader arms drive their follower arms through ``arms/<arm>/joint_command``.

Thin by design: per leader, a thread of its own reads the leader (:class:`LeaderReader`, one sync read
per cycle at the leader's ``read_rate_hz``), maps the angles to follower targets (:class:`LeaderMapping`)
and asks :class:`Engagement` whether to command them; it publishes the targets on
``leader/<arm>/joint_states`` at every complete reading and, when engaged, on the follower's
``arms/<arm>/joint_command``, from that thread (rclpy publishers are thread-safe), so a slow callback
elsewhere never delays a leader. The arm driver clamps and rate-limits these commands as any other,
and its watchdog holds an arm whose leader went silent (this node stops commanding it and says why).

Parameters:
  rig (str, required)               rig YAML path or shipped rig name; its `leaders:` list
  leaders (str)                     comma-separated leader names to run (default: all)
  armed (bool, true)                drive as soon as leader and follower poses match
  ramp (bool, false)                when they do not match, move the follower to the leader slowly
  ramp_velocity_rad_s (double, 0.5) that ramp's joint speed (bounded as any speed setting)
  follower_max_age_s (double, 0.2)  a follower pose older than this is not used for the start check
  takeover (bool, false)            takeover mode (takeover.py): the policy drives until a leader moves
  takeover_threshold_rad (0.15)     how far a leader joint must move from its rest pose to take over
  takeover_still_rad (0.02), takeover_release_s (1.0)   held this still this long, the arm is handed back

Inputs: ``joint_states`` (the followers' poses), ``estop`` (any publisher: an e-stop stops teleop, and
after its release teleop stays disarmed until re-armed), service ``teleop/enable`` (SetBool: true arms,
false disarms); in takeover mode ``teleop/takeover`` (String: an arm takes it over, ``release [arm]`` hands
back). Takeover mode publishes, latched, ``teleop/intervention``: the arms under human control.
"""

from __future__ import annotations

import collections
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool

from bimanual_vla import topics
from bimanual_vla.config import MAX_VELOCITY_RAD_S, STALENESS_S, Bound, ConfigError, LeaderConfig, check_override
from bimanual_vla.drivers.servo.calibration import CalibrationError
from bimanual_vla.drivers.teleop.engage import ENGAGED, ESTOP, LEADER_LOST, Engagement
from bimanual_vla.drivers.teleop.leader import LeaderReader, leader_calibration
from bimanual_vla.drivers.teleop.mapping import LeaderMapping, gripper_map
from bimanual_vla.drivers.teleop.takeover import POLICY, TakeoverDetector
from bimanual_vla.intervention_msgs import STATE, intervention_payload
from bimanual_vla.ros_utils import (
    ERROR,
    OK,
    WARN,
    declare_rig,
    diagnostic_status,
    log_at,
    run_node,
    subscribe_from_any_publisher,
)

TAKEOVER_RAD = Bound(0.0, 0.5, 'rad')
"""Takeover thresholds: past 0.5 rad a takeover would wait for a big leader motion; 0 would fire on noise."""


class LeaderChannel:
    """One leader, the follower it drives, and the thread that reads it."""

    def __init__(self, leader: LeaderConfig, reader: LeaderReader, mapping: LeaderMapping, engagement: Engagement):
        self.leader = leader
        self.reader = reader
        self.mapping = mapping
        self.engagement = engagement
        self.takeover: TakeoverDetector | None = None
        self.arm = mapping.follower.name
        self.thread: threading.Thread | None = None
        self.overruns = 0
        self.reads_at_last_diag = (time.monotonic(), 0)
        self.commands = 0


class TeleopNode(Node):
    """Reads every leader of the rig and commands its follower while engaged."""

    def __init__(self, node_name: str = 'teleop', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.rig = declare_rig(self)
        wanted = [n.strip() for n in str(self.declare_parameter('leaders', '').value).split(',') if n.strip()]
        armed = bool(self.declare_parameter('armed', True).value)
        ramp = bool(self.declare_parameter('ramp', False).value)
        where = f'node {self.get_name()}'
        ramp_velocity = check_override(
            where, 'parameter ramp_velocity_rad_s', self.declare_parameter('ramp_velocity_rad_s', 0.5).value,
            MAX_VELOCITY_RAD_S,
        )  # fmt: skip
        self.follower_max_age_s = check_override(
            where, 'parameter follower_max_age_s', self.declare_parameter('follower_max_age_s', 0.2).value, STALENESS_S
        )
        takeover = bool(self.declare_parameter('takeover', False).value)
        thresholds = {
            name: check_override(where, f'parameter {name}', self.declare_parameter(name, default).value, bound)
            for name, default, bound in (
                ('takeover_threshold_rad', 0.15, TAKEOVER_RAD), ('takeover_still_rad', 0.02, TAKEOVER_RAD),
                ('takeover_release_s', 1.0, STALENESS_S),
            )
        }  # fmt: skip
        if not self.rig.leaders:
            raise ConfigError(f'rig {self.rig.name!r} has no leaders: add a `leaders:` list (docs/teleop.md)')
        leaders = [self.rig.leader(n) for n in wanted] if wanted else list(self.rig.leaders)

        self._lock = threading.Lock()
        self._follower: dict[str, tuple[float, float]] = {}  # qualified joint -> (receive time, position)
        self.command_log: collections.deque | None = None  # (arm, leader read t, published t, targets) for benches
        self.channels: list[LeaderChannel] = []
        for lead in leaders:
            calibration, warnings = leader_calibration(lead)
            for warning in warnings:
                self.get_logger().warning(warning)
            follower = self.rig.arm(lead.follower)
            reader = LeaderReader(lead, calibration, log=self._log)
            mapping = LeaderMapping(lead, follower, gripper_map(lead, follower, calibration))
            engagement = Engagement(
                mapping.joints,
                tolerance_rad=lead.start_tolerance_rad,
                timeout_s=lead.timeout_s,
                ramp=ramp,
                ramp_velocity_rad_s=ramp_velocity,
                armed=armed,
            )
            self.channels.append(LeaderChannel(lead, reader, mapping, engagement))
            if takeover:
                self.channels[-1].takeover = TakeoverDetector(
                    engagement,
                    threshold_rad=thresholds['takeover_threshold_rad'],
                    still_rad=thresholds['takeover_still_rad'],
                    release_s=thresholds['takeover_release_s'],
                )

        self.command_pubs = {
            c.arm: self.create_publisher(JointState, topics.arm_command(c.arm), topics.COMMAND_QOS)
            for c in self.channels
        }
        self.leader_pubs = {
            c.arm: self.create_publisher(JointState, topics.leader_joint_states(c.arm), topics.STATE_QOS)
            for c in self.channels
        }
        self.diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)
        self.intervention_pub = None
        if takeover:
            self.intervention_pub = self.create_publisher(String, topics.TELEOP_INTERVENTION, topics.LATCHED_QOS)
            self.intervention_pub.publish(String(data=intervention_payload([], STATE)))
            subscribe_from_any_publisher(self, String, topics.TELEOP_TAKEOVER, self._on_takeover, latched=False)
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joint_states, topics.SENSOR_QOS)
        subscribe_from_any_publisher(self, Bool, topics.ESTOP, self._on_estop, latched=True)
        self.create_service(SetBool, topics.TELEOP_ENABLE, self._on_enable)
        self.create_timer(1.0, self._publish_diagnostics)

        self._stop = threading.Event()
        for channel in self.channels:
            channel.thread = threading.Thread(
                target=self._leader_loop, args=(channel,), name=f'leader_{channel.leader.name}', daemon=True
            )
            channel.thread.start()
        self.get_logger().info(
            'teleop: '
            + '; '.join(
                f'{c.leader.name} ({c.leader.protocol} on {c.leader.port}, {c.leader.read_rate_hz:g} Hz, calibration '
                f'{c.reader.calibration.source}) -> arm {c.arm}'
                for c in self.channels
            )
            + f'; {"armed" if armed else "disarmed"}, start tolerance per leader, ramp {"on" if ramp else "off"}'
            + (f'; takeover mode: a leader moved {thresholds["takeover_threshold_rad"]:g} rad takes its arm over'
               if takeover else '')
        )  # fmt: skip

    def _log(self, level: str, message: str) -> None:
        log_at(self, level, message)

    # -------------------------------------------------------------- callbacks

    def _on_joint_states(self, msg: JointState) -> None:
        now = time.monotonic()
        with self._lock:
            for name, position in zip(msg.name, msg.position, strict=False):
                self._follower[name] = (now, position)

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            for channel in self.channels:
                before = channel.engagement.state
                if channel.takeover is not None:
                    if channel.takeover.set_estop(bool(msg.data)):
                        self._publish_intervention(channel, 'end')
                else:
                    channel.engagement.set_estop(bool(msg.data))
                if channel.engagement.state != before:
                    self._log('warn' if msg.data else 'info', f'teleop {channel.arm}: {channel.engagement.reason}')

    def _on_takeover(self, msg: String) -> None:
        """``<arm>`` takes that arm over, ``release`` / ``release <arm>`` hands back (at the next reading)."""
        words = msg.data.split()
        release = bool(words) and words[0] == 'release'
        arms = set(words[1:] if release else words)
        for channel in self.channels:
            if channel.takeover is not None and (channel.arm in arms or (release and not arms)):
                channel.takeover.request(not release)
                self.get_logger().info(f'teleop/takeover: {"release" if release else "take over"} {channel.arm}')

    def _publish_intervention(self, channel: LeaderChannel, event: str) -> None:
        """The arms under human control, after ``event`` of ``channel``'s arm (call under the lock)."""
        if self.intervention_pub is None or channel.takeover is None:
            return
        human = [c.arm for c in self.channels if c.takeover is not None and c.takeover.human]
        reason = channel.takeover.reason
        self.intervention_pub.publish(String(data=intervention_payload(human, event, channel.arm, reason)))
        self._log('warn' if event == 'start' else 'info', f'takeover {event} {channel.arm}: {reason}')

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        with self._lock:
            if request.data:  # in takeover mode a takeover arms its leader; nothing to arm here
                answers = [f'{c.arm}: {c.engagement.arm() if c.takeover is None else "armed"}' for c in self.channels]
                response.success = all(a.endswith('armed') for a in answers)
            else:
                for channel in self.channels:
                    channel.engagement.disarm('disarmed (teleop/enable false)')
                answers, response.success = ['disarmed'], True
        response.message = '; '.join(answers)
        self.get_logger().info(f'teleop/enable {bool(request.data)}: {response.message}')
        return response

    def _follower_pose(self, channel: LeaderChannel, now: float) -> list[float | None]:
        pose: list[float | None] = []
        for name in channel.mapping.names:
            entry = self._follower.get(name)
            pose.append(entry[1] if entry is not None and now - entry[0] <= self.follower_max_age_s else None)
        return pose

    # --------------------------------------------------------- leader threads

    def _leader_loop(self, channel: LeaderChannel) -> None:
        period = 1.0 / channel.leader.read_rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self._leader_cycle(channel)
            except Exception as exc:  # never let a leader thread die: report and keep cycling
                channel.reader.stats.last_error = f'{type(exc).__name__}: {exc}'
                self.get_logger().error(
                    f'leader {channel.leader.name}: cycle failed: {exc!r}', throttle_duration_sec=1.0
                )
            next_t += period
            delay = next_t - time.monotonic()
            if delay <= 0:
                channel.overruns += 1
                next_t = time.monotonic()
            else:
                self._stop.wait(delay)

    def _leader_cycle(self, channel: LeaderChannel) -> None:
        reading = channel.reader.read()
        targets = channel.mapping(reading.positions) if reading is not None else None
        now = reading.t if reading is not None else time.monotonic()  # when the leader was where it says
        with self._lock:
            before = channel.engagement.state
            if channel.takeover is None:
                decision = channel.engagement.update(now, targets, self._follower_pose(channel, now))
            else:
                decision, event = channel.takeover.update(now, targets, self._follower_pose(channel, now))
                if event is not None:
                    self._publish_intervention(channel, event)
        if decision.state != before and decision.state != POLICY:
            level = 'warn' if decision.state in (LEADER_LOST, ESTOP) else 'info'
            self._log(level, f'teleop {channel.arm}: {decision.reason}')
        stamp = self.get_clock().now().to_msg()
        if targets is not None:
            msg = JointState(name=channel.mapping.names, position=targets)
            msg.header.stamp = stamp
            self.leader_pubs[channel.arm].publish(msg)
        if decision.command is not None:
            cmd = JointState(name=channel.mapping.names, position=decision.command)
            cmd.header.stamp = stamp
            self.command_pubs[channel.arm].publish(cmd)
            channel.commands += 1
            log = self.command_log
            if log is not None and reading is not None:
                log.append((channel.arm, reading.t, time.monotonic(), list(decision.command)))

    # ------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        now = time.monotonic()
        for channel in self.channels:
            stats = channel.reader.stats
            last_t, last_reads = channel.reads_at_last_diag
            rate = (stats.complete_reads - last_reads) / (now - last_t) if now > last_t else 0.0
            channel.reads_at_last_diag = (now, stats.complete_reads)
            with self._lock:
                state, reason = channel.engagement.state, channel.engagement.reason
                if channel.takeover is not None:
                    state = channel.takeover.state
                engagements, losses = channel.engagement.engagements, channel.engagement.leader_losses
            values = {
                'state': state,
                'reason': reason,
                'follower': channel.arm,
                'connected': channel.reader.connected,
                'read_rate_hz': rate,
                'read_rate_target_hz': channel.leader.read_rate_hz,
                'overruns': channel.overruns,
                'missing_servos': stats.missing,
                'calibration': channel.reader.calibration.source,
                'commands': channel.commands,
                'engagements': engagements,
                'leader_losses': losses,
                'connects': stats.connects,
                'disconnects': stats.disconnects,
                'last_error': stats.last_error or '-',
                **{f'bus_{k}': v for k, v in channel.reader.counters().items()},
            }
            if state == LEADER_LOST or not channel.reader.connected:
                level = ERROR
            elif state in (ENGAGED, POLICY):
                level = OK
            else:
                level = WARN
            message = (
                reason if channel.reader.connected else f'leader not connected ({stats.last_error or "-"}); {reason}'
            )
            if channel.reader.calibration.is_identity:
                message += '; leader UNCALIBRATED (identity mapping)'
            array.status.append(
                diagnostic_status(f'{self.get_name()}: leader {channel.leader.name}', level, message, values,
                                  channel.leader.port)
            )  # fmt: skip
        self.diag_pub.publish(array)

    # --------------------------------------------------------------- teardown

    def destroy_node(self) -> None:
        # Also called on a node whose constructor failed half-way (rclpy destroys it at shutdown).
        if hasattr(self, '_stop'):
            self._stop.set()
        for channel in getattr(self, 'channels', []):
            if channel.thread is not None and channel.thread.is_alive():
                channel.thread.join(timeout=5.0)
            channel.reader.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node('teleop', TeleopNode, args, startup_errors=(ConfigError, CalibrationError, ValueError))


if __name__ == '__main__':
    sys.exit(main())
