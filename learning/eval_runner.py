"""eval-sim's runner: brings up the sim and the policy, plays each episode and scores it (eval_sim.py).

Any simulated rig: ALOHA (transfer_cube, insertion) or the SO-101 twin (handover_cube, lift_bar), where
the policy's commands go through the real arm_drivers over the emulated buses and the labels, pace
and replay come from the twin's own expert (sim/so101_expert.py)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rclpy.parameter import Parameter
from std_msgs.msg import Int64, String

from bimanual_vla.config import RigConfig, load_rig
from bimanual_vla.learning.coaching import CoachEvent, coaching_outcomes, summarise_coaching
from bimanual_vla.learning.eval_observer import EvalObserver, call_enable
from bimanual_vla.learning.eval_report import (
    EpisodeReport,
    ExpertReplay,
    aligned_labels,
    joint_weights,
    latency_percentiles,
    score_subtasks,
    summarise,
    tick_log_line,
)
from bimanual_vla.learning.recovery import PerturbEvent, recovery_outcomes, summarise_recovery
from bimanual_vla.learning.tasks import SO101_TASKS, TASK_TEXT, task_for_rig

if TYPE_CHECKING:
    from bimanual_vla.sim.expert import ExpertOptions, ScriptedExpert
    from bimanual_vla.sim.scene import SimScene
    from bimanual_vla.sim.so101_expert import So101Expert


@dataclass(frozen=True)
class EvalSettings:
    """How `evaluate_closed_loop` runs: `episodes` episodes of `task` (None: the rig's `sim.task`) from seed `seed` on.

    `prompt`: what the policy is told on ``policy/task`` instead of the task's own text (TASK_TEXT): a
    phrasing held out of training, or another task's prompt in this task's scene. Success, stages and labels
    stay the task's.
    `coach`: subtasks put on ``policy/subtask`` at set sim times of every episode (cleared at its start and
    end); with `expert_pace`, each is scored against the expert's motion for it (learning/coaching.py).
    `perturb`: perturbations asked of the simulator (``sim/perturb``) at set sim times of every episode; each
    applied one is reported with when the policy's text went back to an earlier subtask (learning/recovery.py).
    `seeds`: these seeds instead, one episode each (`episodes` and `seed` then follow from them), e.g. to
    run again the episodes another evaluation failed.
    An episode ends `settle_s` after success is first reached or at `max_sim_s`. `num_steps` and
    `torch_threads` override the policy file's inference settings (None: the file's). The first
    `video_episodes` are drawn into the video.
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
    and the aligned agreement and its ceiling (eval_sim's docstring). The expert's labels follow its
    clock, so the policy's pace bounds the agreement it can reach with them.
    `expert_approach`: how the expert (labels, replay, narrated motion) moves above the cube
    (sim/expert.py, APPROACHES). None: the way the checkpoint's training data did
    (`expert_approach` in its bimanual_vla.json), else 'joint'. The labels follow the same clock
    either way; the replay the policy's motion is aligned with should be the motion it learned. The
    SO-101 twin's expert has one way of moving only (the option is reported, not used).
    On a twin the arm drivers run in processes of their own too (collect.py, `own_process`), and
    `real_time_factor` must be in (0, 1]: the drivers run on wall time.
    Checked when made (ValueError).
    """

    episodes: int = 50
    seed: int = 1000
    task: str | None = 'transfer_cube'
    rig_name: str = 'aloha_sim'
    max_sim_s: float = 12.0
    settle_s: float = 1.0
    real_time_factor: float = 1.0
    num_steps: int | None = None
    torch_threads: int | None = 1
    video_episodes: int = 1
    progress: bool = True
    policy: str = 'default'
    tick_log: bool = False
    policy_process: bool = True
    narrate_expert: bool = False
    expert_pace: bool = True
    expert_approach: str | None = None
    seeds: tuple[int, ...] = ()
    prompt: str | None = None
    coach: tuple[CoachEvent, ...] = ()
    perturb: tuple[PerturbEvent, ...] = ()

    def __post_init__(self) -> None:
        from bimanual_vla.bringup.nodes import is_twin

        if self.seeds:
            object.__setattr__(self, 'seeds', tuple(int(x) for x in self.seeds))
            object.__setattr__(self, 'episodes', len(self.seeds))
            object.__setattr__(self, 'seed', self.seeds[0])
        rig = load_rig(self.rig_name)
        object.__setattr__(self, 'task', task_for_rig(rig, self.task))
        if is_twin(rig) and not 0.0 < self.real_time_factor <= 1.0:
            raise ValueError(
                f'real_time_factor must be in (0, 1] on the twin {rig.name!r} (its arm drivers run on wall time), '
                f'got {self.real_time_factor:g}'
            )

    def episode_seed(self, i: int) -> int:
        """The seed of episode `i`: ``seeds[i]`` where given, else ``seed + i``."""
        return self.seeds[i] if self.seeds else self.seed + i

    def own_process(self) -> tuple[str, ...]:
        """The executables that get a child process: the policy node (unless composed), a twin's arm drivers."""
        from bimanual_vla.bringup.compose import OWN_PROCESS
        from bimanual_vla.bringup.nodes import is_twin

        own = OWN_PROCESS if self.policy_process else ()
        return (*own, 'arm_driver') if is_twin(load_rig(self.rig_name)) else own


@dataclass
class _Run:
    """One evaluation's running state: the graph, the observer, and what the episodes add up to."""

    settings: EvalSettings
    out: Path
    rig: RigConfig
    expert: ExpertOptions
    observer: EvalObserver
    composition: Any
    spinner: threading.Thread
    reports: list[EpisodeReport]
    latencies: list[float]  # every change of subtask: observation to its text, sim seconds
    chunk_latencies: list[float]  # every inference: observation to its chunk


def evaluate_closed_loop(checkpoint: Path, out: Path, settings: EvalSettings | None = None) -> dict:
    """Run the closed-loop episodes `settings` describe, write OUT/report.json + video; return the report."""
    import rclpy

    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import rig_nodes
    from bimanual_vla.sim.expert import ExpertOptions
    from bimanual_vla.sim.node import expert_parameters

    s = settings if settings is not None else EvalSettings()
    checkpoint = Path(checkpoint).expanduser().resolve()
    approach = s.expert_approach or _trained_approach(checkpoint) or 'joint'
    expert = ExpertOptions(approach=approach)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rig = load_rig(s.rig_name)
    policy_overrides = {
        'enabled': False,
        'checkpoint': str(checkpoint),
        'policy': _policy_file(out, s.policy, s.num_steps, s.torch_threads),
    }
    sim = {'task': s.task, 'seed': s.seed, 'real_time_factor': s.real_time_factor, 'expert': s.narrate_expert}
    sim['expert_approach'] = expert_parameters(expert)['expert_approach']
    specs = rig_nodes(s.rig_name, policy=s.policy, sim_overrides=sim, policy_overrides=policy_overrides)
    started = time.monotonic()
    context = rclpy.Context()
    rclpy.init(context=context)
    composition = None
    stop = threading.Event()
    spinner = None
    try:
        observer = EvalObserver(rig, context=context, parameter_overrides=[Parameter('use_sim_time', value=True)])
        observer.task_pub.publish(String(data=s.prompt or TASK_TEXT[s.task]))
        composition = compose(
            specs, rig=s.rig_name, context=context, extra_nodes=[observer], own_process=s.own_process()
        )
        spinner = threading.Thread(target=composition.spin, kwargs={'until': stop.is_set}, daemon=True)
        spinner.start()
        run = _Run(s, out, rig, expert, observer, composition, spinner, [], [], [])
        _run_episodes(run)
    finally:
        stop.set()
        if spinner is not None:
            spinner.join(10.0)
        if composition is not None:
            composition.shutdown()
        if context.ok():
            rclpy.shutdown(context=context)
    report = _write_report(run, checkpoint)
    report['wall_s'] = round(time.monotonic() - started, 1)
    (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    return report


def _run_episodes(run: _Run) -> None:
    """Every episode in turn, with a progress bar if asked for."""
    bar = None
    if run.settings.progress:
        from tqdm import tqdm

        bar = tqdm(total=run.settings.episodes, unit='episode', desc='eval-sim')
    for i in range(run.settings.episodes):
        run.reports.append(_run_episode(run, i))
        if bar is not None:
            bar.set_postfix(success=f'{sum(r.success for r in run.reports)}/{len(run.reports)}')
            bar.update(1)
    if bar is not None:
        bar.close()


def _run_episode(run: _Run, i: int) -> EpisodeReport:
    """Reset to episode `i`'s seed, let the policy (or the expert) drive until it ends, score it."""
    s, observer = run.settings, run.observer
    ep_seed = s.episode_seed(i)
    wall0 = time.monotonic()
    report = EpisodeReport(index=i, seed=ep_seed)
    call_enable(observer.enable_client, False)
    expert = plan_expert(run.rig, s.task, ep_seed, run.expert)
    observer.expert_labels = expert.labels
    observer.expect_reset()
    observer.reset_pub.publish(Int64(data=ep_seed))
    if not observer.reset_seen.wait(30.0) or not observer.frame_after_reset.wait(30.0):
        raise RuntimeError(f'episode {i}: the sim did not reset to seed {ep_seed}')
    observer.start_recording(video=i < s.video_episodes)
    if s.coach:
        observer.coach_pub.publish(String(data=''))  # the model's own subtasks until the first event
    if not s.narrate_expert:
        call_enable(observer.enable_client, True)
    report.first_success_s = _wait_for_the_end(run, report)
    call_enable(observer.enable_client, False)
    if s.coach:
        observer.coach_pub.publish(String(data=''))
    observer.stop_recording()
    sim = run.composition.node('sim_rig')
    _note_stages(sim, report, observer.sim_time)
    with sim._lock:
        report.max_stage = int(sim.scene.max_reward_reached)
        report.final_stage = int(sim.scene.reward)
        report.success = bool(sim.scene.success)
    report.sim_time_s = round(observer.sim_time, 3)
    if s.perturb:
        # a perturbation asked for at the episode's very end must land in this episode, not the next one's start
        deadline = time.monotonic() + 5.0
        while len(sim.perturbations) < report.perturbations_asked and time.monotonic() < deadline:
            time.sleep(0.01)
        with sim._lock:
            applied = list(sim.perturbations)
        report.recovery = recovery_outcomes(applied, list(observer.tick_log), expert.labels, report.success)
    _score_episode(run, report, expert, i)
    report.wall_s = round(time.monotonic() - wall0, 2)
    return report


def _wait_for_the_end(run: _Run, report: EpisodeReport) -> float | None:
    """Follow the episode until `settle_s` after success or `max_sim_s`; the sim time success began."""
    observer, sim = run.observer, run.composition.node('sim_rig')
    first_success = None
    coach = sorted(run.settings.coach, key=lambda e: e.at_s)
    perturb = sorted(run.settings.perturb, key=lambda e: e.at_s)
    while True:
        now = observer.sim_time
        while coach and now >= coach[0].at_s:
            observer.coach_pub.publish(String(data=coach.pop(0).text))
        while perturb and now >= perturb[0].at_s:
            observer.perturb_pub.publish(String(data=perturb.pop(0).kind))
            report.perturbations_asked += 1
        _note_stages(sim, report, now)
        if observer.success and first_success is None:
            first_success = now
        if not observer.success:
            first_success = None
        if first_success is not None and now - first_success >= run.settings.settle_s:
            return first_success
        if now >= run.settings.max_sim_s:
            return first_success
        if not run.spinner.is_alive():
            raise RuntimeError('the executor stopped')
        run.composition.check_children()
        time.sleep(0.01)


def _score_episode(run: _Run, report: EpisodeReport, expert: ScriptedExpert | So101Expert, i: int) -> None:
    """Agreement, the expert's pace and the latencies of episode `i`; its ticks.jsonl line if asked for."""
    observer = run.observer
    ticks = list(observer.tick_log)
    infs = list(observer.inference_log)
    changes = list(observer.subtask_changes)
    aligned = None
    if run.settings.expert_pace:
        # the expert on this seed, physics only (~1 s): its pace and the motion the ticks are aligned with
        replay = replay_expert(expert)
        report.expert_stage_first_s = replay.stage_first_s
        aligned = aligned_labels(ticks, replay, run.rig)
        if run.settings.coach:
            weights = joint_weights(run.rig)
            report.coaching = coaching_outcomes(run.settings.coach, ticks, replay.joints, replay.labels, weights)
    score_subtasks(report, ticks, infs, aligned)
    delays = [at - t for t, at in changes]
    chunk_delays = [at - t for t, at, *_ in infs]
    report.observation_to_subtask_s = latency_percentiles(delays)
    report.observation_to_chunk_s = latency_percentiles(chunk_delays)
    run.latencies.extend(delays)
    run.chunk_latencies.extend(chunk_delays)
    if run.settings.tick_log:
        with open(run.out / 'ticks.jsonl', 'a' if i else 'w') as f:
            f.write(json.dumps(tick_log_line(report, ticks, infs, aligned, changes)) + '\n')


def _write_report(run: _Run, checkpoint: Path) -> dict:
    """The video, the contact sheet and the report of the whole run (report.json is written by the caller)."""
    s, observer = run.settings, run.observer
    outputs = {}
    if observer.recorder.frames:
        outputs['video'] = str(observer.recorder.write_video(run.out / 'episode.mp4', fps=observer.video_fps))
        sheet = observer.recorder.write_contact_sheet(run.out / 'contact_sheet.png', count=12)
        outputs['contact_sheet'] = str(sheet)
    report = summarise(
        run.reports,
        checkpoint,
        s.task,
        s.seed,
        s.real_time_factor,
        observer,
        outputs,
        run.latencies,
        run.chunk_latencies,
    )
    report['policy_in_own_process'] = s.policy_process
    report['driver'] = 'expert (the policy narrates)' if s.narrate_expert else 'policy'
    report['expert_approach'] = run.expert.approach
    if s.seeds:
        report['seeds'] = list(s.seeds)
    report['prompt'] = s.prompt or TASK_TEXT[s.task]
    if s.coach:
        report['coach'] = [[e.at_s, e.text] for e in s.coach]
        report['coaching'] = summarise_coaching([row for r in run.reports for row in r.coaching])
    if s.perturb:
        report['perturb'] = [[e.at_s, e.kind] for e in s.perturb]
        report['recovery'] = summarise_recovery([r.recovery for r in run.reports])
    return report


def _trained_approach(checkpoint: Path) -> str | None:
    """The expert approach the checkpoint's training data used (its metadata), None if not recorded."""
    from bimanual_vla.policy_node.checkpoint import read_metadata

    return read_metadata(checkpoint).expert_approach


def plan_expert(rig: RigConfig, task: str, seed: int, options: ExpertOptions) -> ScriptedExpert | So101Expert:
    """The scripted expert of `task`'s scene planned for `seed` (the SO-101 twin's takes no options)."""
    if task in SO101_TASKS:
        from bimanual_vla.sim.so101_expert import So101Expert

        return So101Expert(rig, task, seed)
    from bimanual_vla.sim.expert import ScriptedExpert

    return ScriptedExpert(rig, task, seed, options=options)


def replay_expert(expert: ScriptedExpert | So101Expert) -> ExpertReplay:
    """Play a planned expert on its seed in-process (physics only, no rendering, ~1 s), as sim_rig executes it:
    its targets plus its offsets (DART, if any) each tick; the joints and the first time of each reward stage."""
    scene = _expert_scene(expert)
    joints: list[np.ndarray] = []
    stage_first_s: dict[str, float] = {}
    for k in range(expert.num_steps):
        _play_expert_step(expert, scene, k)
        scene.note_stages(stage_first_s, round((k + 1) * expert.dt, 3))
        joints.append(np.concatenate([scene.joint_positions(a.name) for a in expert.rig.arms]))
    return ExpertReplay(stage_first_s, np.array(joints), list(expert.labels))


def replan_after_perturbation(expert: ScriptedExpert, at_s: float, kind: str) -> ScriptedExpert:
    """`expert` (ALOHA) planned again as sim_rig plans it when perturbation `kind` comes `at_s` into its episode.

    The plan is played in-process up to that tick, the object perturbed with the sim's own draw (the
    episode's first perturbation, sim/perturbation.py), and the task planned again from there
    (ScriptedExpert.replan): what a scripted operator does after the object was disturbed. Exact for
    ``move`` (the new place depends on the seed alone); after a ``drop`` the object lies below where the
    expert's own episode carried it, which a policy's episode matches only as closely as it tracks the expert.
    """
    from bimanual_vla.sim.perturbation import perturbation_rng

    scene = _expert_scene(expert)
    step = min(max(int(round(at_s / expert.dt)), 1), expert.num_steps)
    for k in range(step):
        _play_expert_step(expert, scene, k)
    scene.perturb(kind, perturbation_rng(expert.seed, 0))
    expert.replan(step, {name: scene.object_pose(name) for name in expert.poses})
    return expert


def _expert_scene(expert: ScriptedExpert | So101Expert) -> SimScene:
    """A fresh scene of the expert's task at its seed, physics only."""
    from bimanual_vla.sim.scene import SimScene

    if expert.task in SO101_TASKS:
        from bimanual_vla.sim.so101_scene import So101Scene

        return So101Scene(expert.rig, task=expert.task, seed=expert.seed)
    return SimScene(expert.rig, task=expert.task, seed=expert.seed)


def _play_expert_step(expert: ScriptedExpert | So101Expert, scene: SimScene, k: int) -> None:
    """One control tick of the expert on `scene`, as sim_rig runs it: observe, targets plus offsets, step."""
    expert.observe(k, lambda: scene.object_pose('red_box_joint')[:3])
    targets, _ = expert.act(k)
    offsets = expert.offsets(k)
    for arm, target in targets.items():
        scene.command(arm, target + offsets[arm])
    scene.step()


def _note_stages(sim: Any, report: EpisodeReport, now: float) -> None:
    """Record when each reward stage was first reached (the policy's pace, to compare with the expert's)."""
    with sim._lock:
        sim.scene.note_stages(report.stage_first_s, round(now, 2))


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
