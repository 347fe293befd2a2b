"""The command gate: the last thing every streamed joint command passes through.

A learned policy will, sooner or later, output something a $3,000 rig should not follow: a
target past a joint limit, a jump across the workspace when a chunk switches badly, a NaN
from a numerical blow-up. The gate sits between the chunk executor and the arm drivers and
enforces, on every tick and for every joint:

* **enable / e-stop**: nothing is sent while disabled (the default at start unless configured)
  or while the e-stop is engaged. Engaging the e-stop also disables, so releasing it never
  resumes motion by itself; enabling while the e-stop is engaged is refused.
* **fresh inputs**: nothing is sent unless every camera and joint input is fresh.
* **NaN/Inf**: a non-finite proposal is rejected and the last safe command is repeated (hold);
  the rejection is counted for diagnostics.
* **joint limits**: targets are clipped to the rig config's ``[lower, upper]``.
* **max velocity**: the command moves at most ``max_velocity_rad_s / control_rate_hz`` per tick
  from the previous command. After any pause (disabled, e-stop, stale inputs) the previous
  command is forgotten and the first step starts from the *measured* joint positions, so
  resuming never jumps to where the robot was told to be long ago.

If the measured position is already outside the limits (a calibration offset, a joint pushed
by hand) the gate does not yank it inside: it moves towards the limits at the max step.

* **human takeover** (:meth:`CommandGate.mute`, fed from ``teleop/intervention`` by
  ``takeover.py``): the columns of an arm a human has taken over are not commanded (the command
  output sends nothing to that arm) and their reference follows the *measured* position every
  tick, so when the arm is handed back its first command starts where the human left it and moves
  at the max step from there: a release is a resume after a pause, for that arm only.

No ROS here: the node feeds it numpy arrays in the checkpoint's joint order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bimanual_vla.config import RigConfig

# Why a tick sent nothing, or sent something other than the proposal.
OK = 'ok'
ESTOP = 'estop'
DISABLED = 'disabled'
STALE = 'stale_inputs'
NO_ACTION = 'no_action'
NO_REFERENCE = 'no_reference'
HELD_NONFINITE = 'held_nonfinite'
REJECTED_NONFINITE = 'rejected_nonfinite'


@dataclass(frozen=True)
class GateResult:
    command: np.ndarray | None  # what to send, or None to send nothing this tick
    reason: str  # one of the module constants
    limited: bool = False  # the proposal was clipped to joint limits
    slowed: bool = False  # the step was clamped to the max velocity


@dataclass
class GateCounters:
    commands: int = 0
    nonfinite_rejected: int = 0
    limit_clips: int = 0
    velocity_clamps: int = 0
    blocked: dict[str, int] = field(default_factory=dict)


class CommandGate:
    """Joint limits, velocity cap, NaN/Inf hold, e-stop and enable, applied to one command per tick."""

    def __init__(
        self,
        joint_names: list[str],
        lower: np.ndarray,
        upper: np.ndarray,
        max_step: float | np.ndarray,
        *,
        enabled: bool = False,
    ) -> None:
        self.joint_names = list(joint_names)
        n = len(self.joint_names)
        self.lower = np.asarray(lower, dtype=np.float64).reshape(n)
        self.upper = np.asarray(upper, dtype=np.float64).reshape(n)
        self.max_step = np.broadcast_to(np.asarray(max_step, dtype=np.float64), (n,)).copy()
        if not (np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper))):
            raise ValueError('joint limits must be finite')
        if np.any(self.lower >= self.upper):
            raise ValueError('every joint needs lower < upper')
        if not np.all(self.max_step > 0):
            raise ValueError(f'max step per tick must be > 0, got {self.max_step}')
        self._enabled = bool(enabled)
        self._estop = False
        self._last: np.ndarray | None = None
        self._muted = np.zeros(n, dtype=bool)  # columns a human has taken over (teleop/intervention)
        self.muted_arms: frozenset[str] = frozenset()
        self.counters = GateCounters()

    @classmethod
    def from_rig(
        cls, rig: RigConfig, joint_names: list[str], *, max_velocity_rad_s: float, enabled: bool = False
    ) -> CommandGate:
        """Limits for ``joint_names`` (qualified ``<arm>_<joint>``) from the rig; step = velocity / control rate."""
        limits: dict[str, tuple[float, float]] = {}
        for arm in rig.arms:
            for joint in arm.joints:
                limits[f'{arm.name}_{joint.name}'] = (joint.lower, joint.upper)
        missing = [n for n in joint_names if n not in limits]
        if missing:
            raise ValueError(f'joints {missing} are not in rig {rig.name!r} (rig joints: {list(limits)})')
        lower = np.array([limits[n][0] for n in joint_names])
        upper = np.array([limits[n][1] for n in joint_names])
        return cls(joint_names, lower, upper, max_velocity_rad_s / rig.control_rate_hz, enabled=enabled)

    # --------------------------------------------------------------- switches

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def estop(self) -> bool:
        return self._estop

    def set_enabled(self, enabled: bool) -> tuple[bool, str]:
        """Enable or disable; refuses to enable while the e-stop is engaged. Returns (success, message)."""
        if enabled and self._estop:
            return False, 'e-stop is engaged: release it (estop=false) before enabling'
        self._enabled = bool(enabled)
        if not enabled:
            self.reset()
        return True, 'enabled' if enabled else 'disabled'

    def set_estop(self, engaged: bool) -> None:
        """Engaging disables too, so releasing the e-stop needs an explicit enable to move again."""
        self._estop = bool(engaged)
        if engaged:
            self._enabled = False
            self.reset()

    def reset(self) -> None:
        """Forget the last command: the next one starts from the measured position."""
        self._last = None

    def mute(self, columns: np.ndarray, arms: frozenset[str] = frozenset()) -> None:
        """The joints (bool per column) a human controls now; ``arms`` names them for the command output."""
        self._muted = np.asarray(columns, dtype=bool).reshape(self.lower.shape).copy()
        self.muted_arms = frozenset(arms)

    @property
    def muted(self) -> np.ndarray:
        return self._muted.copy()

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._last is None else self._last.copy()

    # ------------------------------------------------------------------- tick

    def _blocked(self, reason: str) -> GateResult:
        self.counters.blocked[reason] = self.counters.blocked.get(reason, 0) + 1
        return GateResult(None, reason)

    def step(self, proposed: np.ndarray | None, *, measured: np.ndarray | None, inputs_fresh: bool) -> GateResult:
        """Filter one proposed command (checkpoint joint order, rig units)."""
        if self._estop:
            self.reset()
            return self._blocked(ESTOP)
        if not self._enabled:
            self.reset()
            return self._blocked(DISABLED)
        if not inputs_fresh:
            self.reset()
            return self._blocked(STALE)
        if proposed is None:
            return self._blocked(NO_ACTION)
        proposed = np.asarray(proposed, dtype=np.float64)
        if proposed.shape != self.lower.shape or not np.all(np.isfinite(proposed)):
            self.counters.nonfinite_rejected += 1
            if self._last is None:
                return self._blocked(REJECTED_NONFINITE)
            self.counters.commands += 1
            return GateResult(self._last.copy(), HELD_NONFINITE)
        reference = self._last
        if reference is None:
            if measured is None:
                return self._blocked(NO_REFERENCE)
            reference = np.asarray(measured, dtype=np.float64)
            if reference.shape != self.lower.shape or not np.all(np.isfinite(reference)):
                return self._blocked(NO_REFERENCE)
        if self._muted.any():  # a human drives these joints: follow where they are, command nothing there
            reference = reference.copy()
            here = np.asarray(measured, dtype=np.float64) if measured is not None else reference
            if here.shape == reference.shape:
                keep = self._muted & np.isfinite(here)
                reference[keep] = here[keep]
        target = np.clip(proposed, self.lower, self.upper)
        limited = bool(np.any((target != proposed) & ~self._muted))
        delta = np.where(self._muted, 0.0, target - reference)
        step = np.clip(delta, -self.max_step, self.max_step)
        slowed = bool(np.any(step != delta))
        command = reference + step
        self._last = command
        self.counters.commands += 1
        self.counters.limit_clips += int(limited)
        self.counters.velocity_clamps += int(slowed)
        return GateResult(command.copy(), OK, limited=limited, slowed=slowed)
