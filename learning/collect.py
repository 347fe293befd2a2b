"""Collect demonstrations: the sim rig's scripted expert, recorded through the real topics and recorder.

Any simulated rig: ALOHA (`aloha_sim`: transfer_cube, insertion; the sim publishes joint states and
follows the commands itself) or the SO-101 twin (`so101_sim`: handover_cube, lift_bar; the expert's
commands go through the real `arm_driver`s over the emulated servo buses, and the drivers publish the
joint states, stamped on sim time as on `run --rig so101_sim`). The twin runs in real time (its
drivers run on wall time), so collecting on it takes as long as the episodes last.

This is what a user does with a physical rig and a teleoperator, with the simulator standing in for
both: `sim_rig` (``expert:=true``) publishes cameras, joint states, the expert's joint commands and its
subtask labels; `BagRecorder` records them as a user's `bimanual-vla record` would; a small conductor
node publishes the task on ``policy/task``, resets the sim to each episode's seed and brackets every
episode with ``record/episode`` markers. All three nodes share one process and one executor
(`bimanual_vla.bringup.compose`), so there is no process start cost per episode, and the sim runs as fast as
the machine allows (``real_time_factor:=0``: physics waits for every camera frame, so no frame is
dropped and the recording is identical to a real-time one apart from wall-clock receive times). The
bag says so: its metadata.yaml custom_data holds ``bimanual_vla.time_base: header``
(:func:`bimanual_vla.bags.time_base.mark_time_base`), so every bag consumer reads it on the sim
clock of its header stamps unless told otherwise.

Output: one bag (``OUT/``, rosbag2 + MCAP) holding every episode as a labelled episode
(``"<task> seed <n>"``) and ``OUT/collect.json`` with each episode's seed, success, sim duration and
the sim-time stamp of its first recorded tick, the expert's options, and its ``format_version``
(FORMAT_VERSION; `summary_format_version` reads it).

Episode boundaries: the conductor asks for a reset (``sim/reset_seed``) and publishes the start marker
from its ``/clock`` callback as soon as it sees the reset's first tick; the marker reaches the recorder
a few milliseconds later, so the first tick or two of an episode (20-40 ms of sim time, the arms still
at rest) can fall before it. ``collect.json`` reports the first recorded stamp of every episode.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Bool, Int64, String

from bimanual_vla import topics
from bimanual_vla.bags.record import EPISODE_QOS
from bimanual_vla.config import RigConfig, load_rig
from bimanual_vla.learning.coaching import CoachEvent
from bimanual_vla.learning.recovery import PerturbEvent
from bimanual_vla.learning.tasks import SO101_TASKS, TASK_TEXT, task_for_rig
from bimanual_vla.ros_utils import stamp_to_sec
from bimanual_vla.sim.expert import ExpertOptions

__all__ = ['TASK_TEXT', 'CollectSettings', 'collect']  # TASK_TEXT: learning/tasks.py, re-exported

SUMMARY_FILE = 'collect.json'
MAX_EVENT_JITTER_S = 3.0  # CollectSettings.jitter_s

# collect.json's format, in its `format_version` field:
#   1: no `format_version` field (the files written before it existed). Any of the keys below may be
#      absent, each meaning what the expert did before it could do otherwise: no `command_stamps`, the
#      expert's commands were stamped a tick late, after the step (learning/train_data.py dates them
#      one tick earlier); no `expert_approach`, 'cartesian'; no `expert_time_warp`, `expert_meet_jitter`
#      or `expert_aim_left`, 0, 0 and false.
#   2: `format_version` and every key of CollectResult.to_json, always written.
#   3: `perturb`, `coach` and `jitter_s` (what the collection asked the simulator to do to the objects and
#      its expert to do), and each episode's `events` (when, sim seconds after its start); absent in 1 and
#      2: none asked. `episode_s`: the cut of a collection of partial episodes (absent: none, or unknown).
FORMAT_VERSION = 3


def summary_format_version(summary: dict) -> int:
    """The format of a collect.json read as `summary`: a file without the field is format 1, the oldest."""
    return int(summary.get('format_version', 1))


@dataclass
class EpisodeOutcome:
    index: int
    seed: int
    label: str
    success: bool = False
    sim_duration_s: float = 0.0
    first_tick_s: float | None = None  # sim time of the first tick after the start marker was sent
    wall_s: float = 0.0
    # topics only this collection should publish that had another publisher during the episode: a
    # second sim or collect on the same ROS_DOMAIN_ID mixed into the recording (train leaves it out)
    foreign_publishers: list[str] = field(default_factory=list)
    # [[sim seconds after the episode's first tick, 'perturb', kind] | [..., 'coach', subtask, move_s], ...]
    events: list[list] = field(default_factory=list)


@dataclass
class CollectResult:
    bag: str
    task: str
    task_text: str
    episodes: list[EpisodeOutcome] = field(default_factory=list)
    wall_s: float = 0.0
    recorded_messages: dict[str, int] = field(default_factory=dict)
    dropped_messages: int = 0
    # The expert's commands are stamped when issued (sim/node.py); format 1 files may lack the key.
    command_stamps: str = 'issued'
    # The expert's options (ExpertOptions, flattened); format 1 files may lack the keys (FORMAT_VERSION).
    expert_noise_rad: float = 0.0
    expert_max_joint_speed_rad_s: float = 0.0  # 0: unlimited
    expert_approach: str = 'joint'  # 'joint' (no wrist flip) or 'cartesian'
    expert_time_warp: float = 0.0  # 0: the nominal timeline
    expert_meet_jitter: float = 0.0  # m; 0: the nominal handover point
    expert_aim_left: bool = False  # the left grasp aimed at the measured cube
    perturb: list[list] = field(default_factory=list)  # [[at_s, kind], ...] asked in every episode
    coach: list[list] = field(default_factory=list)  # [[at_s, subtask], ...] asked of the expert in every episode
    jitter_s: float = 0.0  # each episode's event times moved by U(-j, j) s, seeded by its seed
    episode_s: float | None = None  # every episode cut after this many sim seconds (partial demonstrations)
    format_version: int = FORMAT_VERSION

    @classmethod
    def start(
        cls,
        out: Path,
        task: str,
        expert: ExpertOptions,
        perturb: tuple = (),
        coach: tuple = (),
        jitter_s: float = 0.0,
        episode_s: float | None = None,
    ) -> CollectResult:
        """An empty result for a collection of `task` with the expert's `options`, into the bag `out`."""
        return cls(
            episode_s=episode_s,
            perturb=[[e.at_s, e.kind] for e in perturb],
            coach=[[e.at_s, e.text] for e in coach],
            jitter_s=float(jitter_s),
            bag=str(out),
            task=task,
            task_text=TASK_TEXT[task],
            expert_noise_rad=float(expert.noise_rad),
            expert_max_joint_speed_rad_s=float(expert.max_joint_speed_rad_s or 0.0),
            expert_approach=expert.approach,
            expert_time_warp=float(expert.time_warp),
            expert_meet_jitter=float(expert.meet_jitter),
            expert_aim_left=bool(expert.aim_left),
        )

    @property
    def success_rate(self) -> float:
        return sum(e.success for e in self.episodes) / max(1, len(self.episodes))

    def to_json(self) -> dict:
        out = asdict(self)
        out['success_rate'] = self.success_rate
        return out


# sim time (the sim), resets and episode markers (the conductor): one publisher each in a collection
GUARDED_TOPICS = (topics.CLOCK, topics.SIM_RESET_SEED, topics.RECORD_EPISODE)


class CollectConductor(Node):
    """Publishes the task, resets the sim per episode and sends the episode markers at the right tick."""

    def __init__(self, task_text: str, **kwargs) -> None:
        super().__init__('collect_conductor', **kwargs)
        self._lock = threading.Lock()
        self.sim_time = -1.0
        self.success = False
        self._reset_wanted: tuple[int, str] | None = None  # (seed, label) awaiting the reset's first tick
        self.reset_done = threading.Event()
        self.first_tick_s: float | None = None
        self._task_pub = self.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS)
        self._episode_pub = self.create_publisher(String, topics.RECORD_EPISODE, EPISODE_QOS)
        self._reset_pub = self.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
        self.perturb_pub = self.create_publisher(String, topics.SIM_PERTURB, topics.RELIABLE_QOS)
        self.coach_pub = self.create_publisher(String, topics.SIM_EXPERT_COACH, topics.RELIABLE_QOS)
        self.create_subscription(Clock, topics.CLOCK, self._on_clock, topics.CLOCK_QOS)
        self.create_subscription(Bool, topics.SIM_SUCCESS, self._on_success, topics.LATCHED_QOS)
        self._task_pub.publish(String(data=task_text))

    def _on_clock(self, msg: Clock) -> None:
        now = stamp_to_sec(msg.clock)
        with self._lock:
            previous, self.sim_time = self.sim_time, now
            if self._reset_wanted is not None and now < previous:
                # the reset's first tick: start the episode now, before more ticks pass
                _, label = self._reset_wanted
                self._reset_wanted = None
                self._episode_pub.publish(String(data=label))
                self.first_tick_s = now
                self.success = False
                self.reset_done.set()

    def _on_success(self, msg: Bool) -> None:
        with self._lock:
            self.success = bool(msg.data)

    def start_episode(self, seed: int, label: str) -> None:
        with self._lock:
            self.reset_done.clear()
            self._reset_wanted = (seed, label)
        self._reset_pub.publish(Int64(data=int(seed)))

    def end_episode(self) -> None:
        self._episode_pub.publish(String(data=''))

    def foreign_publishers(self) -> list[str]:
        """The topics this collection alone publishes that have more than one publisher now.

        A second `sim_rig` (an eval, a demo, a test) or `collect` on the same ROS domain publishes sim
        time, resets and episode markers that the recorder takes for this collection's: its frames,
        joints and episodes end up in the bag. One publisher each is this collection's own.
        """
        return [t for t in GUARDED_TOPICS if self.count_publishers(t) > 1]


def episode_duration_s(rig: RigConfig, task: str, seed: int, tail_s: float) -> float:
    """How long an episode of the expert lasts in sim time (its plan plus a tail to settle)."""
    if task in SO101_TASKS:
        from bimanual_vla.sim.so101_expert import So101Expert

        return So101Expert(rig, task, seed).num_steps / rig.control_rate_hz + tail_s
    from bimanual_vla.sim.expert import ScriptedExpert

    expert = ScriptedExpert(rig, task, seed)
    return expert.num_steps / rig.control_rate_hz + tail_s


@dataclass(frozen=True)
class CollectSettings:
    """What `collect` records: episodes `episodes` of `task` from seed `seed` on, and how.

    `task` None: the rig's `sim.task`; a task of another scene than the rig's is refused.
    `episode_s` cuts every episode after that many sim seconds (a quick look, tests); by default an
    episode lasts the expert's whole plan plus `tail_s`. `real_time_factor` 0 runs the sim as fast as
    possible; None: 0 on a simulated rig, the rig's own (real time) on a twin, whose arm drivers run
    on wall time (a twin refuses 0 and anything faster than real time). `max_wall_per_episode_s`: an
    episode that takes longer in wall time is an error.
    `expert`: how the expert executes its plan (ExpertOptions): DART offsets executed while the clean
    plan is recorded as the action (episodes the offsets make fail are marked failed as usual), a
    speed limit (set it to the policy node's `safety.max_velocity_rad_s`, so the data holds no motion
    the gate would clamp), the approach above the cube, a time warp per episode so no move can be timed
    by the previous one, a handover point moved per episode and the left grasp aimed at the cube, so
    the data shows the left gripper going where the cube is held instead of to one fixed spot.
    The SO-101 twin's expert takes the DART noise alone (sim/so101_expert.py): the rest is refused for its tasks.
    `perturb`: perturbations asked of the simulator (``sim/perturb``: the object knocked out of the gripper,
    or moved) at set sim times of every episode; the expert plans the task again from there
    (ScriptedExpert.replan), so its labels go back and its arms retry: demonstrations of recovery.
    `coach`: subtasks the expert is told to do at set sim times (``sim/expert_coach``): it does that
    subtask's move from where its arms are, labelled so, then plans the task again (ScriptedExpert.follow):
    demonstrations in which the text says what the arms do next. Each event's time is moved by a seeded
    U(-`jitter_s`, +) per episode. Such an episode lasts its last event's time (and a coached move) longer.
    Neither on the twin (its expert does not plan again).
    Checked when made (ValueError): nothing starts with settings that cannot run.
    """

    task: str | None = 'transfer_cube'
    episodes: int = 10
    seed: int = 0
    rig_name: str = 'aloha_sim'
    real_time_factor: float | None = None
    tail_s: float = 1.0
    compress: bool = False
    progress: bool = True
    max_wall_per_episode_s: float = 300.0
    episode_s: float | None = None
    expert: ExpertOptions = field(default_factory=ExpertOptions)
    perturb: tuple[PerturbEvent, ...] = ()
    coach: tuple[CoachEvent, ...] = ()
    jitter_s: float = 0.0

    def __post_init__(self) -> None:
        from bimanual_vla.bringup.nodes import is_twin

        rig = load_rig(self.rig_name)
        object.__setattr__(self, 'task', task_for_rig(rig, self.task))
        if self.episodes < 1:
            raise ValueError('episodes must be >= 1')
        twin = is_twin(rig)
        if self.real_time_factor is None:
            object.__setattr__(self, 'real_time_factor', rig.sim.real_time_factor if twin else 0.0)
        if twin and not 0.0 < self.real_time_factor <= 1.0:
            raise ValueError(
                f'real_time_factor must be in (0, 1] on the twin {rig.name!r} (its arm drivers run on wall time), '
                f'got {self.real_time_factor:g}'
            )
        self.expert.check_task(self.task)
        if (self.perturb or self.coach) and self.task in SO101_TASKS:
            raise ValueError(f"perturb, coach: the SO-101 twin's expert does not plan again ({self.task})")
        if not 0.0 <= self.jitter_s <= MAX_EVENT_JITTER_S:
            raise ValueError(f'jitter_s must be in [0, {MAX_EVENT_JITTER_S}] s, got {self.jitter_s}')
        if self.jitter_s and not (self.perturb or self.coach):
            raise ValueError('jitter_s moves the perturbations and coaching: give at least one (perturb, coach)')
        if self.coach:
            known = self.coached_moves
            unknown = [e.text for e in self.coach if e.text not in known]
            if unknown:
                raise ValueError(f'coach: {self.task} has no subtask {unknown[0]!r}; it has {list(known)}')

    @functools.cached_property
    def coached_moves(self) -> dict[str, float]:
        """The task's subtasks and how long the expert's move for each lasts (s), from a plan of the first seed."""
        from bimanual_vla.sim.expert import ScriptedExpert

        rig = load_rig(self.rig_name)
        labels = ScriptedExpert(rig, self.task, self.seed, options=self.expert).subtasks_with_steps()
        return {text: steps / rig.control_rate_hz for text, steps in labels.items()}

    def events(self, seed: int) -> list[tuple[float, str, str]]:
        """Episode `seed`'s events: (sim seconds after its first tick, 'perturb' | 'coach', kind or subtask), each
        time moved by its own U(-jitter_s, jitter_s) seeded by the episode, never before 0.1 s; in time order."""
        rng = np.random.default_rng([seed, 41])
        asked = [(e.at_s, 'perturb', e.kind) for e in self.perturb] + [(e.at_s, 'coach', e.text) for e in self.coach]
        moved = [(max(0.1, t + float(rng.uniform(-self.jitter_s, self.jitter_s))), w, x) for t, w, x in asked]
        return sorted((round(t, 3), what, text) for t, what, text in moved)

    def coached_move_s(self, subtask: str) -> float:
        """How long the expert's move for a coached `subtask` lasts (s)."""
        return round(self.coached_moves[subtask], 3)

    def extra_duration_s(self, events: list[tuple[float, str, str]]) -> float:
        """How much longer an episode with `events` lasts: the expert starts over at the last one, after the
        coached move if it is one."""
        if not events:
            return 0.0
        t, what, text = events[-1]
        return t + (self.coached_moves[text] if what == 'coach' else 0.0)

    def sim_parameters(self) -> dict[str, Any]:
        """The sim rig's parameters for this collection: the task, its first seed, its pace, the expert on."""
        from bimanual_vla.sim.node import expert_parameters

        base = {'task': self.task, 'seed': self.seed, 'real_time_factor': self.real_time_factor, 'expert': True}
        return {**base, **expert_parameters(self.expert)}

    def sim_time_nodes(self) -> bool | None:
        """`rig_nodes`' use_sim_time: off on a simulated rig (the conductor reads /clock itself, the sim stamps
        in sim time anyway); the rig's default (on) on a twin, whose drivers stamp joint_states with their clock."""
        from bimanual_vla.bringup.nodes import is_twin

        return None if is_twin(load_rig(self.rig_name)) else False

    def own_process(self) -> tuple[str, ...]:
        """The executables that get a process of their own: a twin's arm drivers, as launch starts them.

        Composed beside the simulator's physics, rendering and the recorder, a driver shares their
        interpreter lock and its bus cycle slows; after an episode reset's power cycle it then misses
        the servos' return and drops the link for seconds, the start of the episode without joint_states.
        """
        from bimanual_vla.bringup.nodes import is_twin

        return ('arm_driver',) if is_twin(load_rig(self.rig_name)) else ()


def collect(out: Path, settings: CollectSettings | None = None) -> CollectResult:
    """Record the expert episodes `settings` describe (seeds seed, seed+1, ...) into the bag `out`.

    Writes OUT/collect.json (CollectResult.to_json) when the bag exists, whatever happened.
    """
    import rclpy

    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import rig_nodes

    settings = settings if settings is not None else CollectSettings()
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f'{out}: output exists; the recorder writes a new bag directory')
    rig = load_rig(settings.rig_name)
    result = CollectResult.start(
        out, settings.task, settings.expert, settings.perturb, settings.coach, settings.jitter_s, settings.episode_s
    )
    started = time.monotonic()
    context = rclpy.Context()
    rclpy.init(context=context)
    composition = recorder = spinner = None
    stop = threading.Event()
    try:
        # The conductor reads /clock itself, and the recorder stamps receive times: neither is on sim time.
        specs = rig_nodes(
            settings.rig_name,
            policy=None,
            use_sim_time=settings.sim_time_nodes(),
            sim_overrides=settings.sim_parameters(),
        )
        conductor = CollectConductor(TASK_TEXT[settings.task], context=context)
        recorder = _recorder(out, settings, context)
        composition = compose(
            specs, context=context, extra_nodes=[conductor, recorder], own_process=settings.own_process()
        )
        spinner = threading.Thread(
            target=composition.spin, kwargs={'until': stop.is_set}, name='collect_spin', daemon=True
        )
        spinner.start()
        _wait_for_recorder(recorder, rig, timeout_s=60.0)
        _record_episodes(conductor, spinner, rig, settings, result)
        time.sleep(0.3)  # let the end marker and the last messages arrive
    finally:
        stop.set()
        if spinner is not None:
            spinner.join(10.0)
        if recorder is not None:
            recorder.close()  # before the nodes are destroyed: it cancels its timers
            _mark_sim_time(out)
            result.recorded_messages = {s.name: s.count for s in recorder.topic_states.values()}
            result.dropped_messages = recorder.dropped
        if composition is not None:
            composition.shutdown()
        if context.ok():
            rclpy.shutdown(context=context)
    result.wall_s = round(time.monotonic() - started, 2)
    if out.is_dir():
        (out / SUMMARY_FILE).write_text(json.dumps(result.to_json(), indent=2) + '\n')
    return result


def _mark_sim_time(out: Path) -> None:
    """Say in the closed bag's metadata that its stamps are sim time (the time base to read it on)."""
    from bimanual_vla.bags.time_base import mark_time_base

    if (out / 'metadata.yaml').is_file():
        mark_time_base(out, 'header')


def _recorder(out: Path, settings: CollectSettings, context: Any) -> Any:
    """The bag recorder writing `out`, the way `bimanual-vla record` would."""
    from rclpy.parameter import Parameter

    from bimanual_vla.bags.record import BagRecorder

    return BagRecorder(
        context=context,
        parameter_overrides=[
            Parameter('output', value=str(out)),
            Parameter('rig', value=settings.rig_name),
            Parameter('compress', value=bool(settings.compress)),
            Parameter('discovery_period_s', value=0.2),
        ],
    )


def _record_episodes(
    conductor: CollectConductor,
    spinner: threading.Thread,
    rig: RigConfig,
    settings: CollectSettings,
    result: CollectResult,
) -> None:
    """Play every episode, appending its outcome to `result` (and to the progress bar)."""
    # The expert's waypoint times do not depend on the seed: plan once for the episode length.
    duration = settings.episode_s
    if duration is None:
        duration = episode_duration_s(rig, settings.task, settings.seed, settings.tail_s)
    bar = _progress(settings.episodes, settings.progress)
    for i in range(settings.episodes):
        outcome = _record_episode(conductor, spinner, i, settings, duration)
        result.episodes.append(outcome)
        if bar is not None:
            bar.set_postfix(success=f'{sum(e.success for e in result.episodes)}/{len(result.episodes)}')
            bar.update(1)
    if bar is not None:
        bar.close()


def _record_episode(
    conductor: CollectConductor, spinner: threading.Thread, i: int, settings: CollectSettings, duration: float
) -> EpisodeOutcome:
    """Reset the sim to episode `i`'s seed, record `duration` sim seconds of it between markers, report it."""
    ep_seed = settings.seed + i
    label = f'{settings.task} seed {ep_seed}'
    events = settings.events(ep_seed)
    pending = list(events)
    if settings.episode_s is None:
        duration += settings.extra_duration_s(events)
    t0 = time.monotonic()
    conductor.start_episode(ep_seed, label)
    if not conductor.reset_done.wait(30.0):
        raise RuntimeError(f'episode {i}: the sim did not reset to seed {ep_seed} within 30 s')
    first_tick = conductor.first_tick_s or 0.0
    foreign: set[str] = set(conductor.foreign_publishers())
    next_check = time.monotonic() + 0.2
    while conductor.sim_time < duration:
        while pending and conductor.sim_time - first_tick >= pending[0][0]:
            _, what, text = pending.pop(0)
            (conductor.perturb_pub if what == 'perturb' else conductor.coach_pub).publish(String(data=text))
        if time.monotonic() >= next_check:
            foreign.update(conductor.foreign_publishers())
            next_check = time.monotonic() + 0.2
        if time.monotonic() - t0 > settings.max_wall_per_episode_s:
            limit = settings.max_wall_per_episode_s
            raise RuntimeError(f'episode {i}: sim time {conductor.sim_time:.2f} s after {limit} s')
        if not spinner.is_alive():
            raise RuntimeError('the executor stopped')
        time.sleep(0.005)
    foreign.update(conductor.foreign_publishers())
    conductor.end_episode()
    if foreign:
        conductor.get_logger().error(
            f'{label}: another node published {sorted(foreign)} during the episode (a second sim or '
            'collect on this ROS_DOMAIN_ID?); its messages are in the bag, so train leaves the episode out'
        )
    return EpisodeOutcome(
        index=i,
        seed=ep_seed,
        label=label,
        success=conductor.success,
        sim_duration_s=round(conductor.sim_time - (conductor.first_tick_s or 0.0), 3),
        first_tick_s=conductor.first_tick_s,
        wall_s=round(time.monotonic() - t0, 2),
        foreign_publishers=sorted(foreign),
        # a coach event also says how long the coached move lasts: train does not teach the text to predict it
        events=[[*e, settings.coached_move_s(e[2])] if e[1] == 'coach' else list(e) for e in events],
    )


def _wait_for_recorder(recorder: Any, rig: RigConfig, timeout_s: float) -> None:
    """Wait until the recorder subscribes to everything the expert publishes (then let DDS match)."""
    wanted = [topics.camera_image(c.name) for c in rig.cameras]
    wanted += [topics.JOINT_STATES, topics.SIM_SUCCESS, topics.SIM_EXPERT_SUBTASK, topics.POLICY_TASK]
    wanted += [topics.arm_command(a.name) for a in rig.arms]
    wanted = ['/' + t.lstrip('/') for t in wanted]
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [t for t in wanted if t not in recorder.topic_states]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f'the recorder did not find publishers for {missing} within {timeout_s} s')
        time.sleep(0.05)
    time.sleep(0.5)  # subscriptions exist; give discovery a moment to match them with the publishers


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit='episode', desc='collect')
