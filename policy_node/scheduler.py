"""The policy node's timing, without ROS: when to infer, where a chunk starts, what each tick commands.

The policy node (``policy_node/node.py``) runs three loops: input callbacks, an inference thread
and a control timer. Every decision they make about time lives here, in ``Scheduler``, so it can be
driven with plain floats (seconds of the node's clock, ROS time) and checked with exact numbers:

* **inputs**: the latest frame of every camera and position of every joint, with their stamps, the
  cameras' arrival delays, and (``chunk_start: synchronized``) short stamped histories; which
  inputs are missing or too old (``stale_inputs``).
* **pacing** (``inference_due``): a new inference starts ``execution_horizon`` control steps after
  the previous one started, or at once when nothing is executing or time jumped back.
* **anchoring** (``plan_inference``): the time of a chunk's first action (``chunk_start``:
  ``snapshot``, ``arrival_compensated``, ``synchronized``, ``oldest_input``; docs/policy_node.md,
  Timing), and for RTC the guide with its frozen steps, planned from the measured latency.
* **arrival** (``accept_chunk``): a chunk from an older timeline is dropped, one entirely in the
  past is refused (``chunks_refused_late``), others join the executor.
* **control** (``tick``): the action at *now*; stale inputs drop the executing chunk; a tick past the
  end of every chunk holds the last action and counts as starved.
* **time jumps** (``note_time``): ROS time going backwards (a sim reset, a bag loop) starts a new
  timeline: the executing chunk, the pending frame stamps and inputs stamped in the new timeline's
  future are dropped, and inference started before the jump is discarded when it finishes.

Not thread-safe: the node calls it under its one lock (held for microseconds, never across
inference). The safety gate (``safety.CommandGate``) stays outside: the scheduler proposes, the gate
decides what is sent.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import numpy as np

from bimanual_vla.config import PolicyConfig
from bimanual_vla.policy_node.chunking import Chunk, ChunkExecutor, GuidePlan, LatencyEstimator, Strategy, plan_guide
from bimanual_vla.policy_node.input_sync import ArrivalDelay, JointHistory, StampedHistory

TIME_JUMP_TOLERANCE_S = 0.05
"""ROS time further back than this from the latest seen counts as a jump (a sim reset, a bag loop)."""

ChunkStart = Literal['snapshot', 'arrival_compensated', 'synchronized', 'oldest_input']

F = TypeVar('F')  # a camera frame; opaque here (the node stores its sensor_msgs Image)


class Stats:
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


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float('nan')


def milliseconds(seconds: float | None) -> float:
    return float('nan') if seconds is None else seconds * 1e3


@dataclass(frozen=True)
class Timing:
    """The numbers the scheduler decides with (from the checkpoint and the policy file)."""

    dt: float  # the checkpoint's action spacing, s
    chunk_size: int
    execution_horizon: int  # control steps between inference starts
    chunk_start: ChunkStart = 'snapshot'
    action_time_offset_s: float = 0.0  # the training data stamped its commands this much after they took effect
    camera_max_age_s: float = 0.5
    joint_max_age_s: float = 0.2

    @property
    def pacing_s(self) -> float:
        """Time from one inference's start to the next one's (at most a chunk)."""
        return max(1, min(self.execution_horizon, self.chunk_size)) * self.dt


@dataclass(frozen=True)
class InferenceInputs(Generic[F]):
    """What one inference observes, and when its chunk starts."""

    t_obs: float  # the chunk's first-action time
    frames: dict[str, F]
    camera_stamps: dict[str, float]
    state: np.ndarray  # joint positions, the checkpoint's order
    plan: GuidePlan | None  # RTC: committed actions and soft mask (None: unguided)
    frozen_steps: int
    epoch: int  # the timeline it was observed on (+1 at each time jump)


@dataclass(frozen=True)
class TickDecision:
    """What one control tick proposes to the safety gate."""

    action: np.ndarray | None  # None: nothing to propose (no chunk yet, or inputs stale)
    stale: list[str]  # stale inputs now
    was_stale: list[str]  # stale inputs at the previous tick
    measured: np.ndarray  # latest measured joint positions (NaN where none)


@dataclass(frozen=True)
class ChunkOutcome:
    status: Literal['accepted', 'refused', 'invalid', 'old_timeline']
    chunk: Chunk | None = None  # the chunk as built from the actions (None if they were invalid)


class Scheduler(Generic[F]):
    """Timing and chunk state of the policy node; see the module docstring."""

    def __init__(
        self,
        timing: Timing,
        joint_names: Sequence[str],
        camera_names: Sequence[str],
        arm_columns: Mapping[str, np.ndarray],
        *,
        strategy: Strategy = 'rtc',
        ensemble_decay: float = 0.1,
        latency_margin: float = 0.2,
        latency_quantile: float = 1.0,
        on_time_jump: Callable[[float], None] | None = None,
    ) -> None:
        """``arm_columns``: arm -> its joints' columns (names stale joints per arm); ``on_time_jump``
        is called with how far time jumped back, after the old timeline's state is dropped."""
        self.timing = timing
        self.joint_names = list(joint_names)
        self.camera_names = list(camera_names)
        self.arm_columns = {arm: np.asarray(cols) for arm, cols in arm_columns.items()}
        self.executor = ChunkExecutor(strategy, ensemble_decay=ensemble_decay)
        self.latency = LatencyEstimator(margin=latency_margin, quantile=latency_quantile)
        self.stats = Stats()
        self._on_time_jump = on_time_jump
        self._col = {n: i for i, n in enumerate(self.joint_names)}
        self.joint_pos = np.full(len(self.joint_names), np.nan)
        self.joint_stamp = np.full(len(self.joint_names), -np.inf)
        self.frames: dict[str, tuple[float, F]] = {}  # camera -> (stamp, latest frame)
        # How late each camera's frames arrive (arrival_compensated, synchronized, diagnostics), and for
        # synchronized the stamped histories to pick every input's latest at or before the observation time.
        self.arrival = {cam: ArrivalDelay() for cam in self.camera_names}
        self._keep_history = timing.chunk_start == 'synchronized'
        self._frame_history: dict[str, StampedHistory[F]] = {cam: StampedHistory(16) for cam in self.camera_names}
        self._joint_history = JointHistory(len(self.joint_names))
        self.stale: list[str] = ['no input yet']
        self.epoch = 0  # +1 each time ROS time jumps backwards
        self._latest_now = -math.inf
        self._pending_frames: dict[str, float] | None = None  # camera stamps of the newest chunk, until commanded
        self._next_start = -math.inf  # pacing: when the next inference is due, on timeline _paced_epoch
        self._paced_epoch = 0
        self._last_tick_wall: float | None = None  # monotonic time of the previous control tick
        # How long a command takes to reach the robot (the policy on another computer: half the measured
        # round trip, policy_node/remote_link.py; 0 on one). The robot switches to a new chunk that much
        # after the node does, so RTC must freeze the steps executed until then too.
        self.link_delay_s = 0.0
        # Tick mode: a command sent at T acts at the robot at T + link_delay_s, so the tick sends the action
        # due then. Trajectory mode sends times the driver plays by (on the robot's clock): no lead there.
        self.ticks_lead_by_link = True

    # --------------------------------------------------------------- inputs

    def add_frame(self, cam: str, frame: F, stamp: float, arrival: float) -> None:
        self.frames[cam] = (stamp, frame)
        self.arrival[cam].add(arrival, stamp)
        if self._keep_history:
            self._frame_history[cam].add(stamp, frame)

    def add_joints(self, stamp: float, names: Sequence[str], positions: Sequence[float]) -> None:
        """One joint-state message: joints not in the checkpoint are ignored; a non-finite position, or a
        message whose names and positions differ in number, is counted (``bad_joint_states``) and not
        stored, so that joint goes stale instead of feeding NaN."""
        if len(names) != len(positions):
            self.stats.bad_joint_states += 1
            return
        cols: list[int] = []
        values: list[float] = []
        for name, pos in zip(names, positions, strict=True):
            i = self._col.get(name)
            if i is None:
                continue
            if not math.isfinite(pos):
                self.stats.bad_joint_states += 1
                continue
            self.joint_pos[i] = pos
            self.joint_stamp[i] = stamp
            cols.append(i)
            values.append(pos)
        if cols and self._keep_history:
            self._joint_history.add(stamp, np.array(cols), np.array(values))

    def stale_inputs(self, now: float) -> list[str]:
        """Which inputs are missing, or stamped further from ``now`` than their max age (either way)."""
        stale: list[str] = []
        max_cam = self.timing.camera_max_age_s
        for cam in self.camera_names:
            if cam not in self.frames:
                stale.append(f'camera {cam}: no frame')
                continue
            age = now - self.frames[cam][0]
            if age > max_cam or age < -max_cam:
                stale.append(f'camera {cam}: {age:.2f} s old')
        max_joint = self.timing.joint_max_age_s
        ages = now - self.joint_stamp
        bad = ~((ages <= max_joint) & (ages >= -max_joint))
        if np.any(bad):
            for arm, cols in self.arm_columns.items():
                if np.any(bad[cols]):
                    worst = float(np.max(ages[cols]))
                    stale.append(f'joints {arm}: ' + ('none yet' if math.isinf(worst) else f'{worst:.2f} s old'))
            armed = list(self.arm_columns.values())
            other = [self.joint_names[i] for i in np.flatnonzero(bad) if not any(i in c for c in armed)]
            if other:
                stale.append(f'joints {other}: stale')
        return stale

    def frame_arrival_delay_s(self) -> float:
        """How much older than training's the frames in hand are: the cameras' median arrival delays, averaged.

        A training sample at t holds each camera's latest frame stamped at or before t; the node holds the
        latest that has *arrived*, which is older by that camera's arrival delay. The model reads the
        scene's phase from the frames, so a chunk anchored at the snapshot plans from a phase that is
        already past, and in closed loop those lags add up to a slower motion. 0 before any frame.
        """
        medians = [a.median_s() for a in self.arrival.values()]
        known = [m for m in medians if m is not None]
        # a frame older than camera_max_age_s is stale anyway: never reach back further than that
        return min(float(np.mean(known)), self.timing.camera_max_age_s) if known else 0.0

    def input_delay_s(self) -> float:
        """How late the slowest camera's frames arrive (90th percentile, recent frames); 0 before any."""
        estimates = [a.estimate_s() for a in self.arrival.values()]
        return max((e for e in estimates if e is not None), default=0.0)

    def synchronized_inputs(self, now: float) -> tuple[float, dict[str, tuple[float, F]], np.ndarray] | None:
        """(t, camera -> (stamp, frame), joint positions): every input's latest stamped at or before
        t = now - input delay. None (skip this inference) if some input has nothing that old yet, e.g.
        just after a reset. Assumes the latest inputs are fresh."""
        t_sync = now - min(self.input_delay_s(), self.timing.camera_max_age_s)
        frames: dict[str, tuple[float, F]] = {}
        for cam in self.camera_names:
            picked = self._frame_history[cam].at(t_sync)
            if picked is None:
                return None
            frames[cam] = picked
        state, stamps = self._joint_history.at(t_sync)
        if not np.all(np.isfinite(state)) or np.any(t_sync - stamps > self.timing.joint_max_age_s):
            return None
        return t_sync, frames, state

    # ------------------------------------------------------------ time jumps

    def note_time(self, now: float) -> None:
        """Detect ROS time going backwards; every entry point calls it with the time it acts at.

        On sim time this happens when the simulator resets an episode or a replayed bag loops. The
        executing chunk and any inference in flight belong to the old timeline (their stamps lie in
        the future of the new one), so they are dropped, and inference is re-paced from now. The
        tolerance absorbs the two threads reading the clock a moment apart.
        """
        if now >= self._latest_now - TIME_JUMP_TOLERANCE_S:
            self._latest_now = max(self._latest_now, now)
            return
        back = self._latest_now - now
        self.stats.time_jumps += 1
        self.epoch += 1
        self.executor.clear()
        self._pending_frames = None
        # Inputs stamped in the new timeline's future came from the old one (they would read as
        # "-19.6 s old"): forget them, so the node waits for the new episode's own.
        horizon = now + TIME_JUMP_TOLERANCE_S
        self.frames = {c: sf for c, sf in self.frames.items() if sf[0] <= horizon}
        self.joint_stamp[self.joint_stamp > horizon] = -np.inf
        for history in self._frame_history.values():
            history.drop_after(horizon)
        self._joint_history.drop_after(horizon)
        if self._on_time_jump is not None:
            self._on_time_jump(back)
        self._latest_now = now

    # -------------------------------------------------------------- control

    def tick(self, now: float) -> TickDecision:
        """The control tick at ``now``: stale inputs drop the executing chunk (its times will be gone
        by the time inputs recover); otherwise the action due when this tick's command acts (``now``, plus
        the link's delay with ``ticks_lead_by_link``), held past the end (starved)."""
        self.note_time(now)
        was_stale, self.stale = self.stale, self.stale_inputs(now)
        action = None
        if self.stale:
            self.executor.clear()
        else:
            # docs/experiments/2026-12-07-remote-policy-closed-loop.md: without the lead, 0 of 20 over 10 ms
            sample = self.executor.step(now + (self.link_delay_s if self.ticks_lead_by_link else 0.0))
            if sample.exhausted:
                self.stats.starved_ticks += 1
            action = sample.action
        return TickDecision(action, self.stale, was_stale, self.joint_pos.copy())

    def take_pending_frames(self) -> dict[str, float] | None:
        """Camera stamps of the newest chunk's inputs, once: call when a tick sent a command."""
        pending, self._pending_frames = self._pending_frames, None
        return pending

    def note_tick_wall(self, wall: float) -> None:
        """The control timer fired at ``wall`` (monotonic seconds): its period, for diagnostics."""
        if self._last_tick_wall is not None:
            self.stats.tick_periods_ms.append((wall - self._last_tick_wall) * 1e3)
        self._last_tick_wall = wall

    def note_commanded(self, pending: Mapping[str, float] | None, now: float) -> None:
        """The first command from a chunk went out at ``now``: how long after each of its frames
        was taken (``pending``, from ``take_pending_frames``), for diagnostics."""
        for cam_stamp in (pending or {}).values():
            self.stats.frame_to_command_ms.append((now - cam_stamp) * 1e3)

    # ------------------------------------------------------------ inference

    def inference_due(self, now: float) -> bool:
        """Start an inference now? Yes once the pacing interval has passed since the previous one
        started, and at once when nothing is executing or time jumped back since."""
        waiting = now < self._next_start and self._paced_epoch == self.epoch
        return not (waiting and self.executor.current is not None)

    def pace(self, started: float, epoch: int) -> None:
        """An inference observed on timeline ``epoch`` started at ``started``: the next one is due a pacing
        interval later (on that timeline)."""
        self._next_start, self._paced_epoch = started + self.timing.pacing_s, epoch

    def inference_finished(self, started: float, now: float, epoch: int) -> None:
        """Record an inference's latency in the clock's time and pace the next one.

        RTC plans in control steps of ROS time; with a simulated clock at a real-time factor other
        than 1 the wall time would freeze the wrong number of them. An inference across a time jump
        measures nothing.
        """
        if epoch == self.epoch:
            self.latency.add(now - started)
        self.pace(started, epoch)

    def chunk_start(self, now: float, frame_stamps: Iterable[float], joint_stamp: float) -> float:
        """The time of the first action of a chunk observed at ``now`` (not ``synchronized``, which
        observes earlier inputs: see ``plan_inference``).

        A training sample at t pairs the latest inputs at or before t with the commands from t on, so a
        chunk computed from the inputs gathered now starts now. Anchoring it at the oldest input instead
        (a camera frame ~50 ms old) runs every chunk that far ahead. Data that stamped its commands
        after they took effect needs the chunk that much earlier.
        """
        mode = self.timing.chunk_start
        if mode == 'snapshot':
            return now - self.timing.action_time_offset_s
        if mode == 'arrival_compensated':
            return now - self.timing.action_time_offset_s - self.frame_arrival_delay_s()
        return min(joint_stamp, *frame_stamps)

    def plan_inference(self, now: float) -> InferenceInputs[F] | None:
        """The inputs for an inference starting at ``now``, its chunk's start time and RTC guide;
        None when inputs are stale (or, ``synchronized``, not yet there for the observation time)."""
        self.note_time(now)
        if self.stale_inputs(now):
            return None
        frames = dict(self.frames)
        state = self.joint_pos.copy()
        if self.timing.chunk_start == 'synchronized':
            synced = self.synchronized_inputs(now)
            if synced is None:
                return None
            t_sync, frames, state = synced
            t_obs = t_sync - self.timing.action_time_offset_s
        else:
            stamps = [frames[c][0] for c in self.camera_names]
            t_obs = self.chunk_start(now, stamps, float(np.min(self.joint_stamp)))
        self.stats.chunk_lead_ms.append((now - t_obs) * 1e3)
        plan = None
        if self.executor.strategy == 'rtc':
            latency = self.latency.estimate_s
            plan = plan_guide(
                self.executor,
                t_obs=t_obs,
                now=now,
                expected_latency_s=(latency if latency is not None else 0.0) + self.link_delay_s,
                dt=self.timing.dt,
                chunk_size=self.timing.chunk_size,
            )
        return InferenceInputs(
            t_obs=t_obs,
            frames={c: frames[c][1] for c in self.camera_names},
            camera_stamps={c: frames[c][0] for c in self.camera_names},
            state=state,
            plan=plan,
            frozen_steps=plan.frozen_steps if plan is not None else 0,
            epoch=self.epoch,
        )

    def accept_chunk(self, actions: np.ndarray, inputs: InferenceInputs[F], now: float) -> ChunkOutcome:
        """Join the chunk an inference on ``inputs`` returned, arriving at ``now``.

        ``invalid`` (NaN that slipped past the model, a wrong shape) and ``refused`` (entirely in the
        past: inference slower than the chunk) set ``stats.last_error``; ``old_timeline`` (observed
        before time jumped back) is dropped silently.
        """
        try:
            chunk = Chunk(
                np.asarray(actions, dtype=np.float64), t0=inputs.t_obs, dt=self.timing.dt, seq=self.stats.chunks
            )
            self.note_time(now)
            if inputs.epoch != self.epoch:
                return ChunkOutcome('old_timeline', chunk)
            report = self.executor.add(chunk, now=now, guide=inputs.plan)
        except ValueError as exc:
            self.stats.nonfinite_chunks += 1
            self.stats.last_error = f'chunk rejected: {exc}'
            return ChunkOutcome('invalid')
        if not report.accepted:
            self.stats.chunks_refused += 1
            self.stats.last_error = f'chunk refused ({report.reason}): inference slower than the chunk'
            return ChunkOutcome('refused', chunk)
        self._pending_frames = inputs.camera_stamps
        self.stats.chunks += 1
        if report.reason == 'joined':
            self.stats.join_jumps.append(report.jump)
            self.stats.joins.append((report.jump, report.raw_jump, report.start_index, inputs.frozen_steps))
        return ChunkOutcome('accepted', chunk)

    # ---------------------------------------------------------- diagnostics

    def chunk_start_text(self) -> str:
        """Where chunks start, for the node's start-up log line."""
        mode = self.timing.chunk_start
        if mode == 'oldest_input':
            return 'chunks start at their oldest input'
        when = {
            'synchronized': 'the time every input has arrived for',
            'arrival_compensated': "their snapshot, and earlier by the frames' arrival delay",
        }.get(mode, 'their snapshot')
        return f'chunks start {self.timing.action_time_offset_s * 1e3:g} ms before {when}'

    def arrival_values(self) -> dict[str, float]:
        """Input delay and each camera's median frame arrival delay, ms (diagnostics)."""
        values: dict[str, float] = {'input_delay_ms': self.input_delay_s() * 1e3}
        values.update({f'camera_{c}_arrival_delay_ms_p50': milliseconds(a.median_s()) for c, a in self.arrival.items()})
        return values

    def rtc_delay_steps_planned(self) -> int:
        est = self.latency.estimate_s
        return math.ceil((est + self.link_delay_s) / self.timing.dt) + 1 if est is not None else 0

    def stats_values(self, arrival: Mapping[str, float]) -> dict[str, object]:
        """Chunk, timing and input counters for diagnostics, with ``arrival`` (taken under the lock) in place."""
        s = self.stats
        return {
            'chunks': s.chunks,
            'chunks_refused_late': s.chunks_refused,
            'time_jumps': s.time_jumps,
            'inference_errors': s.inference_errors,
            'inference_ms_p50': percentile(s.inference_ms, 50),
            'inference_ms_max': max(s.inference_ms, default=float('nan')),
            'rtc_delay_steps_planned': self.rtc_delay_steps_planned(),
            'link_delay_ms': self.link_delay_s * 1e3,
            'control_period_ms_p50': percentile(s.tick_periods_ms, 50),
            'control_period_ms_p99': percentile(s.tick_periods_ms, 99),
            'control_period_ms_max': max(s.tick_periods_ms, default=float('nan')),
            'frame_to_command_ms_p50': percentile(s.frame_to_command_ms, 50),
            'frame_to_command_ms_p99': percentile(s.frame_to_command_ms, 99),
            'chunk_start': self.timing.chunk_start,
            'chunk_start_before_snapshot_ms_p50': percentile(s.chunk_lead_ms, 50),
            **arrival,
            'join_jump_max': max((j[0] for j in s.joins), default=0.0),
            'join_jump_before_rtc_blend_max': max((j[1] for j in s.joins), default=0.0),
            'rtc_joins_later_than_planned': sum(1 for j in s.joins if j[3] and j[2] > j[3] - 1),
            'starved_ticks': s.starved_ticks,
            'bad_images': s.bad_images,
            'bad_joint_states': s.bad_joint_states,
            'last_error': s.last_error or 'none',
        }


def scheduler_for_policy(
    policy_cfg: PolicyConfig,
    *,
    dt: float,
    chunk_size: int,
    action_time_offset_s: float,
    joint_names: Sequence[str],
    camera_names: Sequence[str],
    arm_columns: Mapping[str, Sequence[int]],
    strategy: str,
    on_time_jump: Callable[[float], None] | None = None,
) -> Scheduler:
    """The scheduler a policy file configures for a checkpoint (its rate, chunk size and joints)."""
    inf, staleness = policy_cfg.inference, policy_cfg.staleness
    timing = Timing(
        dt=dt,
        chunk_size=chunk_size,
        execution_horizon=inf.execution_horizon,
        chunk_start=inf.chunk_start,
        action_time_offset_s=action_time_offset_s,
        camera_max_age_s=staleness.camera_max_age_s,
        joint_max_age_s=staleness.joint_max_age_s,
    )
    return Scheduler(
        timing,
        joint_names,
        camera_names,
        arm_columns,
        strategy=strategy,
        ensemble_decay=inf.ensemble_decay,
        latency_margin=inf.rtc_latency_margin,
        latency_quantile=inf.rtc_latency_quantile,
        on_time_jump=on_time_jump,
    )
