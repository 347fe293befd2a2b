"""The policy node: observations in, reasoning text + action chunks + control-rate joint commands out.

A thin ROS adapter over ``policy_node/scheduler.py``, which holds every timing decision (pacing,
where a chunk starts, late chunks, starved ticks, time jumps). Three loops that never wait on each other:

* **inputs** (subscription callbacks): hand the latest frame and joint positions, with their
  stamps, to the scheduler. Cheap: no decoding, no copying beyond the message.
* **inference** (a plain Python thread, so the model's seconds never occupy an executor thread):
  when the scheduler says one is due and inputs are fresh, run the model on its inputs with its
  real-time-chunking guide, and hand the chunk back to it.
* **control** (a timer at the rig's control rate; the node spins on one thread, and every other
  callback only stores a message, so a tick waits at most microseconds for one): the scheduler's
  action at *now*, through the safety gate, one ``arms/<arm>/joint_command`` per arm.

One lock guards the scheduler, the gate and the node's own state, held only for microseconds
(copying arrays, swapping a chunk), never across inference.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import MarkerArray

from bimanual_vla import topics
from bimanual_vla.config import ConfigError, PolicyConfig, load_policy, resolve_share_relative
from bimanual_vla.image_msgs import ImageError, image_to_rgb
from bimanual_vla.policy_node.chunking import Chunk
from bimanual_vla.policy_node.markers import GripperPaths, chunk_markers
from bimanual_vla.policy_node.rig_fit import check_cameras, commanded_arms
from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.scheduler import InferenceInputs, Scheduler, Timing
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


@dataclass
class _Snapshot:
    """One inference's inputs: the scheduler's (times, frames, guide plan) plus what the model reads."""

    inputs: InferenceInputs[Image]
    images: dict[str, np.ndarray]
    task: str
    guide: object | None  # the model's ChunkGuide
    decode_subtask: bool
    override: str | None

    @property
    def stamp(self) -> float:
        return self.inputs.t_obs

    @property
    def camera_stamps(self) -> dict[str, float]:
        return self.inputs.camera_stamps

    @property
    def state(self) -> np.ndarray:
        return self.inputs.state


class PolicyNode(Node):
    """Runs a VLA checkpoint on a rig: see the module docstring and docs/policy_node.md."""

    def __init__(self, **kwargs) -> None:
        super().__init__('policy_node', **kwargs)
        self._stop = threading.Event()  # first: destroy_node must work on a node whose set-up failed
        self._thread: threading.Thread | None = None
        checkpoint, enabled, strategy = self._declare_parameters()
        self._load_model(checkpoint)
        self._init_state(enabled, strategy)
        self._init_ros_io()
        self._thread = threading.Thread(target=self._inference_loop, name='policy_inference', daemon=True)
        self._thread.start()
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
        from bimanual_vla.policy_node.model import VLAPolicy  # torch/transformers: only when a node is built

        inf = self.policy_cfg.inference
        if inf.torch_threads > 0:  # torch's default takes every core and starves the control loop
            import torch

            torch.set_num_threads(inf.torch_threads)
        self.model = VLAPolicy.load(
            checkpoint,
            device=inf.device,
            num_steps=inf.num_steps,
            max_subtask_tokens=self.policy_cfg.reasoning.max_tokens,
        )
        self.joint_names: list[str] = list(self.model.joint_names)
        self.camera_names: list[str] = list(self.model.camera_names)
        self.dt = 1.0 / float(self.model.control_rate_hz)
        # The checkpoint says how its data stamped commands; the policy file may override it.
        offset = inf.action_time_offset_s
        self.action_time_offset_s = float(offset if offset is not None else self.model.metadata.action_time_offset_s)
        self.arms = commanded_arms(self.rig, self.joint_names, self.get_logger().warning)
        check_cameras(self.rig, self.camera_names)

    def _init_state(self, enabled: bool, strategy: str) -> None:
        inf, staleness = self.policy_cfg.inference, self.policy_cfg.staleness
        timing = Timing(
            dt=self.dt,
            chunk_size=self.model.chunk_size,
            execution_horizon=inf.execution_horizon,
            chunk_start=inf.chunk_start,
            action_time_offset_s=self.action_time_offset_s,
            camera_max_age_s=staleness.camera_max_age_s,
            joint_max_age_s=staleness.joint_max_age_s,
        )
        self.scheduler: Scheduler[Image] = Scheduler(
            timing,
            self.joint_names,
            self.camera_names,
            {arm: cols for arm, (_names, cols) in self.arms.items()},
            strategy=strategy,
            ensemble_decay=inf.ensemble_decay,
            latency_margin=inf.rtc_latency_margin,
            latency_quantile=inf.rtc_latency_quantile,
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
        trained = self.model.metadata.tasks
        if not trained:
            return 'unknown'
        return 'yes' if task in trained else 'no'

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
        """The scheduler saw ROS time jump back (under the lock): retract the old timeline's subtask.

        It described an episode that is over (an empty ``policy/reasoning``), and the new one's first
        subtask is published even when it reads the same.
        """
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
            msg = JointState()
            msg.header.stamp = stamp
            msg.name = names
            msg.position = [float(v) for v in result.command[cols]]
            self._cmd_pubs[arm].publish(msg)
        if pending:
            for cam_stamp in pending.values():
                self.stats.frame_to_command_ms.append((self.now_s() - cam_stamp) * 1e3)

    # ------------------------------------------------------------ inference

    def _snapshot(self) -> _Snapshot | None:
        """Everything one inference needs, copied under the lock; None if inputs are not usable."""
        now = self.now_s()
        with self._lock:
            self.scheduler.note_time(now)
            inputs = self.scheduler.plan_inference(now) if self._task else None
            if inputs is None:
                return None
            task, override = self._task, self._override
        guide = None
        if inputs.plan is not None:
            inference = self.policy_cfg.inference
            guide = inputs.plan.to_chunk_guide(inference.rtc_beta, inference.rtc_jacobian)
        images = {}
        for cam in self.camera_names:
            try:
                images[cam] = image_to_rgb(inputs.frames[cam])
            except ImageError as exc:
                self.stats.bad_images += 1
                self.stats.last_error = f'camera {cam}: {exc}'
                return None
        reasoning = self.policy_cfg.reasoning
        decode = reasoning.enabled and self.stats.chunks % reasoning.every_n_chunks == 0
        return _Snapshot(inputs, images, task, guide, decode, override)

    def _inference_loop(self) -> None:
        from bimanual_vla.policy_node.model import NonFiniteActionError, Observation

        while not self._stop.is_set():
            if not self.scheduler.inference_due(self.now_s()):
                self._stop.wait(0.002)
                continue
            snap = self._snapshot()
            if snap is None:
                self._stop.wait(0.02)
                continue
            started = self.now_s()
            wall0 = time.monotonic()
            obs = Observation(images=snap.images, state=snap.state, task=snap.task, stamp=snap.stamp)
            try:
                result = self.model.infer(
                    obs,
                    decode_subtask=snap.decode_subtask,
                    subtask_override=snap.override,
                    guide=snap.guide,
                    on_subtask=functools.partial(self._publish_subtask, epoch=snap.inputs.epoch),
                )
            except NonFiniteActionError as exc:
                self.stats.nonfinite_chunks += 1
                self.stats.last_error = f'model output rejected: {exc}'
                self.get_logger().error(
                    f'non-finite model output rejected (never sent): {exc}', throttle_duration_sec=5
                )
                self.scheduler.pace(started, snap.inputs.epoch)
                continue
            except Exception as exc:  # keep the node alive; diagnostics go ERROR and name it
                self.stats.inference_errors += 1
                self.stats.last_error = f'{type(exc).__name__}: {exc}'
                self.get_logger().error(f'inference failed: {self.stats.last_error}', throttle_duration_sec=5)
                self._stop.wait(0.5)
                continue
            self.stats.inference_ms.append((time.monotonic() - wall0) * 1e3)
            self.scheduler.inference_finished(started, self.now_s(), snap.inputs.epoch)
            self._accept(result, snap)

    def _accept(self, result, snap: _Snapshot) -> None:
        now = self.now_s()
        with self._lock:
            outcome = self.scheduler.accept_chunk(result.actions, snap.inputs, now)
        if outcome.status == 'invalid':
            self.get_logger().error(self.stats.last_error, throttle_duration_sec=5)
        if outcome.status != 'accepted' or outcome.chunk is None:
            return
        self._subtask = result.subtask  # published on policy/reasoning when decoded (infer's on_subtask)
        chunk = outcome.chunk
        self._publish_chunk(chunk)
        if self.stats.chunks % self.marker_every == 0:
            label = f'[coach] {result.subtask}' if result.subtask_source == 'override' else result.subtask
            markers = chunk_markers(
                self.paths,
                chunk.actions,
                self.dt,
                stamp=sec_to_stamp(chunk.t0),
                reasoning=label,
                frozen_steps=snap.inputs.frozen_steps,
            )
            self._marker_pub.publish(markers)

    def _publish_subtask(self, text: str, epoch: int) -> None:
        """Publish a new subtask on policy/reasoning the moment the model has written it.

        The model decodes the subtask before the flow steps that turn it into actions, so this comes
        about half an inference before the chunk. Nothing from before a time jump is published: the
        check and the publish share the lock with the jump's retraction, so they cannot interleave.
        """
        with self._lock:
            if not text or text == self._last_reasoning or epoch != self.scheduler.epoch:
                return
            self._last_reasoning = text
            self._reasoning_pub.publish(String(data=text))

    def _publish_chunk(self, chunk: Chunk) -> None:
        msg = JointTrajectory()
        msg.header.stamp = sec_to_stamp(chunk.t0)
        msg.joint_names = self.joint_names
        for i, row in enumerate(chunk.actions):
            ns = int(round(i * chunk.dt * 1e9))
            point = JointTrajectoryPoint(positions=[float(v) for v in row])
            point.time_from_start = Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
            msg.points.append(point)
        self._chunk_pub.publish(msg)

    # ---------------------------------------------------------- diagnostics

    def diagnostics_values(self) -> dict[str, object]:
        with self._lock:
            counters = self.gate.counters
            values: dict[str, object] = {
                'enabled': self.gate.enabled,
                'estop': self.gate.estop,
                'chunking': self.scheduler.executor.strategy,
                'task': self._task,
                'task_trained': self.task_trained(self._task),
                'subtask': self._subtask,
                'subtask_override': self._override or '',
                'stale_inputs': '; '.join(self._stale) or 'none',
                'commands_sent': counters.commands,
                'rejected_outputs': self.stats.nonfinite_chunks + counters.nonfinite_rejected,
                'limit_clips': counters.limit_clips,
                'velocity_clamps': counters.velocity_clamps,
                'blocked_ticks': ', '.join(f'{k}={v}' for k, v in sorted(counters.blocked.items())) or 'none',
            }
            arrival = self.scheduler.arrival_values()
        values.update(self.scheduler.stats_values(arrival))
        return values

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        if self.gate.estop:
            level, message = ERROR, 'e-stop engaged'
        elif self._stale:
            level, message = STALE, 'stale inputs: ' + '; '.join(self._stale)
        elif self.stats.inference_errors or self.stats.nonfinite_chunks:
            level, message = WARN, f'model output rejected or failed: {self.stats.last_error}'
        elif values['task_trained'] == 'no':
            level, message = WARN, f"task {values['task']!r} is not among the checkpoint's training tasks"
        elif not self.gate.enabled:
            level, message = OK, 'disabled (preview only: chunks and reasoning published, no commands)'
        else:
            level, message = OK, f'running, {self.stats.chunks} chunks'
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(diagnostic_status(f'{self.get_name()}: policy', level, message, values))
        self._diag_pub.publish(array)

    # -------------------------------------------------------------- teardown

    def destroy_node(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            thread.join(timeout=30.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    # ConfigError, CheckpointError: a clear message, not a traceback
    return run_node('policy_node', PolicyNode, args, startup_errors=(ValueError,))


if __name__ == '__main__':
    sys.exit(main())
