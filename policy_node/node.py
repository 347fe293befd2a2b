"""The policy node: observations in, reasoning text + action chunks + control-rate joint commands out.

Three loops that never wait on each other:

* **inputs** (subscription callbacks): keep the latest frame of every camera and the latest
  position of every joint, with their stamps. Cheap: no decoding, no copying beyond the message.
* **inference** (a plain Python thread, so the model's seconds never occupy an executor thread):
  when every input is fresh, assemble the observation, plan the real-time-chunking guide from
  the executing chunk, run the model, and hand the chunk to the executor. Paced so a new chunk
  starts every ``execution_horizon`` control steps (or back to back if inference is slower).
* **control** (a timer at the rig's control rate; the node spins on one thread, and every other
  callback only stores a message, so a tick waits at most microseconds for one): ask the chunk
  executor for the action at *now*, pass it through the safety gate, publish one
  ``arms/<arm>/joint_command`` per arm.

Shared state is guarded by one lock that is only ever held for microseconds (copying arrays,
swapping a chunk), never across inference. Stale inputs stop inference and motion and drop the
executing chunk (its times are gone by the time inputs recover); the gate then restarts from
the measured joint positions at the max velocity.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import time
from collections import deque
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
from bimanual_vla.policy_node.chunking import Chunk, ChunkExecutor, GuidePlan, LatencyEstimator, plan_guide
from bimanual_vla.policy_node.input_sync import ArrivalDelay, JointHistory, StampedHistory
from bimanual_vla.policy_node.markers import GripperPaths, chunk_markers
from bimanual_vla.policy_node.safety import CommandGate
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

TIME_JUMP_TOLERANCE_S = 0.05
"""ROS time further back than this from the latest seen counts as a jump (a sim reset, a bag loop)."""


@dataclass
class _Snapshot:
    images: dict[str, np.ndarray]
    state: np.ndarray
    task: str
    stamp: float
    camera_stamps: dict[str, float]
    guide: object | None  # the model's ChunkGuide
    plan: GuidePlan | None  # the same, as planned (committed actions, weights), for residual blending
    frozen_steps: int
    decode_subtask: bool
    override: str | None
    epoch: int  # the time epoch it was taken in (see PolicyNode._note_time)


class _Stats:
    """Rolling numbers for diagnostics and the benchmark (bounded memory for an eight-hour run)."""

    def __init__(self, window: int = 3000) -> None:
        self.tick_periods_ms: deque[float] = deque(maxlen=window)
        self.tick_late_ms: deque[float] = deque(maxlen=window)
        self.inference_ms: deque[float] = deque(maxlen=200)
        self.frame_to_command_ms: deque[float] = deque(maxlen=500)
        self.chunk_lead_ms: deque[float] = deque(maxlen=500)  # snapshot time minus the chunk's start time
        self.join_jumps: deque[float] = deque(maxlen=500)
        # (jump, jump before RTC residual blending, start index, RTC frozen steps)
        self.joins: deque[tuple[float, float, float, int]] = deque(maxlen=500)
        self.chunks = 0
        self.chunks_refused = 0
        self.time_jumps = 0  # ROS time went backwards (sim reset, bag loop): chunks in flight dropped
        self.nonfinite_chunks = 0
        self.inference_errors = 0
        self.starved_ticks = 0
        self.bad_images = 0
        self.bad_joint_states = 0
        self.last_error = ''


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float('nan')


def _ms(seconds: float | None) -> float:
    return float('nan') if seconds is None else seconds * 1e3


class PolicyNode(Node):
    """Runs a VLA checkpoint on a rig: see the module docstring and docs/policy_node.md."""

    def __init__(self, **kwargs) -> None:
        super().__init__('policy_node', **kwargs)
        self._stop = threading.Event()  # first: destroy_node must work on a node whose set-up failed
        self._thread: threading.Thread | None = None
        from bimanual_vla.policy_node.model import VLAPolicy  # torch/transformers: only when a node is built

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
        offset = self.policy_cfg.inference.action_time_offset_s
        self.action_time_offset_s = float(offset if offset is not None else self.model.metadata.action_time_offset_s)
        self.arms = self._commanded_arms()
        self._check_cameras()

        self.executor_ = ChunkExecutor(strategy, ensemble_decay=inf.ensemble_decay)
        self.gate = CommandGate.from_rig(
            self.rig, self.joint_names, max_velocity_rad_s=self.policy_cfg.safety.max_velocity_rad_s, enabled=enabled
        )
        self.latency = LatencyEstimator(margin=inf.rtc_latency_margin, quantile=inf.rtc_latency_quantile)
        self.stats = _Stats()
        self._lock = threading.Lock()
        self._col = {n: i for i, n in enumerate(self.joint_names)}
        self._joint_pos = np.full(len(self.joint_names), np.nan)
        self._joint_stamp = np.full(len(self.joint_names), -np.inf)
        self._frames: dict[str, Image] = {}
        # For chunk_start 'synchronized' (policy_node/input_sync.py): how late each camera's frames
        # arrive (also reported in diagnostics whatever the mode), and short stamped histories to
        # pick, per input, the latest one stamped at or before the observation time.
        self._arrival = {cam: ArrivalDelay() for cam in self.camera_names}
        self._keep_history = self.policy_cfg.inference.chunk_start == 'synchronized'  # 16 frames per camera
        self._frame_history: dict[str, StampedHistory[Image]] = {cam: StampedHistory(16) for cam in self.camera_names}
        self._joint_history = JointHistory(len(self.joint_names))
        self._task = self.policy_cfg.task
        self._override: str | None = None
        self._last_reasoning: str | None = None
        self._subtask = ''
        self._stale: list[str] = ['no input yet']
        self._time_epoch = 0  # +1 each time ROS time jumps backwards
        self._latest_now = -math.inf
        self._pending_frames: dict[str, float] | None = None  # camera stamps of the newest chunk, until commanded
        self._last_tick_wall: float | None = None

        for cam in self.camera_names:
            self.create_subscription(
                Image,
                topics.camera_image(cam),
                lambda msg, cam=cam: self._on_image(cam, msg),
                topics.SENSOR_QOS,
            )
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
        self._thread = threading.Thread(target=self._inference_loop, name='policy_inference', daemon=True)
        self._thread.start()
        self.get_logger().info(
            f'policy {checkpoint.name}: {len(self.joint_names)} joints, cameras {self.camera_names}, '
            f'chunk {self.model.chunk_size} @ {self.model.control_rate_hz:g} Hz, chunking {strategy}, '
            f'{self._chunk_start_text()}, '
            f'control {self.rig.control_rate_hz:g} Hz, {"ENABLED" if enabled else "disabled (call policy/enable)"}; '
            f'markers: {self.paths.mode}'
        )
        self._check_task(self._task)

    # ---------------------------------------------------------------- setup

    def _chunk_start_text(self) -> str:
        mode = self.policy_cfg.inference.chunk_start
        if mode == 'oldest_input':
            return 'chunks start at their oldest input'
        when = {
            'synchronized': 'the time every input has arrived for',
            'arrival_compensated': "their snapshot, and earlier by the frames' arrival delay",
        }.get(mode, 'their snapshot')
        return f'chunks start {self.action_time_offset_s * 1e3:g} ms before {when}'

    def _commanded_arms(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """arm -> (qualified joint names, their columns in the chunk), for arms the checkpoint fully covers."""
        rig_joints = set(self.rig.all_joint_names())
        unknown = [n for n in self.joint_names if n not in rig_joints]
        if unknown:
            raise ConfigError(f'checkpoint joints {unknown} are not joints of rig {self.rig.name!r}')
        arms: dict[str, tuple[list[str], np.ndarray]] = {}
        cols = {n: i for i, n in enumerate(self.joint_names)}
        for arm in self.rig.arms:
            names = arm.qualified_joint_names()
            covered = [n for n in names if n in cols]
            if covered and len(covered) != len(names):
                missing = sorted(set(names) - set(covered))
                raise ConfigError(f'checkpoint covers arm {arm.name!r} only partly (missing {missing})')
            if covered:
                arms[arm.name] = (names, np.array([cols[n] for n in names]))
            else:
                self.get_logger().warning(f'arm {arm.name!r} is not in the checkpoint: it will not be commanded')
        return arms

    def _check_cameras(self) -> None:
        rig_cams = {c.name for c in self.rig.cameras}
        missing = [c for c in self.camera_names if c not in rig_cams]
        if missing:
            raise ConfigError(f'checkpoint expects cameras {missing} that rig {self.rig.name!r} does not have')

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --------------------------------------------------------------- inputs

    def _on_image(self, cam: str, msg: Image) -> None:
        arrival = self.now_s()
        stamp = stamp_to_sec(msg.header.stamp)
        with self._lock:
            self._frames[cam] = msg
            self._arrival[cam].add(arrival, stamp)
            if self._keep_history:
                self._frame_history[cam].add(stamp, msg)

    def _on_joints(self, msg: JointState) -> None:
        stamp = stamp_to_sec(msg.header.stamp)
        if len(msg.position) != len(msg.name):
            self.stats.bad_joint_states += 1
            return
        cols: list[int] = []
        values: list[float] = []
        with self._lock:
            for name, pos in zip(msg.name, msg.position, strict=True):
                i = self._col.get(name)
                if i is None:
                    continue
                if not math.isfinite(pos):  # the joint goes stale instead of feeding NaN to the model
                    self.stats.bad_joint_states += 1
                    continue
                self._joint_pos[i] = pos
                self._joint_stamp[i] = stamp
                cols.append(i)
                values.append(pos)
            if cols and self._keep_history:
                self._joint_history.add(stamp, np.array(cols), np.array(values))

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

    def _note_time(self, now: float) -> None:
        """Detect ROS time going backwards (caller holds the lock).

        On sim time this happens when the simulator resets an episode or a replayed bag loops. The
        executing chunk and any inference in flight belong to the old timeline (their stamps lie in
        the future of the new one), so they are dropped, and inference is re-paced from now.
        The subtask named on the old timeline is retracted (an empty `policy/reasoning`): it
        described an episode that is over, and the new one's first subtask is published even
        when it reads the same. The tolerance absorbs the two threads reading the clock a
        moment apart.
        """
        if now < self._latest_now - TIME_JUMP_TOLERANCE_S:
            self.stats.time_jumps += 1
            self._time_epoch += 1
            self.executor_.clear()
            self._pending_frames = None
            # Inputs stamped in the new timeline's future came from the old one (they would read as
            # "-19.6 s old"): forget them, so the node waits for the new episode's own.
            horizon = now + TIME_JUMP_TOLERANCE_S
            self._frames = {c: m for c, m in self._frames.items() if stamp_to_sec(m.header.stamp) <= horizon}
            self._joint_stamp[self._joint_stamp > horizon] = -np.inf
            for history in self._frame_history.values():
                history.drop_after(horizon)
            self._joint_history.drop_after(horizon)
            if self._last_reasoning:
                self._subtask, self._last_reasoning = '', None
                self._reasoning_pub.publish(String(data=''))
            self.get_logger().info(
                f'time jumped back {self._latest_now - now:.2f} s (sim reset or bag loop): executing chunk dropped'
            )
            self._latest_now = now
        else:
            self._latest_now = max(self._latest_now, now)

    def _stale_inputs(self, now: float) -> list[str]:
        """Which inputs are missing or too old (caller holds the lock)."""
        stale: list[str] = []
        max_cam = self.policy_cfg.staleness.camera_max_age_s
        for cam in self.camera_names:
            msg = self._frames.get(cam)
            if msg is None:
                stale.append(f'camera {cam}: no frame')
                continue
            age = now - stamp_to_sec(msg.header.stamp)
            if age > max_cam or age < -max_cam:
                stale.append(f'camera {cam}: {age:.2f} s old')
        max_joint = self.policy_cfg.staleness.joint_max_age_s
        ages = now - self._joint_stamp
        bad = ~((ages <= max_joint) & (ages >= -max_joint))
        if np.any(bad):
            for arm, (_names, cols) in self.arms.items():
                if np.any(bad[cols]):
                    worst = float(np.max(ages[cols]))
                    stale.append(f'joints {arm}: ' + ('none yet' if math.isinf(worst) else f'{worst:.2f} s old'))
            other = [self.joint_names[i] for i in np.flatnonzero(bad) if not any(i in c for _, c in self.arms.values())]
            if other:
                stale.append(f'joints {other}: stale')
        return stale

    # -------------------------------------------------------------- control

    def _tick(self) -> None:
        wall = time.monotonic()
        if self._last_tick_wall is not None:
            self.stats.tick_periods_ms.append((wall - self._last_tick_wall) * 1e3)
        self._last_tick_wall = wall
        now = self.now_s()
        with self._lock:
            self._note_time(now)
            stale = self._stale_inputs(now)
            if stale and not self._stale:
                self.get_logger().warning(f'stale inputs, holding: {"; ".join(stale)}')
            elif self._stale and not stale:
                self.get_logger().info('all inputs fresh')
            self._stale = stale
            if stale:
                self.executor_.clear()
                sample = None
            else:
                sample = self.executor_.step(now)
                if sample.exhausted:
                    self.stats.starved_ticks += 1
            measured = self._joint_pos.copy()
            result = self.gate.step(
                None if sample is None else sample.action, measured=measured, inputs_fresh=not stale
            )
            pending = self._pending_frames if result.command is not None else None
            if pending is not None:
                self._pending_frames = None
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
            self._note_time(now)
            if self._stale_inputs(now) or not self._task:
                return None
            epoch = self._time_epoch
            frames = dict(self._frames)
            state = self._joint_pos.copy()
            joint_stamp = float(np.min(self._joint_stamp))
            task, override = self._task, self._override
            # A training sample at t pairs the latest inputs at or before t with the commands from t
            # on, so a chunk computed from the inputs gathered now starts now. Anchoring it at the
            # oldest input instead (a camera frame ~50 ms old) runs every chunk that far ahead.
            # Data that stamped its commands after they took effect needs the chunk that much earlier.
            mode = self.policy_cfg.inference.chunk_start
            if mode == 'synchronized':
                synced = self._synchronized_inputs(now)
                if synced is None:
                    return None
                t_sync, frames, state = synced
                t_obs = t_sync - self.action_time_offset_s
            elif mode == 'snapshot':
                t_obs = now - self.action_time_offset_s
            elif mode == 'arrival_compensated':
                t_obs = now - self.action_time_offset_s - self.frame_arrival_delay_s()
            else:
                t_obs = min(joint_stamp, *(stamp_to_sec(frames[c].header.stamp) for c in self.camera_names))
            self.stats.chunk_lead_ms.append((now - t_obs) * 1e3)
            cam_stamps = {c: stamp_to_sec(frames[c].header.stamp) for c in self.camera_names}
            guide, plan, frozen = None, None, 0
            if self.executor_.strategy == 'rtc':
                latency = self.latency.estimate_s
                plan = plan_guide(
                    self.executor_,
                    t_obs=t_obs,
                    now=now,
                    expected_latency_s=latency if latency is not None else 0.0,
                    dt=self.dt,
                    chunk_size=self.model.chunk_size,
                )
                if plan is not None:
                    inference = self.policy_cfg.inference
                    guide = plan.to_chunk_guide(inference.rtc_beta, inference.rtc_jacobian)
                    frozen = plan.frozen_steps
        images = {}
        for cam in self.camera_names:
            try:
                images[cam] = image_to_rgb(frames[cam])
            except ImageError as exc:
                self.stats.bad_images += 1
                self.stats.last_error = f'camera {cam}: {exc}'
                return None
        reasoning = self.policy_cfg.reasoning
        decode = reasoning.enabled and self.stats.chunks % reasoning.every_n_chunks == 0
        return _Snapshot(images, state, task, t_obs, cam_stamps, guide, plan, frozen, decode, override, epoch)

    def frame_arrival_delay_s(self) -> float:
        """How much older than training's the frames in hand are: the cameras' median arrival delays, averaged.

        A training sample at t holds each camera's latest frame stamped at or before t; the node holds the
        latest that has *arrived*, which is older by that camera's arrival delay (in the simulator, 20, 40
        and 60 ms for the three cameras rendered one after another). The model reads the scene's phase from
        the frames, so a chunk anchored at the snapshot plans from a phase that is already past, and in
        closed loop those lags add up to a slower motion. 0 before any frame. Caller holds the lock.
        """
        medians = [a.median_s() for a in self._arrival.values()]
        known = [m for m in medians if m is not None]
        # a frame older than camera_max_age_s is stale anyway: never reach back further than that
        return min(float(np.mean(known)), self.policy_cfg.staleness.camera_max_age_s) if known else 0.0

    def input_delay_s(self) -> float:
        """How late the slowest camera's frames arrive (90th percentile, recent frames); 0 before any."""
        estimates = [a.estimate_s() for a in self._arrival.values()]
        return max((e for e in estimates if e is not None), default=0.0)

    def _synchronized_inputs(self, now: float) -> tuple[float, dict[str, Image], np.ndarray] | None:
        """(t, frames, joint positions): every input's latest stamped at or before t = now - input delay.

        Caller holds the lock and has checked that the latest inputs are fresh. None (skip this
        inference) if some input has nothing that old yet, e.g. just after a reset.
        """
        t_sync = now - min(self.input_delay_s(), self.policy_cfg.staleness.camera_max_age_s)
        frames: dict[str, Image] = {}
        for cam in self.camera_names:
            picked = self._frame_history[cam].at(t_sync)
            if picked is None:
                return None
            frames[cam] = picked[1]
        state, stamps = self._joint_history.at(t_sync)
        if not np.all(np.isfinite(state)) or np.any(t_sync - stamps > self.policy_cfg.staleness.joint_max_age_s):
            return None
        return t_sync, frames, state

    def _inference_loop(self) -> None:
        from bimanual_vla.policy_node.model import NonFiniteActionError, Observation

        horizon = max(1, min(self.policy_cfg.inference.execution_horizon, self.model.chunk_size))
        next_start, paced_epoch = -math.inf, 0
        while not self._stop.is_set():
            waiting = self.now_s() < next_start and paced_epoch == self._time_epoch
            if waiting and self.executor_.current is not None:  # nothing to run, or time jumped: start now
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
                    on_subtask=functools.partial(self._publish_subtask, epoch=snap.epoch),
                )
            except NonFiniteActionError as exc:
                self.stats.nonfinite_chunks += 1
                self.stats.last_error = f'model output rejected: {exc}'
                self.get_logger().error(
                    f'non-finite model output rejected (never sent): {exc}', throttle_duration_sec=5
                )
                next_start, paced_epoch = started + horizon * self.dt, snap.epoch
                continue
            except Exception as exc:  # keep the node alive; diagnostics go ERROR and name it
                self.stats.inference_errors += 1
                self.stats.last_error = f'{type(exc).__name__}: {exc}'
                self.get_logger().error(f'inference failed: {self.stats.last_error}', throttle_duration_sec=5)
                self._stop.wait(0.5)
                continue
            latency_s = time.monotonic() - wall0
            # RTC plans in control steps of ROS time; with a simulated clock at a real-time factor
            # other than 1 the wall time would freeze the wrong number of them
            if snap.epoch == self._time_epoch:
                self.latency.add(self.now_s() - started)
            self.stats.inference_ms.append(latency_s * 1e3)
            self._accept(result, snap)
            next_start, paced_epoch = started + horizon * self.dt, snap.epoch

    def _accept(self, result, snap: _Snapshot) -> None:
        try:
            chunk = Chunk(
                np.asarray(result.actions, dtype=np.float64), t0=snap.stamp, dt=self.dt, seq=self.stats.chunks
            )
            now = self.now_s()
            with self._lock:
                self._note_time(now)
                if snap.epoch != self._time_epoch:  # observed before time jumped back: another timeline
                    return
                report = self.executor_.add(chunk, now=now, guide=snap.plan)
                if report.accepted:
                    self._pending_frames = snap.camera_stamps
        except ValueError as exc:  # NaN that slipped past the model, wrong shape
            self.stats.nonfinite_chunks += 1
            self.stats.last_error = f'chunk rejected: {exc}'
            self.get_logger().error(self.stats.last_error, throttle_duration_sec=5)
            return
        if not report.accepted:
            self.stats.chunks_refused += 1
            self.stats.last_error = f'chunk refused ({report.reason}): inference slower than the chunk'
            return
        self.stats.chunks += 1
        if report.reason == 'joined':
            self.stats.join_jumps.append(report.jump)
            self.stats.joins.append((report.jump, report.raw_jump, report.start_index, snap.frozen_steps))
        self._subtask = result.subtask  # published on policy/reasoning when decoded (infer's on_subtask)
        self._publish_chunk(chunk)
        if self.stats.chunks % self.marker_every == 0:
            label = f'[coach] {result.subtask}' if result.subtask_source == 'override' else result.subtask
            self._marker_pub.publish(
                chunk_markers(
                    self.paths,
                    chunk.actions,
                    self.dt,
                    stamp=sec_to_stamp(chunk.t0),
                    reasoning=label,
                    frozen_steps=snap.frozen_steps,
                )
            )

    def _publish_subtask(self, text: str, epoch: int) -> None:
        """Publish a new subtask on policy/reasoning the moment the model has written it.

        The model decodes the subtask before the flow steps that turn it into actions, so this comes
        about half an inference before the chunk. Nothing from before a time jump is published: the
        check and the publish share the lock with the jump's retraction, so they cannot interleave.
        """
        with self._lock:
            if not text or text == self._last_reasoning or epoch != self._time_epoch:
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
        s = self.stats
        with self._lock:
            counters = self.gate.counters
            values: dict[str, object] = {
                'enabled': self.gate.enabled,
                'estop': self.gate.estop,
                'chunking': self.executor_.strategy,
                'task': self._task,
                'task_trained': self.task_trained(self._task),
                'subtask': self._subtask,
                'subtask_override': self._override or '',
                'stale_inputs': '; '.join(self._stale) or 'none',
                'commands_sent': counters.commands,
                'rejected_outputs': s.nonfinite_chunks + counters.nonfinite_rejected,
                'limit_clips': counters.limit_clips,
                'velocity_clamps': counters.velocity_clamps,
                'blocked_ticks': ', '.join(f'{k}={v}' for k, v in sorted(counters.blocked.items())) or 'none',
            }
            arrival: dict[str, float] = {'input_delay_ms': self.input_delay_s() * 1e3}
            arrival.update({f'camera_{c}_arrival_delay_ms_p50': _ms(a.median_s()) for c, a in self._arrival.items()})
        est = self.latency.estimate_s
        values.update(
            {
                'chunks': s.chunks,
                'chunks_refused_late': s.chunks_refused,
                'time_jumps': s.time_jumps,
                'inference_errors': s.inference_errors,
                'inference_ms_p50': _pct(s.inference_ms, 50),
                'inference_ms_max': max(s.inference_ms, default=float('nan')),
                'rtc_delay_steps_planned': math.ceil(est / self.dt) + 1 if est is not None else 0,
                'control_period_ms_p50': _pct(s.tick_periods_ms, 50),
                'control_period_ms_p99': _pct(s.tick_periods_ms, 99),
                'control_period_ms_max': max(s.tick_periods_ms, default=float('nan')),
                'frame_to_command_ms_p50': _pct(s.frame_to_command_ms, 50),
                'chunk_start': self.policy_cfg.inference.chunk_start,
                'chunk_start_before_snapshot_ms_p50': _pct(s.chunk_lead_ms, 50),
                **arrival,
                'join_jump_max': max((j[0] for j in s.joins), default=0.0),
                'join_jump_before_rtc_blend_max': max((j[1] for j in s.joins), default=0.0),
                'rtc_joins_later_than_planned': sum(1 for j in s.joins if j[3] and j[2] > j[3] - 1),
                'starved_ticks': s.starved_ticks,
                'bad_images': s.bad_images,
                'bad_joint_states': s.bad_joint_states,
                'last_error': s.last_error or 'none',
            }
        )
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
