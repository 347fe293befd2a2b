"""The ``arm_driver`` node: one serial-bus arm on ROS 2.

Thin by design: a dedicated thread calls :class:`bimanual_vla.drivers.servo.arm_controller.ArmController`
at the read rate (default 100 Hz) and publishes what it read; ROS callbacks hand
commands (``arms/<arm>/joint_command``), trajectories (``arms/<arm>/joint_trajectory``, played at
each cycle by :mod:`bimanual_vla.drivers.servo.trajectory`; the newest source wins), e-stop and
torque requests to the same controller. The safety rules
(limits, max step, NaN rejection, watchdog, e-stop) live in
:mod:`bimanual_vla.drivers.servo.command_filter`, the bus lifecycle in :mod:`bimanual_vla.drivers.servo.arm_controller`.

Parameters:
  rig (str, required)            rig YAML path or shipped rig name
  arm (str, required)            which arm of the rig
  read_rate_hz, command_timeout_s, max_step_rad, max_velocity_rad_s
                                 override the rig's values, within the same bounds (bimanual_vla.config)
  estop_action (str)             hold | torque_off (default: the rig's)
  calibration (str)              calibration file overriding the rig's
  torque_on_start (bool, true)   torque on (holding the present pose) once connected
  torque_off_on_exit (bool)       release torque on shutdown (the arm may fall); default: true when
                                 estop_action is torque_off, else the arm holds its present pose

The read thread publishes from outside the executor; rclpy publishers are
thread-safe, and keeping bus I/O off the executor means a slow callback elsewhere
in a composed process never delays a servo read.
"""

from __future__ import annotations

import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from bimanual_vla import topics
from bimanual_vla.config import (
    COMMAND_TIMEOUT_S,
    MAX_STEP_RAD,
    MAX_VELOCITY_RAD_S,
    READ_RATE_HZ,
    Bound,
    ConfigError,
    check_override,
)
from bimanual_vla.drivers.servo.arm_controller import ArmController, Reading
from bimanual_vla.drivers.servo.calibration import CalibrationError, calibration_for_arm
from bimanual_vla.drivers.servo.command_filter import CommandRejected, VelocityEstimator
from bimanual_vla.drivers.servo.trajectory import Trajectory, TrajectoryRejected
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


class ArmDriver(Node):
    """Publishes ``joint_states`` for one arm and follows ``arms/<arm>/joint_command`` and ``joint_trajectory``."""

    def __init__(self, node_name: str = 'arm_driver', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.rig = declare_rig(self)
        arm_name = self.declare_parameter('arm', '').get_parameter_value().string_value
        if not arm_name:
            raise ConfigError(f'node {self.get_name()}: parameter "arm" is required (one of the rig\'s arm names)')
        arm = self.rig.arm(arm_name)
        if arm.protocol == 'sim':
            raise ConfigError(f'arm {arm.name!r} is simulated (protocol sim): it is driven by sim_rig, not arm_driver')
        self.arm = arm

        def bounded(name: str, default: float, bound: Bound) -> float:
            value = self.declare_parameter(name, default).value
            return check_override(f'node {self.get_name()}', f'parameter {name}', value, bound)

        read_rate_hz = bounded('read_rate_hz', arm.read_rate_hz, READ_RATE_HZ)
        command_timeout_s = bounded('command_timeout_s', arm.command_timeout_s, COMMAND_TIMEOUT_S)
        max_step_rad = bounded('max_step_rad', arm.max_step_rad, MAX_STEP_RAD)
        max_velocity_rad_s = bounded('max_velocity_rad_s', arm.max_velocity_rad_s, MAX_VELOCITY_RAD_S)
        estop_action = str(self.declare_parameter('estop_action', self.rig.estop_action).value)
        calibration_path = str(self.declare_parameter('calibration', '').value)
        torque_on_start = bool(self.declare_parameter('torque_on_start', True).value)
        self.torque_off_on_exit = bool(self.declare_parameter('torque_off_on_exit', estop_action == 'torque_off').value)
        if estop_action not in ('hold', 'torque_off'):
            raise ConfigError(f'node {self.get_name()}: estop_action must be hold or torque_off, not {estop_action!r}')

        calibration, warnings = calibration_for_arm(arm, calibration_path or None)
        for warning in warnings:
            self.get_logger().warning(warning)
        if calibration.is_identity:
            self.get_logger().error(
                f'arm {arm.name}: RUNNING UNCALIBRATED (identity mapping). Published angles and accepted commands '
                'do not match the URDF; calibrate before running a policy on this arm.'
            )

        self.read_period_s = 1.0 / read_rate_hz
        self.controller = ArmController(
            arm,
            calibration,
            read_rate_hz=read_rate_hz,
            command_timeout_s=command_timeout_s,
            max_step_rad=max_step_rad,
            max_velocity_rad_s=max_velocity_rad_s,
            estop_action=estop_action,
            torque_on_start=torque_on_start,
            log=self._log,
            clock=self._clock_s,
        )
        self.velocity = VelocityEstimator(len(arm.joints))
        self.overruns = 0

        self.joint_pub = self.create_publisher(JointState, topics.JOINT_STATES, topics.STATE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)
        self.create_subscription(JointState, topics.arm_command(arm.name), self._on_command, topics.COMMAND_INPUT_QOS)
        self.create_subscription(
            JointTrajectory, topics.arm_trajectory(arm.name), self._on_trajectory, topics.TRAJECTORY_QOS
        )
        subscribe_from_any_publisher(self, Bool, topics.ESTOP, self._on_estop, latched=True)
        self.create_service(SetBool, topics.arm_torque(arm.name), self._on_torque)
        self._diag_last = (time.monotonic(), 0)
        self.create_timer(1.0, self._publish_diagnostics)

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name=f'arm_{arm.name}_io', daemon=True)
        self._thread.start()
        self.get_logger().info(
            f'arm {arm.name}: {arm.protocol} on {arm.port} @ {arm.baudrate} baud, {len(arm.joints)} joints, '
            f'read {read_rate_hz:g} Hz, watchdog {command_timeout_s:g} s, max step {max_step_rad:g} rad, '
            f'max velocity {max_velocity_rad_s:g} rad/s, '
            f'e-stop {estop_action}, calibration {calibration.source}'
        )

    # --------------------------------------------------------------- logging

    def _log(self, level: str, message: str) -> None:
        log_at(self, level, message)

    def _clock_s(self) -> float:
        """The node's ROS time (sim time under use_sim_time): the clock trajectories are stamped in."""
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------- I/O thread

    def _read_loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                reading = self.controller.cycle()
                if reading is not None:
                    self._publish_joint_states(reading)
            except Exception as exc:  # never let the I/O thread die: report and keep cycling
                self.controller.stats.last_error = f'{type(exc).__name__}: {exc}'
                self.get_logger().error(f'arm {self.arm.name}: cycle failed: {exc!r}', throttle_duration_sec=1.0)
            next_t += self.read_period_s
            delay = next_t - time.monotonic()
            if delay <= 0:
                self.overruns += 1
                next_t = time.monotonic()
            else:
                self._stop.wait(delay)

    def _publish_joint_states(self, reading: Reading) -> None:
        velocities = self.velocity.update(reading.positions, reading.t)
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        efforts = reading.efforts or [None] * len(reading.positions)
        rows = zip(self.controller.qualified_names, reading.positions, velocities, efforts, strict=True)
        for name, pos, vel, eff in rows:
            if pos is None:  # a servo that did not answer is left out, never reported with a stale value
                continue
            msg.name.append(name)
            msg.position.append(pos)
            msg.velocity.append(vel)
            msg.effort.append(float('nan') if eff is None else eff)  # fraction of full scale, not N·m
        if msg.name:
            self.joint_pub.publish(msg)

    # -------------------------------------------------------------- callbacks

    def _on_command(self, msg: JointState) -> None:
        try:
            notes = self.controller.submit_command(list(msg.name), list(msg.position))
        except CommandRejected as exc:
            self.get_logger().warning(
                f'arm {self.arm.name}: command rejected ({exc.reason}): {exc}', throttle_duration_sec=1.0
            )
            return
        if notes:
            self.get_logger().warning(f'arm {self.arm.name}: {"; ".join(notes)}', throttle_duration_sec=1.0)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            _, notes = self.controller.submit_trajectory(Trajectory.from_message(msg))
        except TrajectoryRejected as exc:
            self.get_logger().warning(
                f'arm {self.arm.name}: trajectory rejected ({exc.reason}): {exc}', throttle_duration_sec=1.0
            )
            return
        if notes:
            self.get_logger().warning(f'arm {self.arm.name}: {"; ".join(notes)}', throttle_duration_sec=1.0)

    def _on_estop(self, msg: Bool) -> None:
        self.controller.set_estop(bool(msg.data))

    def _on_torque(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        response.success, response.message = self.controller.set_torque(bool(request.data))
        self.get_logger().info(f'arm {self.arm.name}: torque service: {response.message}')
        return response

    # ------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        values = self.controller.snapshot()
        now = time.monotonic()
        last_t, last_reads = self._diag_last
        reads = self.controller.stats.reads_ok
        rate = (reads - last_reads) / (now - last_t) if now > last_t else 0.0
        self._diag_last = (now, reads)
        values = {
            'read_rate_hz': rate,
            'read_rate_target_hz': 1.0 / self.read_period_s,
            'overruns': self.overruns,
            **values,
        }
        problems, level = [], OK
        if not values['connected']:
            problems.append(f'not connected to {self.arm.port}')
            level = ERROR
        missing = values['missing_servos']
        if missing:
            problems.append(f'missing servo(s) {missing}')
            level = max(level, WARN if self.arm.allow_missing_servos else ERROR)
        if self.controller.calibration.is_identity:
            problems.append('UNCALIBRATED (identity mapping)')
            level = max(level, WARN)
        if values['estop']:
            problems.append('e-stop active')
            level = max(level, WARN)
        message = '; '.join(problems) if problems else f'{values["state"]}, {rate:.0f} Hz'
        if values['stalled_joints']:  # a normal grasp ends this way too: said, not raised as a problem
            message += f'; holding {", ".join(values["stalled_joints"])} against an obstacle'
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(
            diagnostic_status(f'{self.get_name()}: arm {self.arm.name}', level, message, values, self.arm.port)
        )
        self.diag_pub.publish(array)

    # ---------------------------------------------------------------- teardown

    def destroy_node(self) -> None:
        # Also called on a node whose constructor failed half-way (rclpy destroys it at shutdown).
        if hasattr(self, '_thread'):
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join(timeout=5.0)
        if hasattr(self, 'controller'):
            self.controller.close(torque_off=self.torque_off_on_exit)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node('arm_driver', ArmDriver, args, startup_errors=(ConfigError, CalibrationError, ValueError))


if __name__ == '__main__':
    sys.exit(main())
