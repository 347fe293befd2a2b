"""The policy node: observations in, reasoning text + action chunks + control-rate joint commands out.

A thin ROS adapter: it declares the parameters and creates its topics, service and timers in
``__init__``; ROS-free pieces decide. Three loops never wait on each other: **inputs** (callbacks
store frames and joints with their stamps in ``scheduler.Scheduler``, no decoding), **inference**
(``inference_worker.py``, a plain thread) and **control** (a timer at the rig's control rate: the
scheduler's action at *now* through the safety gate; ``command_output.py`` sends it per ``command_mode``
as one ``arms/<arm>/joint_command`` per arm, or sends the chunk's committed part as a trajectory the
drivers play). The node spins on one thread; one lock guards the scheduler, the gate and the prompt, held
only for microseconds, never across inference. ``settings.py`` resolves the parameters, ``prompt.py``
keeps the task and the reasoning, ``diagnostics.py`` gives the diagnostics, ``messages.py`` the messages,
``remote_link.py`` the camera subscriptions (raw or JPEG) and the clock offset to a robot on another host.
"""

from __future__ import annotations

import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from bimanual_vla import topics
from bimanual_vla.config import load_policy
from bimanual_vla.policy_node import diagnostics, takeover
from bimanual_vla.policy_node.chunking import Chunk
from bimanual_vla.policy_node.command_output import CommandOutput
from bimanual_vla.policy_node.inference_worker import InferenceWorker, Snapshot, load_model
from bimanual_vla.policy_node.markers import GripperPaths, chunk_markers
from bimanual_vla.policy_node.messages import chunk_trajectory, diagnostic_array, reasoning_label
from bimanual_vla.policy_node.prompt import Prompt
from bimanual_vla.policy_node.remote_link import RemoteLink
from bimanual_vla.policy_node.rig_fit import check_cameras, commanded_arms
from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.scheduler import Scheduler, scheduler_for_policy
from bimanual_vla.policy_node.settings import NodeSettings
from bimanual_vla.policy_node.trajectory_plan import choose_command_mode
from bimanual_vla.ros_utils import declare_rig, run_node, sec_to_stamp, subscribe_from_any_publisher


class PolicyNode(Node):
    """Runs a VLA checkpoint on a rig: see the module docstring and docs/policy_node.md."""

    def __init__(self, **kwargs) -> None:
        super().__init__('policy_node', **kwargs)
        self.worker: InferenceWorker[Image] | None = None  # first: destroy_node must work on a failed set-up
        self.settings = self._declare_parameters()
        self.model = load_model(self.settings.checkpoint, self.settings.policy)
        self.joint_names: list[str] = list(self.model.joint_names)
        self.camera_names: list[str] = list(self.model.camera_names)
        self.dt = 1.0 / float(self.model.control_rate_hz)
        self.action_time_offset_s = self.settings.action_time_offset_s(self.model.metadata.action_time_offset_s)
        self.arms = commanded_arms(self.rig, self.joint_names, self.get_logger().warning)
        check_cameras(self.rig, self.camera_names)
        self._init_state()
        self._init_ros_io()
        self.worker = InferenceWorker(
            model=self.model,
            scheduler=self.scheduler,
            lock=self._lock,
            policy_cfg=self.settings.policy,
            camera_names=self.camera_names,
            clock=self.now_s,
            prompt=self.prompt.read,  # called under the lock
            logger=self.get_logger(),
            on_subtask=self._publish_subtask,
            on_chunk=self._on_chunk,
        )
        self.worker.start()
        self.get_logger().info(
            diagnostics.startup_line(self.settings, self.model, self.scheduler, self.rig, self.paths.mode)
        )
        self._check_task(self.prompt.task)

    # ---------------------------------------------------------------- setup

    def _declare_parameters(self) -> NodeSettings:
        self.rig = declare_rig(self)
        policy = load_policy(self.declare_parameter('policy', 'default').get_parameter_value().string_value)
        self.command_mode = choose_command_mode(self.rig.policy_host, self.declare_parameter('command_mode', '').value)
        return NodeSettings.resolve(
            policy,
            checkpoint=self.declare_parameter('checkpoint', '').get_parameter_value().string_value,
            enabled=self.declare_parameter('enabled', policy.safety.enabled_at_start).value,
            chunking=self.declare_parameter('chunking', policy.inference.chunking).value,
            markers_every_n_chunks=self.declare_parameter('markers_every_n_chunks', 1).value,
        )

    def _init_state(self) -> None:
        self.scheduler: Scheduler[Image] = scheduler_for_policy(
            self.settings.policy,
            dt=self.dt,
            chunk_size=self.model.chunk_size,
            action_time_offset_s=self.action_time_offset_s,
            joint_names=self.joint_names,
            camera_names=self.camera_names,
            arm_columns={arm: cols for arm, (_names, cols) in self.arms.items()},
            strategy=self.settings.chunking,
            on_time_jump=self._on_time_jump,
        )
        self.scheduler.ticks_lead_by_link = self.command_mode == 'tick'  # trajectories carry the robot's times
        self.stats, self.latency = self.scheduler.stats, self.scheduler.latency
        max_velocity, enabled = self.settings.policy.safety.max_velocity_rad_s, self.settings.enabled
        self.gate = CommandGate.from_rig(self.rig, self.joint_names, max_velocity_rad_s=max_velocity, enabled=enabled)
        self.prompt = Prompt(self.settings.policy.task)
        self._lock = threading.Lock()

    def _init_ros_io(self) -> None:
        link = {'lock': self._lock, 'scheduler': self.scheduler, 'gate': self.gate}  # cameras, clocks: remote_link.py
        self.link = RemoteLink(self, self.rig, self.camera_names, self._on_image, **link)
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, topics.SENSOR_QOS)
        subscribe_from_any_publisher(self, String, topics.POLICY_TASK, self._on_task, latched=True)
        subscribe_from_any_publisher(self, String, topics.POLICY_SUBTASK, self._on_subtask, latched=True)
        subscribe_from_any_publisher(self, Bool, topics.ESTOP, self._on_estop, latched=True)
        self.create_service(SetBool, topics.POLICY_ENABLE, self._on_enable)
        self.output = CommandOutput(self, self.command_mode, self.arms, self.gate, 1.0 / self.rig.control_rate_hz)
        self.takeover = takeover.attach(self, self.arms, self._lock, self.gate, self.scheduler)  # teleop/intervention
        self._chunk_pub = self.create_publisher(JointTrajectory, topics.POLICY_ACTION_CHUNK, topics.RELIABLE_QOS)
        self._reasoning_pub = self.create_publisher(String, topics.POLICY_REASONING, topics.LATCHED_QOS)
        self._marker_pub = self.create_publisher(MarkerArray, topics.POLICY_MARKERS, topics.RELIABLE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)
        self.paths = GripperPaths(self.rig, self.joint_names, list(self.arms))
        self._control_timer = self.create_timer(1.0 / self.rig.control_rate_hz, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --------------------------------------------------------------- inputs

    def _on_image(self, cam: str, msg: Image, stamp: float) -> None:
        arrival = self.now_s()
        with self._lock:
            self.scheduler.add_frame(cam, msg, stamp, arrival)

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:  # the robot's stamp on this node's clock
            self.scheduler.add_joints(self.link.local(msg.header.stamp), msg.name, msg.position)

    def _on_task(self, msg: String) -> None:
        with self._lock:
            task = self.prompt.set_task(msg.data)
        self.get_logger().info(f'task: {msg.data!r}')
        self._check_task(task)

    def _check_task(self, task: str) -> None:
        warning = diagnostics.untrained_task_warning(task, self.model.metadata.tasks)
        if warning:
            self.get_logger().warning(warning)

    def _on_subtask(self, msg: String) -> None:
        with self._lock:
            text = self.prompt.set_override(msg.data)
        self.get_logger().info(f'subtask override: {text!r}' if text else 'subtask override cleared')

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            changed = msg.data != self.gate.estop
            self.gate.set_estop(msg.data)
        # Two call sites: rclpy refuses one site logging at two severities.
        if changed and msg.data:
            self.get_logger().warning('E-STOP engaged: commands stopped, policy disabled')
        elif changed:
            self.get_logger().info('e-stop released; call policy/enable to move again')

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        problem = self.link.enable_problem() if request.data else None  # clock offset unmeasured or too large
        with self._lock:
            response.success, response.message = (False, problem) if problem else self.gate.set_enabled(request.data)
        self.get_logger().info(f'policy/enable {request.data}: {response.message}')
        return response

    def _on_time_jump(self, back_s: float) -> None:
        """ROS time jumped back (the scheduler calls it under the lock): retract the old episode's subtask."""
        if self.prompt.retract():
            self._reasoning_pub.publish(String(data=''))
        self.get_logger().info(f'time jumped back {back_s:.2f} s (sim reset or bag loop): executing chunk dropped')

    # -------------------------------------------------------------- control

    def _tick(self) -> None:
        self.scheduler.note_tick_wall(time.monotonic())
        now = self.now_s()
        with self._lock:
            tick = self.scheduler.tick(now)
            if tick.stale and not tick.was_stale:
                self.get_logger().warning(f'stale inputs, holding: {"; ".join(tick.stale)}')
            elif tick.was_stale and not tick.stale:
                self.get_logger().info('all inputs fresh')
            result = self.gate.step(tick.action, measured=tick.measured, inputs_fresh=not tick.stale)
            out = self.output.decide(now, result, self.scheduler.executor)  # None: nothing to send
            pending = self.scheduler.take_pending_frames() if out is not None and result.command is not None else None
        if out is not None:
            self.output.publish(self.link.outgoing(out))
        if pending:
            self.scheduler.note_commanded(pending, self.now_s())

    # ------------------------------------------------------------ inference

    def _on_chunk(self, result, snap: Snapshot[Image], chunk: Chunk) -> None:
        """A chunk the scheduler accepted: publish it, and its markers every ``markers_every_n_chunks``."""
        self.prompt.subtask = result.subtask  # published on policy/reasoning when decoded (_publish_subtask)
        self._chunk_pub.publish(chunk_trajectory(chunk, self.joint_names))
        if self.stats.chunks % self.settings.markers_every == 0:
            label = reasoning_label(result.subtask, result.subtask_source)
            frozen = snap.inputs.frozen_steps
            markers = chunk_markers(
                self.paths, chunk.actions, self.dt, stamp=sec_to_stamp(chunk.t0), reasoning=label, frozen_steps=frozen
            )
            self._marker_pub.publish(markers)

    def _publish_subtask(self, text: str, epoch: int) -> None:
        """A new subtask on policy/reasoning the moment the model has written it (about half an
        inference before its chunk); under the lock, so nothing from before a time jump gets out."""
        with self._lock:
            if self.prompt.reasoning_to_publish(text, current=epoch == self.scheduler.epoch):
                self._reasoning_pub.publish(String(data=text))

    # ---------------------------------------------------------- diagnostics

    def diagnostics_values(self) -> dict[str, object]:
        tasks, link = self.model.metadata.tasks, self.link.values()  # link: image transport, clock offset
        return {**diagnostics.policy_values(self.gate, self.scheduler, self.prompt, tasks, self._lock), **link}

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        level, message = diagnostics.status_level(values, self.scheduler.stale, self.stats)
        stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(diagnostic_array(stamp, f'{self.get_name()}: policy', level, message, values))

    # -------------------------------------------------------------- teardown

    def destroy_node(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=30.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    # ConfigError, CheckpointError: a clear message, not a traceback
    return run_node('policy_node', PolicyNode, args, startup_errors=(ValueError,))


if __name__ == '__main__':
    sys.exit(main())
