"""The `sim_rig` node: the MuJoCo ALOHA rig behind the same topics as the real rig.

Nothing above the drivers can tell it from hardware: it publishes ``joint_states``
(one message per arm per control tick, names ``<arm>_<joint>``) and each camera's ``image_raw``
+ ``camera_info`` (and ``image_raw/compressed`` while subscribed), and follows ``arms/<arm>/joint_command``,
``arms/<arm>/joint_trajectory`` (played each physics tick at sim time by the drivers' own
``TrajectoryPlayer``; the newest source wins) and ``estop`` like the arm drivers do (limits,
NaN rejection, max step per tick, hold on e-stop, which also drops a trajectory).
Additionally it publishes ``/clock`` (sim time), ``sim/success`` and the task's reward stage
in diagnostics, and resets episodes on request.

Threads, and why:

* physics thread: steps the scene at the control rate, paced to wall time by
  ``real_time_factor`` (0 = as fast as possible), publishes clock and joint states;
* render thread: owns the EGL context (it works only on the thread that made it),
  renders a snapshot copy of the state taken at each render tick, so a frame never
  shows a half-stepped scene. As fast as possible, physics waits for each frame (every
  frame is rendered, for data collection); in real time a late frame is dropped and
  counted instead of slowing physics down;
* the executor's thread(s): command/e-stop/reset callbacks and 1 Hz diagnostics.

Reset: call ``sim/reset`` (std_srvs/Trigger) to restart with the ``seed`` parameter
(set it first with a parameter client to choose the episode), or publish a seed on
``sim/reset_seed`` (std_msgs/Int64) to reset to that seed in one message. Perturb the running
episode with ``sim/perturb`` (std_msgs/String ``drop`` or ``move``: the task object knocked out of the
gripper, or put down elsewhere; sim/perturbation.py) for recovery tests.
With ``expert:=true`` the node drives the arms with the built-in scripted expert,
publishes its targets on ``arms/<arm>/joint_command`` (so a recording holds them as
actions) and its subtask on ``sim/expert_subtask``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from pydantic import ValidationError
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_msgs.msg import Bool, Int64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from bimanual_vla import topics
from bimanual_vla.config import ConfigError, SimConfig, format_validation_error
from bimanual_vla.drivers.servo.trajectory import Trajectory, TrajectoryPlayer, TrajectoryRejected
from bimanual_vla.image_msgs import JPEG_QUALITY, CompressedPublisher, check_jpeg_quality, image_to_rgb
from bimanual_vla.ros_utils import (
    ERROR,
    OK,
    WARN,
    declare_rig,
    diagnostic_status,
    run_node,
    sec_to_stamp,
    subscribe_from_any_publisher,
)
from bimanual_vla.sim.expert import ExpertOptions, ScriptedExpert
from bimanual_vla.sim.fault_injection import CameraFaults
from bimanual_vla.sim.perturbation import PERTURBATIONS, perturbation_rng
from bimanual_vla.sim.scene import MAX_REWARD, SceneRenderer, SimScene, rig_cameras, snapshot
from bimanual_vla.sim.servo_bus import (
    SimServoBus,
    check_protocol,
    default_directory,
    is_twin,
    port_link,
    twin_buses,
    write_servo_bus_rig,
)
from bimanual_vla.sim.so101_expert import So101Expert
from bimanual_vla.sim.so101_scene import SO101_TASKS, So101Scene


def camera_info_msg(camera: str, width: int, height: int, fovy_deg: float) -> CameraInfo:
    """Pinhole intrinsics of a MuJoCo camera (square pixels, principal point at the centre)."""
    fy = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    info = CameraInfo(width=width, height=height, distortion_model='plumb_bob')
    info.header.frame_id = topics.camera_frame(camera)
    info.d = [0.0] * 5
    info.k = [fy, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fy, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


# The expert's ROS parameters: (name, ExpertOptions field, default, description). The maximum speed's
# 0 is ExpertOptions' None (unlimited): a ROS parameter has no null.
EXPERT_PARAMETERS: tuple[tuple[str, str, Any, str], ...] = (
    ('expert_noise_rad', 'noise_rad', 0.0, 'DART: slow joint offsets (std, rad) executed, not published'),
    (
        'expert_max_joint_speed',
        'max_joint_speed_rad_s',
        0.0,
        'rad/s the expert moves each arm joint at most (0: unlimited)',
    ),
    ('expert_approach', 'approach', 'joint', "the expert's move above the cube: joint (no wrist flip) | cartesian"),
    ('expert_time_warp', 'time_warp', 0.0, "segments of the expert's plan stretched by exp(U(-w, w)) (0: nominal)"),
    ('expert_meet_jitter', 'meet_jitter', 0.0, "the expert's handover point moved by U(-j, j) m per axis (0: nominal)"),
    ('expert_aim_left', 'aim_left', False, "the expert's left grasp aimed at the cube where it is measured"),
)


def expert_parameters(options: ExpertOptions) -> dict[str, Any]:
    """The sim_rig parameters that make its expert follow `options` (for `rig_nodes`' sim_overrides)."""
    out = {}
    for name, attr, default, _ in EXPERT_PARAMETERS:
        value = getattr(options, attr)
        out[name] = type(default)(0.0 if value is None else value)
    return out


def expert_options(values: dict[str, Any]) -> ExpertOptions:
    """ExpertOptions from sim_rig parameter values by name (missing ones take their defaults); ValueError if bad."""
    fields = {attr: values.get(name, default) for name, attr, default, _ in EXPERT_PARAMETERS}
    fields['max_joint_speed_rad_s'] = fields['max_joint_speed_rad_s'] or None
    return ExpertOptions(**fields)


@dataclass
class _Tick:
    """What one physics tick hands from under the sim lock to the publishers."""

    sim_time: float
    states: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # arm: positions, velocities, efforts
    success: bool
    expert_targets: dict[str, np.ndarray] | None  # the expert's clean plan, published as the commands
    issued: float  # sim time the expert's targets act from
    frame_due: bool


class SimRig(Node):
    """MuJoCo ALOHA rig node (see module docstring)."""

    def __init__(self, node_name: str = 'sim_rig', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.rig = declare_rig(self, default='aloha_sim')
        sim, sizes, servo_bus_dir = self._declare_parameters()
        scene_class = So101Scene if sim.task in SO101_TASKS else SimScene
        self.scene = scene_class(self.rig, task=sim.task, seed=sim.seed)
        # Servo-bus mode: the arm drivers own joint_states, joint_command and e-stop for every arm.
        self.servo_buses: dict[str, SimServoBus] = {}
        self.servo_bus_rig_file = ''
        if is_twin(self.rig):  # the rig file is the drivers' own: buses at its ports, factory-fresh servos
            self.servo_bus_rig_file = str(self.get_parameter('rig').value)
            self.servo_buses = twin_buses(self.rig)
        elif sim.servo_bus:
            check_protocol(sim.servo_bus)
            directory = servo_bus_dir or str(default_directory(self.rig.name))
            self.servo_bus_rig_file = str(write_servo_bus_rig(self.rig, sim.servo_bus, directory))
            for arm in self.rig.arms:
                self.servo_buses[arm.name] = SimServoBus(arm, sim.servo_bus, port_link(directory, arm.name))
        self.cameras = rig_cameras(self.rig, sizes) if self.render_rate_hz > 0 else {}
        self._init_state()
        self._create_publishers()
        self._create_inputs()
        if self.use_expert:
            self._start_expert()
        self._start_threads()
        self.get_logger().info(
            f'sim rig {self.rig.name}: task {self.scene.task}, seed {self.scene.seed}, '
            f'{self.rig.control_rate_hz:g} Hz physics ({self.scene.substeps} substeps), '
            f'cameras {list(self.cameras)} at {self.render_rate_hz:g} Hz, real_time_factor {self.real_time_factor:g}'
        )

    def _param(self, name: str, default: Any, description: str) -> Any:
        return self.declare_parameter(name, default, ParameterDescriptor(description=description)).value

    def _declare_parameters(self) -> tuple[SimConfig, dict[str, tuple[int, int]], str]:
        """Declare and check every parameter: (the sim settings in force, camera sizes, servo_bus_dir).

        The rig's `sim:` block gives the defaults; the parameters override them and are checked by the
        same model (ConfigError naming the parameter). Also sets render rate, real-time factor and expert.
        """
        rig_sim = self.rig.sim or SimConfig()
        param = self._param
        values = {
            'task': str(param('task', rig_sim.task, 'transfer_cube | insertion; SO-101: handover_cube | lift_bar')),
            'seed': int(param('seed', rig_sim.seed, 'episode seed used at start and by sim/reset')),
            'real_time_factor': float(
                param('real_time_factor', float(rig_sim.real_time_factor), '1: real time; 0: as fast as possible')
            ),
            'servo_bus': str(
                param('servo_bus', rig_sim.servo_bus, "'' | feetech | dynamixel: arms as emulated servo buses")
            ),
        }
        try:
            sim = SimConfig.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(self.get_name(), exc)) from None
        self.real_time_factor = sim.real_time_factor
        default_render = max((c.fps for c in self.rig.cameras), default=0.0)
        self.render_rate_hz = float(param('render_rate_hz', float(default_render), 'camera rate in sim time; 0: off'))
        width = int(param('camera_width', 0, 'override every camera width (0: rig value)'))
        height = int(param('camera_height', 0, 'override every camera height (0: rig value)'))
        self.use_expert = bool(param('expert', False, 'drive the arms with the built-in scripted expert'))
        expert = {name: param(name, default, text) for name, _, default, text in EXPERT_PARAMETERS}
        servo_bus_dir = str(param('servo_bus_dir', '', "where the drivers' rig file and pty links go ('': default)"))
        quality = param('jpeg_quality', JPEG_QUALITY, 'JPEG quality of image_raw/compressed (1-100)')
        self.jpeg_quality = check_jpeg_quality(self.get_name(), quality)
        if self.render_rate_hz < 0:
            raise ConfigError(f'render_rate_hz must be >= 0, got {self.render_rate_hz}')
        if width < 0 or height < 0:
            raise ConfigError('camera_width/camera_height must be >= 0')
        try:
            self.expert_options = expert_options(expert)
            self.expert_options.check_task(sim.task)
        except ValueError as exc:
            raise ConfigError(f'{self.get_name()}: expert parameters: {exc}') from None
        sizes = {c.name: (width or c.width, height or c.height) for c in self.rig.cameras}
        return sim, sizes, servo_bus_dir

    def _init_state(self) -> None:
        self._lock = threading.Lock()  # scene state, goals, estop, reset requests
        self._render_request = threading.Condition()  # render snapshot hand-over
        self._estop = False
        self._pending_reset: int | None = None
        self._pending_perturb: list[str] = []
        self._pending_coach: list[str] = []  # sim/expert_coach: subtasks for the expert, applied at the next tick
        # this episode's perturbations: (sim time, kind, object xyz before, after), for eval-sim and diagnostics
        self.perturbations: list[tuple[float, str, list[float], list[float]]] = []
        self._expert: ScriptedExpert | So101Expert | None = None
        self._bus_goals: dict[str, dict[str, float]] = {}  # arm -> joint -> last goal written over its bus
        self._expert_subtask = ''
        self._expert_subtask_update = ''
        self._rejected = 0
        self._commands = 0
        # arm -> its trajectory (sim time); the arm drivers play them instead in servo-bus mode
        self._players = {a.name: TrajectoryPlayer(a.qualified_joint_names()) for a in self.rig.arms}
        self._overruns = 0
        self._frames = 0
        self._frames_dropped = 0
        self._render_ms = 0.0
        self._render_error = ''
        self.camera_faults = CameraFaults()  # fault hook for soak tests: broken cameras on demand
        self._last_success: bool | None = None
        self._next_render = 0.0  # sim time the next frame is due

    def _create_publishers(self) -> None:
        self._clock_pub = self.create_publisher(Clock, topics.CLOCK, topics.CLOCK_QOS)
        if not self.servo_buses:  # with buses, joint_states is the arm drivers' alone
            self._joint_pub = self.create_publisher(JointState, topics.JOINT_STATES, topics.STATE_QOS)
        self._success_pub = self.create_publisher(Bool, topics.SIM_SUCCESS, topics.LATCHED_QOS)
        self._subtask_pub = self.create_publisher(String, topics.SIM_EXPERT_SUBTASK, topics.LATCHED_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)
        self._image_pubs = {
            c: self.create_publisher(Image, topics.camera_image(c), topics.SENSOR_QOS) for c in self.cameras
        }
        self._info_pubs = {
            c: self.create_publisher(CameraInfo, topics.camera_info(c), topics.SENSOR_QOS) for c in self.cameras
        }
        self._compressed_pubs = {  # JPEG for a remote policy, encoded only while subscribed
            c: CompressedPublisher(
                self.create_publisher(CompressedImage, topics.camera_image_compressed(c), topics.SENSOR_QOS),
                self.jpeg_quality,
            )
            for c in self.cameras
        }
        self._infos = {}
        for cam, (w, h) in self.cameras.items():
            cam_id = self.scene.model.camera(cam).id
            self._infos[cam] = camera_info_msg(cam, w, h, float(self.scene.model.cam_fovy[cam_id]))
        self._cmd_echo_pubs = {}
        if self.use_expert:  # the expert's targets, published as the commands a recording holds
            for arm in self.rig.arms:
                self._cmd_echo_pubs[arm.name] = self.create_publisher(
                    JointState, topics.arm_command(arm.name), topics.COMMAND_QOS
                )

    def _create_inputs(self) -> None:
        """Subscriptions, services and the diagnostics timer."""
        if not self.use_expert and not self.servo_buses:
            for arm in self.rig.arms:
                self.create_subscription(
                    JointState,
                    topics.arm_command(arm.name),
                    lambda msg, a=arm.name: self._on_command(a, msg),
                    topics.COMMAND_INPUT_QOS,
                )
                self.create_subscription(
                    JointTrajectory,
                    topics.arm_trajectory(arm.name),
                    lambda msg, a=arm.name: self._on_trajectory(a, msg),
                    topics.TRAJECTORY_QOS,
                )
        subscribe_from_any_publisher(self, Bool, topics.ESTOP, self._on_estop, latched=True)
        subscribe_from_any_publisher(self, Int64, topics.SIM_RESET_SEED, self._on_reset_seed, latched=False)
        subscribe_from_any_publisher(self, String, topics.SIM_PERTURB, self._on_perturb, latched=False)
        subscribe_from_any_publisher(self, String, topics.SIM_EXPERT_COACH, self._on_expert_coach, latched=False)
        self.create_service(Trigger, topics.SIM_RESET, self._on_reset)
        self.create_timer(1.0, self._publish_diagnostics)

    def _start_threads(self) -> None:
        """The render thread (waiting until it rendered or failed), the servo buses, then physics."""
        self._running = True
        self._render_snapshot = snapshot(self.scene.model, self.scene.data)
        self._render_pending = False
        self._render_ready = threading.Event()
        self._render_thread = None
        if self.cameras:
            self._render_thread = threading.Thread(target=self._render_loop, name='sim_rig_render', daemon=True)
            self._render_thread.start()
            if not self._render_ready.wait(30.0) or self._render_error:
                self._running = False
                raise RuntimeError(f'sim_rig: the renderer did not start: {self._render_error or "timeout"}')
        for name, bus in self.servo_buses.items():
            pty = bus.start(self.scene.joint_positions(name))
            self.get_logger().info(f'arm {name}: emulated {bus.protocol} servo bus on {pty} (linked as {bus.link})')
        if self.servo_buses:
            self.get_logger().info(
                f'servo-bus mode: start one arm_driver per arm with rig:={self.servo_bus_rig_file} '
                f'(arms {list(self.servo_buses)}); they publish joint_states and follow joint_command and e-stop'
            )
            if self.real_time_factor != 1.0:
                self.get_logger().warning(
                    f'servo-bus mode with real_time_factor {self.real_time_factor:g}: the drivers run on wall time, '
                    'so the arms follow commands more slowly (in sim time) than at real time'
                )
        self._physics_thread = threading.Thread(target=self._physics_loop, name='sim_rig_physics', daemon=True)
        self._physics_thread.start()

    # ------------------------------------------------------------------ inputs

    def _on_command(self, arm: str, msg: JointState) -> None:
        amap = self.scene.arms[arm]
        expected = amap.config.qualified_joint_names()
        try:
            if not msg.name:
                targets = list(msg.position)
            else:
                if len(msg.name) != len(msg.position):
                    raise ValueError(f'{len(msg.name)} names but {len(msg.position)} positions')
                unknown = [n for n in msg.name if n not in expected]
                if unknown:
                    raise ValueError(f'unknown joint(s) {unknown}; expected names from {expected}')
                prefix = len(arm) + 1
                targets = {n[prefix:]: p for n, p in zip(msg.name, msg.position, strict=True)}
            with self._lock:
                if self._estop:
                    return
                self.scene.command(arm, targets)
                self._commands += 1
                self._players[arm].clear('command')  # the newest source wins
        except ValueError as exc:
            self._rejected += 1
            self.get_logger().warning(f'arm {arm}: joint_command rejected: {exc}', throttle_duration_sec=2.0)

    def _on_trajectory(self, arm: str, msg: JointTrajectory) -> None:
        """Splice a trajectory in at sim time; refused (counted, logged) while e-stopped, like a command."""
        player = self._players[arm]
        try:
            with self._lock:
                if self._estop and msg.points:
                    player.counters['rejected'] += 1
                    player.counters['rejected_estop'] += 1
                    return
                player.submit(Trajectory.from_message(msg), self.scene.time, list(self.scene.goal(arm)))
        except TrajectoryRejected as exc:
            self.get_logger().warning(
                f'arm {arm}: joint_trajectory rejected ({exc.reason}): {exc}', throttle_duration_sec=2.0
            )

    def _play_trajectories(self) -> None:
        """Each arm's trajectory at this tick's sim time becomes its goal (sim lock held)."""
        for arm, player in self._players.items():
            sample = player.sample(self.scene.time) if player.active and not self._estop else None
            if sample is None:
                continue
            names = self.scene.arms[arm].config.joint_names
            self.scene.command(
                arm, {n: float(v) for n, v in zip(names, sample.positions, strict=True) if math.isfinite(v)}
            )

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if msg.data:
                for player in self._players.values():
                    player.clear('estop')
            if self.servo_buses:  # servos know nothing of e-stops: the arm drivers stop writing goals
                self._estop = bool(msg.data)
            elif msg.data and not self._estop:
                self.scene.hold()
                self.get_logger().warning('e-stop: holding the current pose')
            elif not msg.data and self._estop:
                self.get_logger().info('e-stop released: following new commands')
            self._estop = bool(msg.data)

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        seed = int(self.get_parameter('seed').value)
        with self._lock:
            self._pending_reset = seed
        response.success = True
        response.message = f'reset to task {self.scene.task} seed {seed} at the next tick'
        return response

    def _on_reset_seed(self, msg: Int64) -> None:
        with self._lock:
            self._pending_reset = int(msg.data)

    def _on_perturb(self, msg: String) -> None:
        kind = msg.data.strip()
        if kind not in PERTURBATIONS:
            self.get_logger().error(f'{topics.SIM_PERTURB}: unknown perturbation {kind!r}; choose from {PERTURBATIONS}')
            return
        with self._lock:
            self._pending_perturb.append(kind)

    def _on_expert_coach(self, msg: String) -> None:
        with self._lock:
            self._pending_coach.append(msg.data.strip())

    def _start_expert(self) -> None:
        if self.scene.task in SO101_TASKS:  # the SO-101 twin's expert takes the DART noise alone (check_task)
            self._expert = So101Expert(self.rig, self.scene.task, self.scene.seed, self.expert_options.noise_rad)
            return
        self._expert = ScriptedExpert(self.rig, self.scene.task, self.scene.seed, options=self.expert_options)

    # ------------------------------------------------------------------ physics

    def _physics_loop(self) -> None:
        try:
            self._physics_ticks()
        except Exception as exc:  # rclpy shut down under us (Ctrl-C): stop quietly; anything else: say so
            if self.context.ok() and self._running:
                self.get_logger().error(f'physics thread stopped: {type(exc).__name__}: {exc}')
            self._running = False
            with self._render_request:
                self._render_request.notify_all()

    def _physics_ticks(self) -> None:
        dt = self.scene.control_dt
        render_period = 1.0 / self.render_rate_hz if self.cameras else math.inf
        wall_next = time.monotonic()
        tick = 0
        while self._running:
            with self._lock:
                step = self._step_locked(render_period)
            self._publish_tick(step, tick, dt)
            tick += 1
            if step.frame_due and self.real_time_factor == 0:
                with self._render_request:  # lockstep: every frame rendered when not real time
                    self._render_request.wait_for(lambda: not self._render_pending or not self._running, 10.0)
            if self.real_time_factor > 0:
                wall_next += dt / self.real_time_factor
                delay = wall_next - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -0.25:  # far behind (loaded machine): resynchronise instead of bursting
                    self._overruns += 1
                    wall_next = time.monotonic()

    def _step_locked(self, render_period: float) -> _Tick:
        """One physics tick under the sim lock: a pending reset, the expert's targets, the step, a frame due."""
        if self._pending_reset is not None:
            self._reset_locked(self._pending_reset)
        while self._pending_perturb:
            self._perturb_locked(self._pending_perturb.pop(0))
        while self._pending_coach:
            self._coach_expert_locked(self._pending_coach.pop(0))
        due = self._expert.replan_due if isinstance(self._expert, ScriptedExpert) else None
        if due is not None and self.scene.steps >= due:  # a coached move ended: the task again from here
            self._replan_expert_locked()
        expert_targets = None
        issued = self.scene.time  # the expert's targets act from now until the next tick
        if self._expert is not None and not self._estop:
            self._expert.observe(self.scene.steps, lambda: self.scene.object_pose('red_box_joint')[:3])
            expert_targets, subtask = self._expert.act(self.scene.steps)
            if not self.servo_buses:  # with buses, the drivers carry the published targets
                # executed with the DART offsets (if any); the clean plan is what gets published
                offsets = self._expert.offsets(self.scene.steps)
                for arm, target in expert_targets.items():
                    self.scene.command(arm, target + offsets[arm])
            self._expert_subtask_update = subtask
        self._apply_servo_buses()
        self._play_trajectories()
        self.scene.step()
        sim_time = self.scene.time
        states = {
            a: (self.scene.joint_positions(a), self.scene.joint_velocities(a), self.scene.joint_efforts(a))
            for a in self.scene.arms
        }
        # No cameras (render_rate_hz 0): no renderer thread, so never hand it (or wait for) a frame.
        frame_due = bool(self.cameras) and sim_time + 1e-9 >= self._next_render
        if frame_due:
            self._next_render += render_period
            with self._render_request:
                if self._render_pending:
                    self._frames_dropped += 1
                else:
                    snapshot(self.scene.model, self.scene.data, self._render_snapshot)
                    self._render_pending = True
                    self._render_request.notify()
        return _Tick(sim_time, states, self.scene.success, expert_targets, issued, frame_due)

    def _perturb_locked(self, kind: str) -> None:
        """Apply a perturbation (sim lock held), seeded by the episode's seed and how many came before it."""
        rng = perturbation_rng(self.scene.seed, len(self.perturbations))
        before, after = (np.round(p[:3], 4).tolist() for p in self.scene.perturb(kind, rng))
        self.perturbations.append((round(self.scene.time, 3), kind, before, after))
        self.get_logger().info(f'perturbation {kind} at {self.scene.time:.2f} s: object {before} -> {after}')
        if isinstance(self._expert, ScriptedExpert):  # the expert drives: it retries from here, labels and all
            self._replan_expert_locked()

    def _replan_expert_locked(self) -> None:
        """The ALOHA expert plans the task again from this tick, the objects where they are now (sim lock held)."""
        self._expert.replan(self.scene.steps, {name: self.scene.object_pose(name) for name in self._expert.poses})

    def _coach_expert_locked(self, subtask: str) -> None:
        """The expert does `subtask` now (sim lock held), then the task again: see ScriptedExpert.follow."""
        if not isinstance(self._expert, ScriptedExpert):
            self.get_logger().error(f'{topics.SIM_EXPERT_COACH}: no expert here that can follow {subtask!r}')
            return
        try:
            self._expert.follow(self.scene.steps, subtask)
        except ValueError as exc:
            self.get_logger().error(f'{topics.SIM_EXPERT_COACH}: {exc}')
            return
        self.get_logger().info(f'expert coached at {self.scene.time:.2f} s: {subtask}')

    def _reset_locked(self, seed: int) -> None:
        """Restart the episode at `seed` (sim lock held): servos power-cycled, the expert planned again."""
        self.scene.reset(seed)
        self._pending_reset = None
        self._pending_perturb.clear()
        self._pending_coach.clear()
        self.perturbations = []  # this episode's: each seeded by the episode seed and its index
        for player in self._players.values():
            player.clear('reset')
        for bus in self.servo_buses.values():
            bus.take_goals()  # goals aimed at the old episode's pose
            bus.power_cycle()
        self._bus_goals.clear()
        self._next_render = 0.0
        self._last_success = None
        if self.use_expert:
            self._start_expert()
        self.get_logger().info(f'episode reset: seed {self.scene.seed}')

    def _publish_tick(self, step: _Tick, tick: int, dt: float) -> None:
        """Clock, joint states (or the servo buses' positions), the expert's commands and subtask, success."""
        stamp = sec_to_stamp(step.sim_time)
        self._clock_pub.publish(Clock(clock=stamp))
        for arm, bus in self.servo_buses.items():  # outside the sim lock: never held with the emulator's
            bus.publish_positions(step.states[arm][0])
            if bus.factory_fresh:  # the twin's servos report the simulated torque as present load
                bus.publish_loads(So101Scene.load_fractions(step.states[arm][2]))
        for arm, (pos, vel, eff) in ({} if self.servo_buses else step.states).items():  # bus mode: drivers publish
            msg = JointState(
                name=self.scene.arms[arm].config.qualified_joint_names(),
                position=pos.tolist(),
                velocity=vel.tolist(),
                effort=eff.tolist(),
            )
            msg.header.stamp = stamp
            self._joint_pub.publish(msg)
        if step.expert_targets is not None:
            for arm, target in step.expert_targets.items():
                cmd = JointState(name=self.scene.arms[arm].config.qualified_joint_names(), position=list(target))
                # Stamped when issued, as a real rig records its commands: a sample at t pairs the state at t
                # with the command that acts from t. collect.json says so (`command_stamps: issued`); a
                # format 1 file without that key describes commands stamped a tick late, after the step.
                cmd.header.stamp = sec_to_stamp(step.issued)
                self._cmd_echo_pubs[arm].publish(cmd)
            if self._expert_subtask_update != self._expert_subtask:
                self._expert_subtask = self._expert_subtask_update
                self._subtask_pub.publish(String(data=self._expert_subtask))
        if step.success != self._last_success or tick % max(1, round(1.0 / dt)) == 0:
            self._last_success = step.success
            self._success_pub.publish(Bool(data=step.success))

    def _apply_servo_buses(self) -> None:
        """Goals written over each bus become joint targets; joints with torque off go limp.

        Limp: the joint's target follows its measured position every tick, so gravity and
        contacts move it, the nearest a position-actuated model gets to an unpowered servo.
        While the expert drives (not under e-stop), its DART offsets are added here, where a servo
        turns its goal into motion: the drivers write, and the bag records, the clean plan, and the
        servos report where the arm really is (sim/dart.py). Called with the sim lock held.
        """
        dart = self._expert.offsets(self.scene.steps) if self._expert is not None and not self._estop else None
        for arm, bus in self.servo_buses.items():
            bus.update()
            goals = bus.take_goals()
            last = self._bus_goals.setdefault(arm, {})
            last.update(goals)
            limp = bus.torque_off()
            if dart is not None and np.any(dart[arm]):
                names = self.scene.arms[arm].config.joint_names
                goals = {n: last[n] + float(dart[arm][i]) for i, n in enumerate(names) if n in last and n not in limp}
            if limp:
                current = self.scene.joint_positions(arm)
                names = self.scene.arms[arm].config.joint_names
                goals.update({name: float(current[names.index(name)]) for name in limp})
            if goals:
                self.scene.command(arm, goals)

    def unplug_servo_bus(self, arm: str) -> None:
        """Fault hook for soak tests: the arm's serial port vanishes (pty closed, link removed), as when unplugged."""
        self.servo_buses[arm].stop()

    def replug_servo_bus(self, arm: str) -> None:
        """Fault hook: the port comes back on a new pty, the servos powered up holding the present pose.

        Under the sim lock, so no physics tick sees the servos between power-down (torque off: EEPROM
        writable, as a Dynamixel needs) and power-up.
        """
        bus = self.servo_buses[arm]
        with self._lock:
            for servo_id in bus.ids:
                bus.emulator.servo(servo_id).write_register('torque_enable', 0)
            bus.start(self.scene.joint_positions(arm))

    # ------------------------------------------------------------------ render

    def _render_loop(self) -> None:
        try:
            renderer = SceneRenderer(self.scene.model, self.cameras)
        except Exception as exc:  # no EGL, bad size...: report it to the constructor
            self._render_error = f'{type(exc).__name__}: {exc}'
            self._render_ready.set()
            return
        self._render_ready.set()
        try:
            while self._running:
                with self._render_request:
                    self._render_request.wait_for(lambda: self._render_pending or not self._running, 0.5)
                    if not self._render_pending:
                        continue
                t0 = time.perf_counter()
                # physics does not touch the snapshot while _render_pending is set
                data = self._render_snapshot
                stamp = sec_to_stamp(float(data.time))
                for cam, (w, h) in self.cameras.items():
                    pixels = renderer.render(data, cam)
                    img = Image(height=h, width=w, encoding='rgb8', is_bigendian=0, step=w * 3)
                    img.header.stamp = stamp
                    img.header.frame_id = topics.camera_frame(cam)
                    img.data = pixels.tobytes()
                    img = self.camera_faults.apply(cam, img)
                    info = self._infos[cam]
                    info.header.stamp = stamp if img is None else img.header.stamp
                    if not self.context.ok():
                        break
                    if img is None:  # camera_faults: an unplugged camera publishes nothing
                        continue
                    self._image_pubs[cam].publish(img)
                    self._info_pubs[cam].publish(info)
                    if self._compressed_pubs[cam].wanted():
                        self._compressed_pubs[cam].publish(image_to_rgb(img), img.header)
                self._render_ms = 0.9 * self._render_ms + 0.1 * (time.perf_counter() - t0) * 1e3
                self._frames += 1
                with self._render_request:
                    self._render_pending = False
                    self._render_request.notify_all()
        except Exception as exc:  # rclpy shut down under us (Ctrl-C): stop quietly; anything else: say so
            if self.context.ok() and self._running:
                self._render_error = f'{type(exc).__name__}: {exc}'
                self.get_logger().error(f'render thread stopped: {self._render_error}')
        finally:
            renderer.close()
            with self._render_request:
                self._render_pending = False
                self._render_request.notify_all()

    # ------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        with self._lock:
            values = {
                'task': self.scene.task,
                'seed': self.scene.seed,
                'sim_time_s': self.scene.time,
                'reward_stage': self.scene.reward,
                'max_reward': MAX_REWARD,
                'max_stage_this_episode': self.scene.max_reward_reached,
                'stage': self.scene.stage_name(),
                'success': self.scene.success,
                'estop': self._estop,
                'commands_accepted': self._commands,
                'commands_rejected': self._rejected,
                **{
                    f'trajectory_{arm}_{key}': value
                    for arm, player in self._players.items()
                    for key, value in sorted(player.counters.items())
                },
                'pacing_overruns': self._overruns,
                'frames_rendered': self._frames,
                'frames_dropped': self._frames_dropped,
                'render_ms_all_cameras': self._render_ms,
                'real_time_factor': self.real_time_factor,
            }
            if self._expert is not None:
                values['expert_subtask'] = self._expert_subtask
            if self.servo_buses:
                values['servo_bus_rig'] = self.servo_bus_rig_file
                for arm, bus in self.servo_buses.items():
                    values[f'servo_bus_{arm}_port'] = f'{bus.link} -> {bus.port}'
                    values[f'servo_bus_{arm}_instructions'] = bus.emulator.instructions_received
                    values[f'servo_bus_{arm}_goals'] = bus.goals_received
                    values[f'servo_bus_{arm}_torque_off'] = ','.join(bus.torque_off()) or '-'
        level, message = OK, f'stage {values["reward_stage"]}/{MAX_REWARD}: {values["stage"]}'
        if self._estop:
            level, message = WARN, 'e-stop: holding' if not self.servo_buses else 'e-stop (held by the arm drivers)'
        if self._render_thread is not None and not self._render_thread.is_alive() and self._running:
            level, message = ERROR, f'render thread stopped {self._render_error}'
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status.append(diagnostic_status(f'{self.get_name()}: sim', level, message, values, self.rig.name))
        self._diag_pub.publish(msg)

    def destroy_node(self) -> None:
        self._running = False
        request = getattr(self, '_render_request', None)  # absent if the constructor failed early
        if request is not None:
            with request:
                request.notify_all()
        for thread in (getattr(self, '_physics_thread', None), getattr(self, '_render_thread', None)):
            if thread is not None and thread.is_alive():
                thread.join(5.0)
        for bus in getattr(self, 'servo_buses', {}).values():
            bus.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node('sim_rig', SimRig, args, startup_errors=(ConfigError, RuntimeError))
