"""The policy node: observations in, reasoning text + action chunks + control-rate joint commands out.

A thin ROS adapter. Three loops that never wait on each other: **inputs** (subscription callbacks
hand the latest frames and joints, with their stamps, to ``scheduler.py``: no decoding), **inference**
(``inference_worker.py``, a plain thread, so the model's seconds never occupy an executor thread) and
**control** (a timer at the rig's control rate: the scheduler's action at *now*, through the safety
gate, one ``arms/<arm>/joint_command`` per arm; the node spins on one thread and every other callback
only stores a message, so a tick waits at most microseconds). One lock guards the scheduler, the gate
and the node's own state, held only for microseconds, never across inference. ``diagnostics.py``
gives the diagnostics' values and level, ``messages.py`` builds the outgoing messages.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from bimanual_vla import topics
from bimanual_vla.config import ConfigError, PolicyConfig, load_policy, resolve_share_relative
from bimanual_vla.image_msgs import ImageError, image_to_rgb
from bimanual_vla.policy_node import diagnostics
from bimanual_vla.policy_node.chunking import Chunk
from bimanual_vla.policy_node.inference_worker import InferenceWorker, Snapshot, load_model
from bimanual_vla.policy_node.markers import GripperPaths, chunk_markers
from bimanual_vla.policy_node.messages import chunk_trajectory, joint_command
from bimanual_vla.policy_node.rig_fit import check_cameras, commanded_arms
from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.scheduler import Scheduler, scheduler_for_policy
from bimanual_vla.ros_utils import (
    ERROR,
    OK,
    STALE,
    WARN,
    declare_rig,
    diagnostic_status,
    run_node,
    sec_to_stamp,
    stamp_to_sec,
    subscribe_from_any_publisher,
)

_LEVELS = {'OK': OK, 'WARN': WARN, 'ERROR': ERROR, 'STALE': STALE}


class PolicyNode(Node):
    """Runs a VLA checkpoint on a rig: see the module docstring and docs/policy_node.md."""

    def __init__(self, **kwargs) -> None:
        super().__init__('policy_node', **kwargs)
        self._worker: InferenceWorker[Image] | None = None  # first: destroy_node must work on a failed set-up
        checkpoint, enabled, strategy = self._declare_parameters()
        self._load_model(checkpoint)
        self._init_state(enabled, strategy)
        self._init_ros_io()
        self._worker = self._make_worker()
        self._worker.start()
        self.get_logger().info(
            f'policy {checkpoint.name}: {len(self.joint_names)} joints, cameras {self.camera_names}, '
            f'chunk {self.model.chunk_size} @ {self.model.control_rate_hz:g} Hz, chunking {strategy}, '
            f'{self.scheduler.chunk_start_text()}, '
            f'control {self.rig.control_rate_hz:g} Hz, {"ENABLED" if enabled else "disabled (call policy/enable)"}; '
            f'markers: {self.paths.mode}'
        )
        self._check_task(self._task)

    # ---------------------------------------------------------------- setup

    def _declare_parameters(self) -> tuple[Path, bool, str]:
        """Declare every parameter; returns (checkpoint directory, enabled at start, chunking strategy)."""
        self.rig = declare_rig(self)
        policy_arg = self.declare_parameter('policy', 'default').get_parameter_value().string_value
        self.policy_cfg: PolicyConfig = load_policy(policy_arg)
        ckpt = self.declare_parameter('checkpoint', '').get_parameter_value().string_value
        enabled = self.declare_parameter('enabled', self.policy_cfg.safety.enabled_at_start).value
        strategy = self.declare_parameter('chunking', self.policy_cfg.inference.chunking).value
        self.marker_every = max(1, int(self.declare_parameter('markers_every_n_chunks', 1).value))
        checkpoint = resolve_share_relative(ckpt or self.policy_cfg.checkpoint)
        if not Path(checkpoint).is_dir():
            raise ConfigError(f'checkpoint {checkpoint} is not a directory (set the "checkpoint" parameter)')
        return checkpoint, enabled, strategy

    def _load_model(self, checkpoint: Path) -> None:
        self.model = load_model(checkpoint, self.policy_cfg)
        self.joint_names: list[str] = list(self.model.joint_names)
        self.camera_names: list[str] = list(self.model.camera_names)
        self.dt = 1.0 / float(self.model.control_rate_hz)
        # The checkpoint says how its data stamped commands; the policy file may override it.
        offset = self.policy_cfg.inference.action_time_offset_s
        self.action_time_offset_s = float(offset if offset is not None else self.model.metadata.action_time_offset_s)
        self.arms = commanded_arms(self.rig, self.joint_names, self.get_logger().warning)
        check_cameras(self.rig, self.camera_names)

    def _init_state(self, enabled: bool, strategy: str) -> None:
        self.scheduler: Scheduler[Image] = scheduler_for_policy(
            self.policy_cfg,
            dt=self.dt,
            chunk_size=self.model.chunk_size,
            action_time_offset_s=self.action_time_offset_s,
            joint_names=self.joint_names,
            camera_names=self.camera_names,
            arm_columns={arm: cols for arm, (_names, cols) in self.arms.items()},
            strategy=strategy,
            on_time_jump=self._on_time_jump,
        )
        self.stats, self.latency = self.scheduler.stats, self.scheduler.latency
        max_velocity = self.policy_cfg.safety.max_velocity_rad_s
        self.gate = CommandGate.from_rig(self.rig, self.joint_names, max_velocity_rad_s=max_velocity, enabled=enabled)
        self._lock = threading.Lock()
        self._task = self.policy_cfg.task
        self._override: str | None = None
        self._last_reasoning: str | None = None
        self._subtask = ''
        self._last_tick_wall: float | None = None

    def _init_ros_io(self) -> None:
        for cam in self.camera_names:
            on_image = functools.partial(self._on_image, cam)  # rclpy calls it with the message
            self.create_subscription(Image, topics.camera_image(cam), on_image, topics.SENSOR_QOS)
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, topics.SENSOR_QOS)
        subscribe_from_any_publisher(self, String, topics.POLICY_TASK, self._on_task, latched=True)
        subscribe_from_any_publisher(self, String, topics.POLICY_SUBTASK, self._on_subtask, latched=True)
        subscribe_from_any_publisher(self, Bool, topics.ESTOP, self._on_estop, latched=True)
        self.create_service(SetBool, topics.POLICY_ENABLE, self._on_enable)
        self._cmd_pubs = {
            arm: self.create_publisher(JointState, topics.arm_command(arm), topics.COMMAND_QOS) for arm in self.arms
        }
        self._chunk_pub = self.create_publisher(JointTrajectory, topics.POLICY_ACTION_CHUNK, topics.RELIABLE_QOS)
        self._reasoning_pub = self.create_publisher(String, topics.POLICY_REASONING, topics.LATCHED_QOS)
        self._marker_pub = self.create_publisher(MarkerArray, topics.POLICY_MARKERS, topics.RELIABLE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)
        self.paths = GripperPaths(self.rig, self.joint_names, list(self.arms))
        self._control_timer = self.create_timer(1.0 / self.rig.control_rate_hz, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def _stale(self) -> list[str]:
        """Stale inputs at the latest control tick (empty: all fresh)."""
        return self.scheduler.stale

    def frame_arrival_delay_s(self) -> float:
        return self.scheduler.frame_arrival_delay_s()

    def input_delay_s(self) -> float:
        return self.scheduler.input_delay_s()

    # --------------------------------------------------------------- inputs

    def _on_image(self, cam: str, msg: Image) -> None:
        arrival = self.now_s()
        with self._lock:
            self.scheduler.add_frame(cam, msg, stamp_to_sec(msg.header.stamp), arrival)

    def _on_joints(self, msg: JointState) -> None:
        if len(msg.position) != len(msg.name):
            self.stats.bad_joint_states += 1
            return
        with self._lock:
            self.scheduler.add_joints(stamp_to_sec(msg.header.stamp), msg.name, msg.position)

    def _on_task(self, msg: String) -> None:
        with self._lock:
            self._task = msg.data.strip()
        self.get_logger().info(f'task: {msg.data!r}')
        self._check_task(self._task)

    def task_trained(self, task: str) -> str:
        """'yes' / 'no' if the checkpoint records the prompts it was trained on, else 'unknown'."""
        return diagnostics.task_trained(task, self.model.metadata.tasks)

    def _check_task(self, task: str) -> None:
        """Say so when the prompt is not one the checkpoint learned: a small VLA trained on a few
        prompts acts on an unseen one unpredictably, and a typo is the usual cause."""
        if task and self.task_trained(task) == 'no':
            self.get_logger().warning(
                f'task {task!r} is not one this checkpoint was trained on: {self.model.metadata.tasks}'
            )

    def _on_subtask(self, msg: String) -> None:
        text = msg.data.strip()
        with self._lock:
            self._override = text or None
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
        with self._lock:
            response.success, response.message = self.gate.set_enabled(request.data)
        self.get_logger().info(f'policy/enable {request.data}: {response.message}')
        return response

    def _on_time_jump(self, back_s: float) -> None:
        """ROS time jumped back (under the lock): retract the old episode's subtask (an empty
        ``policy/reasoning``), so the new one's first is published even when it reads the same."""
        if self._last_reasoning:
            self._subtask, self._last_reasoning = '', None
            self._reasoning_pub.publish(String(data=''))
        self.get_logger().info(f'time jumped back {back_s:.2f} s (sim reset or bag loop): executing chunk dropped')

    # -------------------------------------------------------------- control

    def _tick(self) -> None:
        wall = time.monotonic()
        if self._last_tick_wall is not None:
            self.stats.tick_periods_ms.append((wall - self._last_tick_wall) * 1e3)
        self._last_tick_wall = wall
        now = self.now_s()
        with self._lock:
            tick = self.scheduler.tick(now)
            if tick.stale and not tick.was_stale:
                self.get_logger().warning(f'stale inputs, holding: {"; ".join(tick.stale)}')
            elif tick.was_stale and not tick.stale:
                self.get_logger().info('all inputs fresh')
            result = self.gate.step(tick.action, measured=tick.measured, inputs_fresh=not tick.stale)
            pending = self.scheduler.take_pending_frames() if result.command is not None else None
        if result.command is None:
            return
        stamp = sec_to_stamp(now)
        for arm, (names, cols) in self.arms.items():
            self._cmd_pubs[arm].publish(joint_command(stamp, names, result.command[cols]))
        if pending:
            for cam_stamp in pending.values():
                self.stats.frame_to_command_ms.append((self.now_s() - cam_stamp) * 1e3)

    # ------------------------------------------------------------ inference

    def _make_worker(self) -> InferenceWorker[Image]:
        return InferenceWorker(
            model=self.model,
            scheduler=self.scheduler,
            lock=self._lock,
            policy_cfg=self.policy_cfg,
            camera_names=self.camera_names,
            clock=self.now_s,
            prompt=lambda: (self._task, self._override),  # called under the lock
            decode_image=image_to_rgb,
            decode_errors=(ImageError,),
            logger=self.get_logger(),
            on_subtask=self._publish_subtask,
            on_chunk=self._on_chunk,
        )

    def _snapshot(self) -> Snapshot[Image] | None:
        """Everything one inference needs, copied under the lock; None if inputs are not usable."""
        assert self._worker is not None
        return self._worker.snapshot()

    def _on_chunk(self, result, snap: Snapshot[Image], chunk: Chunk) -> None:
        """A chunk the scheduler accepted: publish it, and its markers every ``markers_every_n_chunks``."""
        self._subtask = result.subtask  # published on policy/reasoning when decoded (infer's on_subtask)
        self._chunk_pub.publish(chunk_trajectory(chunk, self.joint_names))
        if self.stats.chunks % self.marker_every == 0:
            label = f'[coach] {result.subtask}' if result.subtask_source == 'override' else result.subtask
            stamp = sec_to_stamp(chunk.t0)
            frozen = snap.inputs.frozen_steps
            markers = chunk_markers(
                self.paths, chunk.actions, self.dt, stamp=stamp, reasoning=label, frozen_steps=frozen
            )
            self._marker_pub.publish(markers)

    def _publish_subtask(self, text: str, epoch: int) -> None:
        """A new subtask on policy/reasoning the moment the model has written it (about half an
        inference before its chunk); under the lock, so nothing from before a time jump gets out."""
        with self._lock:
            if not text or text == self._last_reasoning or epoch != self.scheduler.epoch:
                return
            self._last_reasoning = text
            self._reasoning_pub.publish(String(data=text))

    # ---------------------------------------------------------- diagnostics

    def diagnostics_values(self) -> dict[str, object]:
        with self._lock:
            values = diagnostics.status_values(
                self.gate,
                self.stats,
                chunking=self.scheduler.executor.strategy,
                task=self._task,
                trained=self.task_trained(self._task),
                subtask=self._subtask,
                override=self._override,
                stale=self._stale,
            )
            arrival = self.scheduler.arrival_values()
        values.update(self.scheduler.stats_values(arrival))
        return values

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        level, message = diagnostics.status_level(values, self._stale, self.stats)
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(diagnostic_status(f'{self.get_name()}: policy', _LEVELS[level], message, values))
        self._diag_pub.publish(array)

    # -------------------------------------------------------------- teardown

    def destroy_node(self) -> None:
        if self._worker is not None:
            self._worker.stop(timeout=30.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    # ConfigError, CheckpointError: a clear message, not a traceback
    return run_node('policy_node', PolicyNode, args, startup_errors=(ValueError,))


if __name__ == '__main__':
    sys.exit(main())
