"""Action-chunk execution in continuous time, and the three ways of joining a new chunk.

A policy returns a chunk of H actions spaced ``dt`` apart whose first action belongs to the
moment its observation was taken (``t0``). Inference takes time, so by the time a chunk
arrives its first few actions are already in the past. Everything here is therefore indexed
by *time*, not by "ticks since arrival": ``Chunk.sample(t)`` is the action for time ``t``,
linearly interpolated between the two neighbouring actions (so a control loop whose rate or
phase differs from the chunk's spacing still gets a continuous signal), and a new chunk
takes over at the index where *now* falls in it (past actions are skipped, never replayed).

Joining strategies (``ChunkExecutor``):

* ``naive``: the new chunk replaces the old one from its first step at or after *now* (the
  aligned index). Cheap, but where the two chunks disagree the robot sees a jump at the switch.
* ``ensemble``: temporal ensembling as in ACT (Zhao et al. 2023): every chunk that covers
  time ``t`` votes, with weight ``exp(-decay * k)`` for the k-th oldest (the oldest chunk weighs
  most). Smooths switches, at the price of lag and of averaging modes.
* ``rtc``: real-time chunking (Black et al. 2025). The new chunk was sampled with a
  ``ChunkGuide`` (see ``plan_guide``) that inpaints its first ``d`` steps with the actions the
  robot executes while inference runs, and softly pulls the rest of the overlap towards the
  old chunk; at arrival it replaces the old chunk like ``naive`` does, and the switch is
  continuous because the two agree where it happens. Guidance is soft (capped at beta), so the
  model's inpainting is close but not exact; given the guide, ``add`` also blends the residual
  away with the same soft mask (``w * committed + (1 - w) * new`` over the overlap): the frozen
  steps, already executed, become exactly the committed ones, and the decaying part cross-fades
  into the model's plan. The residual before blending is reported (``JoinReport.raw_jump``) so
  the guidance quality stays visible.

No ROS here: the policy node, the benchmark and the unit tests all drive these classes with
plain floats (seconds) and numpy arrays (rig units, the checkpoint's joint order).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # the model module imports torch; keep this one importable without it
    from bimanual_vla.policy_node.model import ChunkGuide

Strategy = Literal['naive', 'ensemble', 'rtc']
STRATEGIES: tuple[str, ...] = ('naive', 'ensemble', 'rtc')

# Times within this fraction of a step of a grid point count as on it (float noise in stamps).
_EPS_STEPS = 1e-6


@dataclass(frozen=True)
class Chunk:
    """H actions for times ``t0, t0 + dt, ..., t0 + (H-1) dt`` (seconds, the node's clock)."""

    actions: np.ndarray  # (H, n_joints) float64, rig units
    t0: float
    dt: float
    seq: int = 0  # monotonically increasing id, for diagnostics and benchmarks

    def __post_init__(self) -> None:
        actions = np.asarray(self.actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] < 1:
            raise ValueError(f'chunk actions must be (H >= 1, n_joints), got shape {actions.shape}')
        if not (self.dt > 0 and math.isfinite(self.dt)):
            raise ValueError(f'chunk dt must be a positive number of seconds, got {self.dt}')
        if not math.isfinite(self.t0):
            raise ValueError(f'chunk t0 must be finite, got {self.t0}')
        object.__setattr__(self, 'actions', actions)

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    @property
    def t_end(self) -> float:
        """Time of the last action."""
        return self.t0 + (self.horizon - 1) * self.dt

    def position(self, t: float) -> float:
        """Fractional step index of time ``t`` (0 at ``t0``; may be negative or past the end)."""
        return (t - self.t0) / self.dt

    def covers(self, t: float) -> bool:
        pos = self.position(t)
        return -_EPS_STEPS <= pos <= self.horizon - 1 + _EPS_STEPS

    def sample(self, t: float) -> np.ndarray:
        """Action for time ``t``: linear interpolation between neighbours, clamped to the chunk's ends."""
        pos = min(max(self.position(t), 0.0), self.horizon - 1.0)
        lo = int(math.floor(pos + _EPS_STEPS))
        lo = min(lo, self.horizon - 1)
        frac = pos - lo
        if frac <= _EPS_STEPS or lo == self.horizon - 1:
            return self.actions[lo].copy()
        return (1.0 - frac) * self.actions[lo] + frac * self.actions[lo + 1]


@dataclass(frozen=True)
class Sample:
    """What the executor says to command at one time."""

    action: np.ndarray | None  # None: no chunk yet
    exhausted: bool  # past the end of every chunk: ``action`` repeats the last action (hold)
    chunks_used: int  # how many chunks contributed (>1 only for ensembling)


@dataclass(frozen=True)
class JoinReport:
    """Outcome of ``ChunkExecutor.add``."""

    accepted: bool
    reason: str  # 'first' | 'joined' | 'late' (chunk entirely in the past) | 'stale' (older than current)
    start_index: float  # fractional index of the new chunk at the join time
    jump: float  # max |new - old| over joints of the commanded action at the join time (0 if none)
    raw_jump: float = 0.0  # the same before RTC residual blending (== jump for naive and ensemble)


class ChunkExecutor:
    """Holds the executing chunk(s) and answers "what to command at time t"."""

    def __init__(self, strategy: Strategy = 'rtc', *, ensemble_decay: float = 0.1) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f'unknown chunking strategy {strategy!r}; choose one of {", ".join(STRATEGIES)}')
        if not (ensemble_decay >= 0 and math.isfinite(ensemble_decay)):
            raise ValueError(f'ensemble_decay must be >= 0, got {ensemble_decay}')
        self.strategy: Strategy = strategy
        self.ensemble_decay = float(ensemble_decay)
        # Oldest first. Ensembling: every chunk still covering the future. naive/rtc: the active chunk,
        # plus during a switch the previous one, which stays in effect until ``_switch_at``.
        self._chunks: list[Chunk] = []
        self._switch_at = -math.inf

    # ------------------------------------------------------------------ state

    @property
    def current(self) -> Chunk | None:
        """The newest chunk (the one a guide for the next inference is built against)."""
        return self._chunks[-1] if self._chunks else None

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(self._chunks)

    def clear(self) -> None:
        """Forget every chunk (after a pause their times are in the past and must not be resumed)."""
        self._chunks.clear()
        self._switch_at = -math.inf

    def end_time(self) -> float | None:
        """Latest time any held chunk covers."""
        return max((c.t_end for c in self._chunks), default=None)

    # ------------------------------------------------------------------- join

    def add(self, chunk: Chunk, now: float, guide: GuidePlan | None = None) -> JoinReport:
        """Join ``chunk`` at time ``now``. Rejects chunks entirely in the past or older than the current one.

        ``guide``: the plan the chunk was sampled with (``rtc`` only); its residual is blended away.
        """
        if not np.all(np.isfinite(chunk.actions)):
            raise ValueError('chunk contains NaN/Inf actions; refusing to execute it')
        current = self.current
        if current is not None and chunk.actions.shape[1] != current.actions.shape[1]:
            raise ValueError(f'chunk has {chunk.actions.shape[1]} joints, the executing one {current.actions.shape[1]}')
        start = chunk.position(now)
        if current is not None and chunk.t0 < current.t0:
            return JoinReport(False, 'stale', start, 0.0)
        if chunk.position(now) > chunk.horizon - 1 + _EPS_STEPS:
            return JoinReport(False, 'late', start, 0.0)
        if self.strategy == 'ensemble':
            at = now
        else:
            # Switch on the new chunk's next grid point: between two of its steps the new chunk is a chord
            # that the old one (on another grid) need not follow, on a step both agree on (RTC) it is exact.
            at = chunk.t0 + max(0, math.ceil(start - _EPS_STEPS)) * chunk.dt
        before = self.sample(at).action if current is not None else None
        raw_jump = float(np.max(np.abs(chunk.sample(at) - before))) if before is not None else 0.0
        if self.strategy == 'rtc' and guide is not None and current is not None:
            chunk = blend_residual(chunk, guide)
        if self.strategy == 'ensemble':
            self._chunks.append(chunk)
            self._prune(now)
        else:
            active = self._active(now)
            self._chunks = [active, chunk] if active is not None else [chunk]
            self._switch_at = at
        after = self.sample(at).action
        jump = float(np.max(np.abs(after - before))) if before is not None and after is not None else 0.0
        if self.strategy != 'rtc':
            raw_jump = jump
        return JoinReport(True, 'first' if current is None else 'joined', start, jump, raw_jump)

    def _active(self, t: float) -> Chunk | None:
        """naive/rtc: the chunk in effect at ``t``."""
        if not self._chunks:
            return None
        if len(self._chunks) > 1 and t < self._switch_at - _EPS_STEPS * self._chunks[-1].dt:
            return self._chunks[-2]
        return self._chunks[-1]

    def _prune(self, now: float) -> None:
        """Drop chunks that end before ``now``, but always keep the newest (it is what we hold)."""
        keep = [c for c in self._chunks[:-1] if c.t_end + _EPS_STEPS * c.dt >= now]
        self._chunks = keep + self._chunks[-1:]

    # ----------------------------------------------------------------- sample

    def sample(self, t: float) -> Sample:
        """The action to command at time ``t`` (does not change what is held)."""
        if not self._chunks:
            return Sample(None, False, 0)
        if self.strategy != 'ensemble':
            chunk = self._active(t)
            assert chunk is not None
            return Sample(chunk.sample(t), chunk.position(t) > chunk.horizon - 1 + _EPS_STEPS, 1)
        covering = [c for c in self._chunks if c.covers(t)]
        if not covering:
            newest = self._chunks[-1]
            # Before the newest chunk starts (only with odd clocks) use its first action; after, hold its last.
            return Sample(newest.sample(t), t > newest.t_end, 1)
        weights = np.exp(-self.ensemble_decay * np.arange(len(covering)))  # oldest first weighs most (ACT)
        stacked = np.stack([c.sample(t) for c in covering])
        action = (weights[:, None] * stacked).sum(axis=0) / weights.sum()
        return Sample(action, False, len(covering))

    def step(self, t: float) -> Sample:
        """``sample(t)`` for the control loop, which also forgets chunks that ended before ``t``."""
        if self.strategy == 'ensemble' and self._chunks:
            self._prune(t)
        elif len(self._chunks) > 1 and self._active(t) is self._chunks[-1]:
            self._chunks = self._chunks[-1:]  # the switch has happened
        return self.sample(t)

    def committed(self, times: Sequence[float]) -> np.ndarray | None:
        """What this executor will command at each of ``times`` if nothing new arrives, (k, n_joints)."""
        if not self._chunks:
            return None
        return np.stack([self.sample(t).action for t in times])


# ------------------------------------------------------------------- RTC guide


def soft_mask(frozen: int, overlap: int) -> np.ndarray:
    """Real-time chunking's guidance weights over the overlap with the executing chunk.

    1 for the first ``frozen`` steps (executed before the new chunk can arrive), then an
    exponential decay to 0 over the rest of the overlap (Black et al. 2025, eq. 5):
    ``c_i = (overlap - i) / (overlap - frozen + 1)``, ``w_i = c_i (e^{c_i} - 1) / (e - 1)``.
    """
    if overlap < 0 or frozen < 0:
        raise ValueError(f'frozen ({frozen}) and overlap ({overlap}) must be >= 0')
    frozen = min(frozen, overlap)
    weights = np.zeros(overlap, dtype=np.float64)
    weights[:frozen] = 1.0
    idx = np.arange(frozen, overlap, dtype=np.float64)
    c = (overlap - idx) / (overlap - frozen + 1)
    weights[frozen:] = c * np.expm1(c) / math.expm1(1.0)
    return weights


class LatencyEstimator:
    """Inference latency to plan the next guide with: a quantile of the last few measurements plus a margin.

    The default (the max, plus 20 %) is conservative. Underestimating lets the chunk arrive after
    steps it was free to change have been executed: a jump, scaled by 1 - soft-mask weight, and that
    weight is still near 1 just past the frozen steps. Overestimating freezes steps that the new
    chunk arrives in time for. They are executed as the old chunk planned them, so a new observation
    steers the arms only that much later. A lower quantile trades a rare small join for that lag.
    """

    def __init__(
        self, window: int = 10, initial_s: float | None = None, margin: float = 0.2, quantile: float = 1.0
    ) -> None:
        if margin < 0:
            raise ValueError(f'margin must be >= 0, got {margin}')
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f'quantile must lie in [0, 1], got {quantile}')
        self.margin = float(margin)
        self.quantile = float(quantile)
        self._recent: deque[float] = deque(maxlen=window)
        if initial_s is not None:
            self._recent.append(float(initial_s))

    def add(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0:
            self._recent.append(float(seconds))

    @property
    def estimate_s(self) -> float | None:
        if not self._recent:
            return None
        return float(np.quantile(np.asarray(self._recent), self.quantile)) * (1.0 + self.margin)


@dataclass(frozen=True)
class GuidePlan:
    """The committed actions and soft mask for one inference, before wrapping as the model's ChunkGuide."""

    actions: np.ndarray  # (k, n_joints): what the robot will be commanded at new-chunk steps 0..k-1
    weights: np.ndarray  # (k,)
    frozen_steps: int  # d: steps executed before the result is expected
    t0: float  # the new chunk's first-action time (the observation stamp)

    def to_chunk_guide(self, max_guidance: float = 5.0, jacobian: str = 'exact') -> ChunkGuide:
        from bimanual_vla.policy_node.model import ChunkGuide

        return ChunkGuide(
            actions=self.actions.copy(), weights=self.weights.copy(), max_guidance=max_guidance, jacobian=jacobian
        )


def blend_residual(chunk: Chunk, guide: GuidePlan) -> Chunk:
    """``w * committed + (1 - w) * new`` over the guided steps: what the model's soft guidance aimed for, exactly."""
    if abs(guide.t0 - chunk.t0) > _EPS_STEPS * chunk.dt:
        raise ValueError(f'guide is for a chunk at t0={guide.t0}, not {chunk.t0}')
    k = min(len(guide.weights), chunk.horizon)
    if guide.actions.shape[1:] != chunk.actions.shape[1:]:
        raise ValueError(f'guide has {guide.actions.shape[1]} joints, the chunk {chunk.actions.shape[1]}')
    actions = chunk.actions.copy()
    w = guide.weights[:k, None]
    actions[:k] = w * guide.actions[:k] + (1.0 - w) * actions[:k]
    return Chunk(actions, t0=chunk.t0, dt=chunk.dt, seq=chunk.seq)


def delay_steps(*, t_obs: float, now: float, expected_latency_s: float, dt: float) -> int:
    """d: how many steps of the new chunk (first at ``t_obs``) are committed before its result arrives.

    The result is expected at fractional step ``x = (now + latency - t_obs) / dt``. Because commands
    interpolate between neighbouring steps, everything up to and including step ``ceil(x)`` has
    shaped what the robot was told before (and at) the switch, so ``d = ceil(x) + 1``: the latency
    rounded up to whole steps, plus the step the switch interpolates towards.
    """
    steps = (now + max(expected_latency_s, 0.0) - t_obs) / dt
    return max(0, math.ceil(steps - _EPS_STEPS) + 1)


def plan_guide(
    executor: ChunkExecutor,
    *,
    t_obs: float,
    now: float,
    expected_latency_s: float,
    dt: float,
    chunk_size: int,
) -> GuidePlan | None:
    """The RTC guide for an inference on an observation taken at ``t_obs``, starting at ``now``.

    New-chunk step ``i`` is time ``t_obs + i dt``. Steps up to the expected arrival
    (``d``, see ``delay_steps``) get the committed action with weight 1; the rest
    of the overlap with the executing chunk decays to 0; beyond the executing chunk nothing is
    constrained (the guide is shorter than the chunk). ``None`` when nothing is executing.

    A chunk that is late or lost leaves the executor holding its last action past its end: the frozen
    steps then reach past the end, and hold that action (``committed`` does), so the next chunk starts
    where the arms were held instead of jumping to wherever the model would have been by then.
    """
    end = executor.end_time()
    if end is None:
        return None
    delay = delay_steps(t_obs=t_obs, now=now, expected_latency_s=expected_latency_s, dt=dt)
    overlap = max(min(chunk_size, math.floor((end - t_obs) / dt + _EPS_STEPS) + 1), min(delay, chunk_size))
    if overlap <= 0:
        return None
    frozen = min(delay, overlap)
    times = [t_obs + i * dt for i in range(overlap)]
    actions = executor.committed(times)
    assert actions is not None
    return GuidePlan(actions=actions, weights=soft_mask(frozen, overlap), frozen_steps=frozen, t0=t_obs)
