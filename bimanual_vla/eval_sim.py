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
* pace: afterwards the expert is replayed on each seed (physics only) and the policy's first-reach
  time of each reward stage is compared with the expert's on the same seed;
* command safety: every `arms/<arm>/joint_command` is checked to be finite and within the rig's
  joint limits;
* one episode (the first) as a video and a contact sheet with the policy's subtask and the
  expert's label drawn on (`bimanual_vla.episode_video`).

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

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int64, String
from std_srvs.srv import SetBool
from visualization_msgs.msg import MarkerArray

from bimanual_vla import topics
from bimanual_vla.collect import TASK_TEXT
from bimanual_vla.config import RigConfig, load_rig
from bimanual_vla.episode_video import EpisodeRecorder
from bimanual_vla.ros_utils import stamp_to_sec


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
    subtask_agreement_progress: float | None = None  # ticks whose subtask is the label of the plan step reached
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
        self.expert_plan: np.ndarray | None = None  # (steps, joints) expert targets, joint_names order
        self.joint_names = [f'{a.name}_{j.name}' for a in rig.arms for j in a.joints]
        # grippers are in metres (0.036 m stroke): weigh them like ~1 rad in the nearest-plan-step search
        self._weights = np.array([30.0 if j.name == a.gripper else 1.0 for a in rig.arms for j in a.joints])
        self._q = np.full(len(self.joint_names), np.nan)
        self._progress_k = 0
        self.dt = 1.0 / rig.control_rate_hz
        # (sim time, policy subtask, expert label at that time, expert label where the robot is in the plan)
        self.tick_log: list[tuple[float, str, str, str]] = []
        # (observation stamp, sim time its marker arrived, policy subtask, expert label, progress label)
        self.inference_log: list[tuple[float, float, str, str, str]] = []
        self._progress_history: list[tuple[float, str]] = []
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

    def progress_label(self) -> str:
        """The expert's label at the plan step nearest the measured joints (searched forward only).

        This names the phase the robot is actually in, whatever its pace: a policy that is slower
        than the expert but does the same thing is compared with the label of what it is doing.
        """
        if self.expert_plan is None or not np.all(np.isfinite(self._q)):
            return ''
        lo = self._progress_k
        hi = min(len(self.expert_plan), lo + 100)
        d = np.abs((self.expert_plan[lo:hi] - self._q) * self._weights).sum(axis=1)
        self._progress_k = lo + int(np.argmin(d))
        return self.expert_labels[min(self._progress_k, len(self.expert_labels) - 1)]

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
                self._progress_history = []
                self._progress_k = 0
                self.reset_seen.set()
                return
            if self.recording:
                progress = self.progress_label()
                self._progress_history.append((now, progress))
                self.tick_log.append((now, self.reasoning, self.expert_label(now), progress))

    def _on_reasoning(self, msg: String) -> None:
        with self._lock:
            self.reasoning = msg.data

    def _on_markers(self, msg: MarkerArray) -> None:
        for marker in msg.markers:
            if marker.ns == 'reasoning' and marker.text:
                t = stamp_to_sec(marker.header.stamp)
                with self._lock:
                    if self.recording:
                        times = [h[0] for h in self._progress_history]
                        i = int(np.searchsorted(times, t, side='right')) - 1
                        progress = self._progress_history[i][1] if i >= 0 else ''
                        self.inference_log.append((t, self.sim_time, marker.text, self.expert_label(t), progress))

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
) -> dict:
    """Run `episodes` closed-loop episodes (seeds seed..), write OUT/report.json + video; return the report.

    `tick_log`: also write OUT/ticks.jsonl, a line per episode with every tick (sim time, policy
    subtask, expert label, progress label) and every inference (observation stamp, arrival time,
    subtask, expert label, progress label), for timing analyses the report's summary cannot answer.
    `policy_process`: run policy_node in a child process of its own, as the launch files do (see
    bimanual_vla/node_process.py); False composes it with the simulator in this process.
    `narrate_expert`: the scripted expert drives the arms and the policy, never enabled, only writes
    its subtasks (preview mode). The agreement then measures the reasoning head on the expert's own
    motion, latency included, without the differences in pace a closed loop brings; success and
    stages are the expert's.
    `expert_pace`: after the episodes, replay the scripted expert on each seed (physics only, ~1 s
    each) and report how much sooner or later the policy reached each reward stage than the expert
    did on the same seed. The expert's labels follow its clock, so this spread bounds the
    agreement a policy can reach at the pace it keeps.
    """
    import rclpy

    from bimanual_vla.bringup import rig_nodes
    from bimanual_vla.compose import OWN_PROCESS, compose
    from drivers.expert import ScriptedExpert

    checkpoint = Path(checkpoint).expanduser().resolve()
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
        sim_overrides={'task': task, 'seed': seed, 'real_time_factor': real_time_factor, 'expert': narrate_expert},
        policy_overrides=policy_overrides,
    )
    started = time.monotonic()
    reports: list[EpisodeReport] = []
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
            expert = ScriptedExpert(rig, task, ep_seed)
            observer.expert_labels = expert.labels
            observer.expert_plan = np.concatenate(
                [expert.joint_plan[a.name] for a in rig.arms], axis=1
            )  # rig order per arm, arms in rig order: the observer's joint_names order
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
            report.ticks = len(ticks)
            if ticks:
                report.subtask_agreement_steps = float(
                    np.mean([normalise_text(p) == normalise_text(e) for _, p, e, _ in ticks])
                )
                report.subtask_agreement_progress = float(
                    np.mean([normalise_text(p) == normalise_text(g) for _, p, _, g in ticks])
                )
            infs = list(observer.inference_log)
            report.inferences = len(infs)
            if infs:
                report.subtask_agreement_inferences = float(
                    np.mean([normalise_text(p) == normalise_text(e) for _, _, p, e, _ in infs])
                )
            report.subtasks = list(dict.fromkeys(p for _, _, p, _, _ in infs))
            report.timeline = _changes(ticks)
            if tick_log:
                with open(out / 'ticks.jsonl', 'a' if i else 'w') as f:
                    line = {
                        'seed': ep_seed,
                        'success': report.success,
                        'ticks': [[round(t, 3), p, e, g] for t, p, e, g in ticks],
                        'inferences': [[round(t, 3), round(a, 3), p, e, g] for t, a, p, e, g in infs],
                    }
                    f.write(json.dumps(line) + '\n')
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
    if expert_pace:
        _expert_stage_times(rig, task, reports)
    outputs = {}
    if observer.recorder.frames:
        outputs['video'] = str(observer.recorder.write_video(out / 'episode.mp4', fps=observer.video_fps))
        outputs['contact_sheet'] = str(observer.recorder.write_contact_sheet(out / 'contact_sheet.png', count=12))
    report = summarise(reports, checkpoint, task, seed, real_time_factor, observer, outputs)
    report['policy_in_own_process'] = policy_process
    report['driver'] = 'expert (the policy narrates)' if narrate_expert else 'policy'
    report['wall_s'] = round(time.monotonic() - started, 1)
    (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    return report


def _changes(ticks: list[tuple[float, str, str, str]]) -> list[tuple[float, str, str]]:
    """The ticks where the policy's subtask or the expert's label changes: where they disagree, at a glance."""
    out: list[tuple[float, str, str]] = []
    for t, policy, expert, _ in ticks:
        if not out or (policy, expert) != out[-1][1:]:
            out.append((round(t, 2), policy, expert))
    return out


def _expert_stage_times(rig: RigConfig, task: str, reports: list[EpisodeReport]) -> None:
    """Fill `expert_stage_first_s`: the scripted expert played on each episode's seed, no rendering."""
    from drivers.expert import ScriptedExpert, run_episode
    from drivers.sim_scene import SimScene

    for report in reports:
        scene = SimScene(rig, task=task, seed=report.seed)
        report.expert_stage_first_s = run_episode(scene, ScriptedExpert(rig, task, report.seed))['stage_first_s']


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


def summarise(reports, checkpoint, task, seed, rtf, observer, outputs) -> dict:
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
        'subtask_agreement_progress': mean([r.subtask_agreement_progress for r in reports]),
        'subtask_agreement_steps_by_outcome': {
            'successful': mean([r.subtask_agreement_steps for r in reports if r.success]),
            'failed': mean([r.subtask_agreement_steps for r in reports if not r.success]),
        },
        'stage_first_s_minus_expert': _pace_vs_expert(reports),
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
