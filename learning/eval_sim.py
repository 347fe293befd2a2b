"""Closed-loop evaluation of a checkpoint on the simulated rig, through the real topics.

`sim_rig` (the MuJoCo ALOHA scene, no expert) and `policy_node` (the checkpoint, enabled) run as
`bimanual-vla run --rig aloha_sim` brings them up (the simulator in this process, the policy node in
a process of its own); an observer node on the same graph measures what a person watching the
topics would:

* success: reward stage 4 (transfer_cube: the left gripper holds the cube off the table) at the
  end of the episode, which ends `settle_s` after the stage is first reached or at `max_sim_s`;
  the highest stage reached and the final stage are reported per episode;
* subtask agreement: the scripted expert is planned for the same seed (it is not driving) and its
  label at each sim tick is compared with the policy's subtask in force at that tick (the last
  `policy/reasoning` text), and, per inference, the subtask the model wrote for an observation
  (`policy/markers` text, stamped with the observation time) with the expert's label at that time;
* pace: after each episode the expert is replayed on its seed (physics only) and the policy's
  first-reach time of each reward stage is compared with the expert's;
* aligned agreement: the policy's measured joints are aligned by DTW with the expert's replay
  (`bimanual_vla.learning.alignment`), and each tick's subtask compared with the expert's label
  at the step the arms are at. This tells a wrong text from a different pace. The same aligned
  labels scored against the expert's clock give the ceiling that the episode's pace puts on
  the per-tick agreement, whatever the text says;
* command safety: every `arms/<arm>/joint_command` is checked to be finite and within the rig's
  joint limits;
* one episode (the first) as a video and a contact sheet with the policy's subtask and the
  expert's label drawn on (`bimanual_vla.learning.episode_video`).

Episodes: the policy is disabled (`policy/enable` false), the sim reset to the episode's seed
(`sim/reset_seed`), and the policy enabled again once a camera frame of the new episode has
arrived, so every episode starts from the same state as the expert's. Expert labels are aligned to
sim time since the reset: the policy's start-up latency counts against it.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int64, String
from std_srvs.srv import SetBool
from visualization_msgs.msg import MarkerArray

from bimanual_vla import topics
from bimanual_vla.config import RigConfig, load_rig
from bimanual_vla.learning.collect import TASK_TEXT
from bimanual_vla.learning.episode_video import EpisodeRecorder
from bimanual_vla.ros_utils import stamp_to_sec

if TYPE_CHECKING:
    from bimanual_vla.sim.expert import ScriptedExpert


@dataclass
class EpisodeReport:
    index: int
    seed: int
    success: bool = False
    max_stage: int = 0
    final_stage: int = 0
    sim_time_s: float = 0.0
    first_success_s: float | None = None
    stage_first_s: dict[str, float] = field(default_factory=dict)  # sim time each reward stage was first reached
    expert_stage_first_s: dict[str, float] = field(default_factory=dict)  # the same, the expert on this seed
    ticks: int = 0
    subtask_agreement_steps: float | None = None  # fraction of ticks whose subtask equals the expert's
    subtask_agreement_inferences: float | None = None  # fraction of inferences naming the expert's label
    # ticks whose subtask is the expert's label at the step of its own run the arms are at (see trajectory_alignment)
    subtask_agreement_aligned: float | None = None
    # the agreement with the expert's clock that text naming exactly those aligned labels would score:
    # the ceiling this episode's pace puts on subtask_agreement_steps
    subtask_agreement_steps_ceiling: float | None = None
    # sim seconds from an observation to the new subtask the model wrote on it reaching the observer
    # (policy/reasoning; median, 90th pct; over the inferences that changed the text), and from every
    # observation to its chunk (its markers): the machine's speed as the closed loop feels it. The pace,
    # and so the clock agreement, depend on it
    observation_to_subtask_s: dict[str, float] = field(default_factory=dict)
    observation_to_chunk_s: dict[str, float] = field(default_factory=dict)
    inferences: int = 0
    subtasks: list[str] = field(default_factory=list)
    # [sim time, policy subtask in force, expert label] at every tick where either changes
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    wall_s: float = 0.0


def normalise_text(text: str) -> str:
    return ' '.join(text.lower().replace('[coach]', '').split())


class EvalObserver(Node):
    """Watches the graph: sim clock, the policy's subtasks, success, commands and (for video) cameras."""

    def __init__(self, rig: RigConfig, **kwargs) -> None:
        super().__init__('eval_observer', **kwargs)
        self.rig = rig
        self._lock = threading.Lock()
        self.sim_time = -1.0
        self.reset_seen = threading.Event()
        self._await_reset = False
        self.frame_after_reset = threading.Event()
        self.success = False
        self.reasoning = ''
        self.expert_labels: list[str] = []
        self.joint_names = [f'{a.name}_{j.name}' for a in rig.arms for j in a.joints]
        self._q = np.full(len(self.joint_names), np.nan)
        self.dt = 1.0 / rig.control_rate_hz
        # (sim time, policy subtask, expert label at that time, measured joints in joint_names order)
        self.tick_log: list[tuple[float, str, str, np.ndarray]] = []
        # (observation stamp, sim time its marker arrived, policy subtask, expert label at the stamp)
        self.inference_log: list[tuple[float, float, str, str]] = []
        # (observation stamp, sim time its new subtask arrived on policy/reasoning), for each inference that
        # changed the text; the node publishes it before the chunk and its markers
        self.subtask_changes: list[tuple[float, float]] = []
        self._reasoning_at = 0.0
        self._last_marker_text = ''
        # a new subtask whose marker came before its policy/reasoning message (observation stamp, text):
        # the two are separate topics, and under load DDS may deliver them in either order
        self._marker_ahead: tuple[float, str] | None = None
        self.recording = False
        self.video = False
        self.recorder = EpisodeRecorder(height=240)
        self._images: dict[str, np.ndarray] = {}
        self._next_video_t = 0.0
        self.video_fps = 10.0
        self.command_count = 0
        self.command_violations: list[str] = []
        self._limits = {f'{a.name}_{j.name}': (j.lower, j.upper) for a in rig.arms for j in a.joints}  # qualified names
        self.create_subscription(Clock, topics.CLOCK, self._on_clock, topics.CLOCK_QOS)
        self.create_subscription(String, topics.POLICY_REASONING, self._on_reasoning, topics.LATCHED_QOS)
        self.create_subscription(MarkerArray, topics.POLICY_MARKERS, self._on_markers, topics.RELIABLE_QOS)
        self.create_subscription(Bool, topics.SIM_SUCCESS, self._on_success, topics.LATCHED_QOS)
        self._col = {n: i for i, n in enumerate(self.joint_names)}
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, topics.SENSOR_QOS)
        for arm in rig.arms:
            self.create_subscription(JointState, topics.arm_command(arm.name), self._on_command, topics.COMMAND_QOS)
        for cam in rig.cameras:
            self.create_subscription(
                Image, topics.camera_image(cam.name), lambda m, c=cam.name: self._on_image(c, m), topics.SENSOR_QOS
            )
        self.task_pub = self.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS)
        self.reset_pub = self.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
        self.enable_client = self.create_client(SetBool, topics.POLICY_ENABLE)

    # ------------------------------------------------------------------ callbacks

    def expert_label(self, t: float) -> str:
        if not self.expert_labels:
            return ''
        k = min(max(int(round(t / self.dt)) - 1, 0), len(self.expert_labels) - 1)
        return self.expert_labels[k]

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            for name, value in zip(msg.name, msg.position, strict=False):
                if name in self._col:
                    self._q[self._col[name]] = value

    def _on_clock(self, msg: Clock) -> None:
        now = stamp_to_sec(msg.clock)
        with self._lock:
            previous, self.sim_time = self.sim_time, now
            if self._await_reset and now < previous:
                self._await_reset = False
                self.success = False
                self.tick_log = []
                self.inference_log = []
                self.subtask_changes = []
                self._last_marker_text = ''
                self._marker_ahead = None
                self.reset_seen.set()
                return
            if self.recording:
                self.tick_log.append((now, self.reasoning, self.expert_label(now), self._q.copy()))

    def _on_reasoning(self, msg: String) -> None:
        with self._lock:
            self.reasoning = msg.data
            self._reasoning_at = self.sim_time
            ahead, self._marker_ahead = self._marker_ahead, None
            if ahead is not None and ahead[1] == msg.data and self.recording:
                self.subtask_changes.append((ahead[0], self._reasoning_at))

    def _on_markers(self, msg: MarkerArray) -> None:
        for marker in msg.markers:
            if marker.ns == 'reasoning' and marker.text:
                t = stamp_to_sec(marker.header.stamp)
                with self._lock:
                    if self.recording:
                        self.inference_log.append((t, self.sim_time, marker.text, self.expert_label(t)))
                        changed, self._last_marker_text = marker.text != self._last_marker_text, marker.text
                        if changed and self.reasoning == marker.text and self._reasoning_at >= t - 1e-9:
                            self.subtask_changes.append((t, self._reasoning_at))
                        elif changed:  # its text has not arrived yet: timed when it does (_on_reasoning)
                            self._marker_ahead = (t, marker.text)

    def _on_success(self, msg: Bool) -> None:
        with self._lock:
            self.success = bool(msg.data)

    def _on_command(self, msg: JointState) -> None:
        self.command_count += 1
        for name, value in zip(msg.name, msg.position, strict=False):
            lo, hi = self._limits.get(name, (-math.inf, math.inf))
            if not math.isfinite(value) or value < lo - 1e-9 or value > hi + 1e-9:
                if len(self.command_violations) < 20:
                    self.command_violations.append(f'{name}={value}')

    def _on_image(self, camera: str, msg: Image) -> None:
        t = stamp_to_sec(msg.header.stamp)
        if self.reset_seen.is_set() and t <= self.sim_time + 1e-6:
            self.frame_after_reset.set()  # a frame of the new episode (not one rendered before the reset)
        if not (self.recording and self.video) or msg.encoding != 'rgb8':
            return
        image = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        with self._lock:
            self._images[camera] = image
            if len(self._images) == len(self.rig.cameras) and t >= self._next_video_t:
                self._next_video_t = t + 1.0 / self.video_fps
                lines = [
                    f'policy: {self.reasoning or "-"}',
                    f'expert: {self.expert_label(t)}',
                    f't = {t:5.2f} s   success: {"yes" if self.success else "not yet"}',
                ]
                self.recorder.add(dict(self._images), lines)

    # ------------------------------------------------------------------ episode control

    def expect_reset(self) -> None:
        with self._lock:
            self._await_reset = True
            self.reset_seen.clear()
            self.frame_after_reset.clear()

    def start_recording(self, video: bool) -> None:
        with self._lock:
            self.recording = True
            self.video = video
            self._images = {}
            self._next_video_t = 0.0

    def stop_recording(self) -> None:
        with self._lock:
            self.recording = False


def _call_enable(observer: EvalObserver, value: bool, timeout_s: float = 10.0) -> None:
    if not observer.enable_client.wait_for_service(timeout_sec=timeout_s):
        raise RuntimeError('policy/enable service not available')
    future = observer.enable_client.call_async(SetBool.Request(data=value))
    deadline = time.monotonic() + timeout_s
    while not future.done():
        if time.monotonic() > deadline:
            raise RuntimeError(f'policy/enable({value}) did not answer within {timeout_s} s')
        time.sleep(0.01)
    if value and not future.result().success:
        raise RuntimeError(f'policy/enable refused: {future.result().message}')


def evaluate_closed_loop(
    checkpoint: Path,
    out: Path,
    *,
    episodes: int = 50,
    seed: int = 1000,
    task: str = 'transfer_cube',
    rig_name: str = 'aloha_sim',
    max_sim_s: float = 12.0,
    settle_s: float = 1.0,
    real_time_factor: float = 1.0,
    num_steps: int | None = None,
    torch_threads: int | None = 1,
    video_episodes: int = 1,
    progress: bool = True,
    policy: str = 'default',
    tick_log: bool = False,
    policy_process: bool = True,
    narrate_expert: bool = False,
    expert_pace: bool = True,
    expert_approach: str | None = None,
) -> dict:
    """Run `episodes` closed-loop episodes (seeds seed..), write OUT/report.json + video; return the report.

    `tick_log`: also write OUT/ticks.jsonl, a line per episode with every tick (sim time, policy
    subtask, expert label, aligned expert label, measured joints) and every inference (observation
    stamp, arrival time, subtask, expert label, aligned label), for timing analyses the report's
    summary cannot answer.
    `policy_process`: run policy_node in a child process of its own, as the launch files do (see
    bimanual_vla/bringup/node_process.py); False composes it with the simulator in this process.
    `narrate_expert`: the scripted expert drives the arms and the policy, never enabled, only writes
    its subtasks (preview mode). The agreement then measures the reasoning head on the expert's own
    motion, latency included, without the differences in pace a closed loop brings; success and
    stages are the expert's.
    `expert_pace`: after each episode, replay the scripted expert on its seed (physics only, ~1 s)
    and report how much sooner or later the policy reached each reward stage than the expert did,
    and the aligned agreement and its ceiling (module docstring). The expert's labels follow its
    clock, so the policy's pace bounds the agreement it can reach with them.
    `expert_approach`: how the expert (labels, replay, narrated motion) moves above the cube
    (sim/expert.py, APPROACHES). None: the way the checkpoint's training data did
    (`expert_approach` in its bimanual_vla.json), else 'joint'. The labels follow the same clock
    either way; the replay the policy's motion is aligned with should be the motion it learned.
    """
    import rclpy

    from bimanual_vla.bringup.compose import OWN_PROCESS, compose
    from bimanual_vla.bringup.nodes import rig_nodes
    from bimanual_vla.sim.expert import APPROACHES, ScriptedExpert

    checkpoint = Path(checkpoint).expanduser().resolve()
    approach = expert_approach or _trained_approach(checkpoint) or 'joint'
    if approach not in APPROACHES:
        raise ValueError(f"expert_approach must be 'joint' or 'cartesian', got {approach!r}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rig = load_rig(rig_name)
    policy_overrides: dict = {
        'enabled': False,
        'checkpoint': str(checkpoint),
        'policy': _policy_file(out, policy, num_steps, torch_threads),
    }
    specs = rig_nodes(
        rig_name,
        policy=policy,
        sim_overrides={
            'task': task,
            'seed': seed,
            'real_time_factor': real_time_factor,
            'expert': narrate_expert,
            'expert_approach': approach,
        },
        policy_overrides=policy_overrides,
    )
    started = time.monotonic()
    reports: list[EpisodeReport] = []
    latencies: list[float] = []  # every change of subtask: observation to its text, sim seconds
    chunk_latencies: list[float] = []  # every inference: observation to its chunk
    context = rclpy.Context()
    rclpy.init(context=context)
    composition = None
    stop = threading.Event()
    spinner = None
    try:
        observer = EvalObserver(rig, context=context, parameter_overrides=[Parameter('use_sim_time', value=True)])
        observer.task_pub.publish(String(data=TASK_TEXT[task]))
        composition = compose(
            specs,
            rig=rig_name,
            context=context,
            extra_nodes=[observer],
            own_process=OWN_PROCESS if policy_process else (),
        )
        sim = composition.node('sim_rig')
        spinner = threading.Thread(target=composition.spin, kwargs={'until': stop.is_set}, daemon=True)
        spinner.start()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=episodes, unit='episode', desc='eval-sim')
        for i in range(episodes):
            ep_seed = seed + i
            wall0 = time.monotonic()
            report = EpisodeReport(index=i, seed=ep_seed)
            _call_enable(observer, False)
            expert = ScriptedExpert(rig, task, ep_seed, approach=approach)
            observer.expert_labels = expert.labels
            observer.expect_reset()
            observer.reset_pub.publish(Int64(data=ep_seed))
            if not observer.reset_seen.wait(30.0) or not observer.frame_after_reset.wait(30.0):
                raise RuntimeError(f'episode {i}: the sim did not reset to seed {ep_seed}')
            observer.start_recording(video=i < video_episodes)
            if not narrate_expert:
                _call_enable(observer, True)
            first_success = None
            while True:
                now = observer.sim_time
                _note_stages(sim, report, now)
                if observer.success and first_success is None:
                    first_success = now
                if not observer.success:
                    first_success = None
                if first_success is not None and now - first_success >= settle_s:
                    break
                if now >= max_sim_s:
                    break
                if not spinner.is_alive():
                    raise RuntimeError('the executor stopped')
                composition.check_children()
                time.sleep(0.01)
            _call_enable(observer, False)
            observer.stop_recording()
            _note_stages(sim, report, observer.sim_time)
            with sim._lock:
                report.max_stage = int(sim.scene.max_reward_reached)
                report.final_stage = int(sim.scene.reward)
                report.success = bool(sim.scene.success)
            report.first_success_s = first_success
            report.sim_time_s = round(observer.sim_time, 3)
            ticks = list(observer.tick_log)
            infs = list(observer.inference_log)
            changes = list(observer.subtask_changes)
            aligned = None
            if expert_pace:
                # the expert on this seed, physics only (~1 s): its pace and the motion the ticks are aligned with
                replay = replay_expert(expert)
                report.expert_stage_first_s = replay.stage_first_s
                aligned = aligned_labels(ticks, replay, rig)
            _score_subtasks(report, ticks, infs, aligned)
            delays = [at - t for t, at in changes]
            chunk_delays = [at - t for t, at, *_ in infs]
            report.observation_to_subtask_s = _latency_percentiles(delays)
            report.observation_to_chunk_s = _latency_percentiles(chunk_delays)
            latencies.extend(delays)
            chunk_latencies.extend(chunk_delays)
            if tick_log:
                with open(out / 'ticks.jsonl', 'a' if i else 'w') as f:
                    f.write(json.dumps(_tick_log_line(report, ticks, infs, aligned, changes)) + '\n')
            report.wall_s = round(time.monotonic() - wall0, 2)
            reports.append(report)
            if bar is not None:
                bar.set_postfix(success=f'{sum(r.success for r in reports)}/{len(reports)}')
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        stop.set()
        if spinner is not None:
            spinner.join(10.0)
        if composition is not None:
            composition.shutdown()
        if context.ok():
            rclpy.shutdown(context=context)
    outputs = {}
    if observer.recorder.frames:
        outputs['video'] = str(observer.recorder.write_video(out / 'episode.mp4', fps=observer.video_fps))
        outputs['contact_sheet'] = str(observer.recorder.write_contact_sheet(out / 'contact_sheet.png', count=12))
    report = summarise(reports, checkpoint, task, seed, real_time_factor, observer, outputs, latencies, chunk_latencies)
    report['policy_in_own_process'] = policy_process
    report['driver'] = 'expert (the policy narrates)' if narrate_expert else 'policy'
    report['expert_approach'] = approach
    report['wall_s'] = round(time.monotonic() - started, 1)
    (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    return report


def _changes(ticks: list[tuple[float, str, str, np.ndarray]]) -> list[tuple[float, str, str]]:
    """The ticks where the policy's subtask or the expert's label changes: where they disagree, at a glance."""
    out: list[tuple[float, str, str]] = []
    for t, policy, expert, _ in ticks:
        if not out or (policy, expert) != out[-1][1:]:
            out.append((round(t, 2), policy, expert))
    return out


def _trained_approach(checkpoint: Path) -> str | None:
    """The expert approach the checkpoint's training data used (its metadata), None if not recorded."""
    from bimanual_vla.policy_node.checkpoint import read_metadata

    return read_metadata(checkpoint).expert_approach


@dataclass
class ExpertReplay:
    """The scripted expert played on one seed: when it reached each stage, its measured joints, its labels."""

    stage_first_s: dict[str, float]
    joints: np.ndarray  # (steps, joints) measured after each step, EvalObserver.joint_names order
    labels: list[str]  # its label at each step


def replay_expert(expert: ScriptedExpert) -> ExpertReplay:
    """Play a planned ScriptedExpert on its seed in-process (physics only, no rendering, ~1 s)."""
    from bimanual_vla.sim.expert import run_episode
    from bimanual_vla.sim.scene import SimScene

    scene = SimScene(expert.rig, task=expert.task, seed=expert.seed)
    joints: list[np.ndarray] = []

    def record(_step, s, _label) -> None:
        joints.append(np.concatenate([s.joint_positions(a.name) for a in expert.rig.arms]))

    result = run_episode(scene, expert, on_step=record)
    return ExpertReplay(result['stage_first_s'], np.array(joints), list(expert.labels))


def aligned_labels(ticks: list, replay: ExpertReplay, rig: RigConfig) -> list[str] | None:
    """Per tick, the expert's label at the step of its own run the measured joints align with (DTW).

    Ticks before the first joint state take that state's place. Grippers (metres, ~0.036 m of
    stroke) weigh 30x, on the scale of the arm joints' radians. None if no joint state came.
    """
    from bimanual_vla.learning.alignment import dtw_align

    if not ticks:
        return None
    q = np.array([tick[3] for tick in ticks], dtype=np.float64)
    finite = np.all(np.isfinite(q), axis=1)
    if not finite.any():
        return None
    q[~finite] = q[np.argmax(finite)]  # before the first state: the first state
    weights = np.array([30.0 if j.name == a.gripper else 1.0 for a in rig.arms for j in a.joints])
    steps = dtw_align(q, replay.joints, weights)
    return [replay.labels[k] for k in steps]


def _score_subtasks(report: EpisodeReport, ticks: list, infs: list, aligned: list[str] | None) -> None:
    """Fill the report's agreement fields from the episode's ticks and inferences."""
    same = lambda a, b: normalise_text(a) == normalise_text(b)  # noqa: E731
    report.ticks = len(ticks)
    report.inferences = len(infs)
    if ticks:
        report.subtask_agreement_steps = float(np.mean([same(p, e) for _, p, e, _ in ticks]))
    if ticks and aligned is not None:
        report.subtask_agreement_aligned = float(np.mean([same(t[1], a) for t, a in zip(ticks, aligned, strict=True)]))
        report.subtask_agreement_steps_ceiling = float(
            np.mean([same(a, t[2]) for t, a in zip(ticks, aligned, strict=True)])
        )
    if infs:
        report.subtask_agreement_inferences = float(np.mean([same(p, e) for _, _, p, e in infs]))
    report.subtasks = list(dict.fromkeys(p for _, _, p, _ in infs))
    report.timeline = _changes(ticks)


def _tick_log_line(
    report: EpisodeReport, ticks: list, infs: list, aligned: list[str] | None, changes: list[tuple[float, float]]
) -> dict:
    """One ticks.jsonl line: every tick (time, subtask, expert label, aligned label, joints) and inference."""
    aligned = aligned if aligned is not None else [''] * len(ticks)
    times = [t[0] for t in ticks]

    def aligned_at(stamp: float) -> str:  # the aligned label of the last tick at or before an observation
        i = int(np.searchsorted(times, stamp, side='right')) - 1
        return aligned[i] if i >= 0 else ''

    return {
        'seed': report.seed,
        'success': report.success,
        'ticks': [[round(t, 3), p, e, a, _joints_json(q)] for (t, p, e, q), a in zip(ticks, aligned, strict=True)],
        'inferences': [[round(t, 3), round(at, 3), p, e, aligned_at(t)] for t, at, p, e in infs],
        'subtask_changes': [[round(t, 3), round(at, 3)] for t, at in changes],
    }


def _joints_json(q: np.ndarray) -> list[float | None]:
    """Joints rounded to 0.1 mrad; null (not NaN, which is not JSON) before the first joint state."""
    return [round(float(v), 4) if math.isfinite(v) else None for v in q]


def _pace_vs_expert(reports: list[EpisodeReport]) -> dict[str, dict[str, float]]:
    """Per reward stage, over successful episodes: policy's first-reach time minus the expert's (s)."""
    out: dict[str, dict[str, float]] = {}
    for stage in ('1', '2', '3', '4'):
        d = [
            r.stage_first_s[stage] - r.expert_stage_first_s[stage]
            for r in reports
            if r.success and stage in r.stage_first_s and stage in r.expert_stage_first_s
        ]
        if d:
            out[stage] = {'mean': round(float(np.mean(d)), 3), 'std': round(float(np.std(d)), 3), 'episodes': len(d)}
    return out


def _note_stages(sim, report: EpisodeReport, now: float) -> None:
    """Record when each reward stage was first reached (the policy's pace, to compare with the expert's)."""
    with sim._lock:
        sim.scene.note_stages(report.stage_first_s, round(now, 2))


def _latency_percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p90 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90])
    return {'p50': round(float(p50), 3), 'p90': round(float(p90), 3)}


def summarise(reports, checkpoint, task, seed, rtf, observer, outputs, latencies=(), chunk_latencies=()) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    stages = [r.max_stage for r in reports]
    return {
        'checkpoint': str(checkpoint),
        'task': task,
        'first_seed': seed,
        'episodes': len(reports),
        'real_time_factor': rtf,
        'success_rate': mean([float(r.success) for r in reports]),
        'successes': sum(r.success for r in reports),
        'max_stage_histogram': {str(s): stages.count(s) for s in range(5)},
        'mean_max_stage': mean(stages),
        'median_stage_first_s': {
            str(k): float(np.median(times))
            for k in range(1, 5)
            if (times := [r.stage_first_s[str(k)] for r in reports if str(k) in r.stage_first_s])
        },
        'subtask_agreement_steps': mean([r.subtask_agreement_steps for r in reports]),
        'subtask_agreement_inferences': mean([r.subtask_agreement_inferences for r in reports]),
        'subtask_agreement_aligned': mean([r.subtask_agreement_aligned for r in reports]),
        'subtask_agreement_steps_ceiling': mean([r.subtask_agreement_steps_ceiling for r in reports]),
        **{
            f'{key}_by_outcome': {
                'successful': mean([getattr(r, key) for r in reports if r.success]),
                'failed': mean([getattr(r, key) for r in reports if not r.success]),
            }
            for key in ('subtask_agreement_steps', 'subtask_agreement_aligned', 'subtask_agreement_steps_ceiling')
        },
        'stage_first_s_minus_expert': _pace_vs_expert(reports),
        'observation_to_subtask_s': _latency_percentiles(list(latencies)),
        'observation_to_chunk_s': _latency_percentiles(list(chunk_latencies)),
        'commands_checked': observer.command_count,
        'command_limit_violations': observer.command_violations,
        'outputs': outputs,
        'per_episode': [asdict(r) for r in reports],
    }


def _policy_file(out: Path, policy: str, num_steps: int | None, torch_threads: int | None) -> str:
    """A copy of the policy YAML with the inference settings of this evaluation (the node reads them from it)."""
    import yaml

    from bimanual_vla.config import load_policy

    cfg = load_policy(policy).model_dump(mode='json')
    if num_steps is not None:
        cfg['inference']['num_steps'] = int(num_steps)
    if torch_threads is not None:
        cfg['inference']['torch_threads'] = int(torch_threads)
    path = out / 'policy.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return str(path)
