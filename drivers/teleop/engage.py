"""When a leader may drive its follower: the start check, the slow ramp, leader loss and e-stop. No ROS.

One :class:`Engagement` per leader/follower pair, updated on every leader reading (and on every
tick without one), with times passed in. It answers what to command this tick: the leader's targets
(engaged), a point moving from the follower's pose toward them (ramping), or nothing (holding: the
arm driver keeps its last target and its watchdog holds). States, each with a reason for diagnostics:

* ``disarmed``: not asked to drive, or an e-stop was released and nobody has re-armed since;
* ``estop``: the e-stop is active (commands would be refused by the driver anyway);
* ``waiting``: armed, but no complete leader reading or no fresh follower pose yet;
* ``too_far``: armed, and some joint of leader and follower differs by more than the tolerance;
  without ``ramp`` nothing moves until the operator brings the leader to the follower;
* ``ramping``: armed with ``ramp``: the command starts at the follower's pose and moves toward the
  leader at ``ramp_velocity_rad_s`` per joint, then hands over once within the tolerance;
* ``engaged``: commands are the leader's targets, every reading;
* ``leader_lost``: no complete leader reading for ``timeout_s``: nothing is commanded. When the
  leader answers again the start check runs again (the follower held while the leader may have moved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DISARMED, ESTOP, WAITING, TOO_FAR, RAMPING, ENGAGED, LEADER_LOST = (
    'disarmed',
    'estop',
    'waiting',
    'too_far',
    'ramping',
    'engaged',
    'leader_lost',
)


@dataclass(frozen=True)
class Decision:
    """What to send this tick (None: nothing) and the state with its reason."""

    command: list[float] | None
    state: str
    reason: str


class Engagement:
    """The engage/hold logic of one leader driving one follower; not thread-safe (the caller locks)."""

    def __init__(
        self,
        joints: Sequence[str],
        *,
        tolerance_rad: float,
        timeout_s: float,
        ramp: bool = False,
        ramp_velocity_rad_s: float = 0.5,
        armed: bool = True,
    ) -> None:
        if tolerance_rad <= 0 or timeout_s <= 0 or ramp_velocity_rad_s <= 0:
            raise ValueError('tolerance_rad, timeout_s and ramp_velocity_rad_s must be > 0')
        self.joints = list(joints)
        self.tolerance_rad = tolerance_rad
        self.timeout_s = timeout_s
        self.ramp = ramp
        self.ramp_velocity_rad_s = ramp_velocity_rad_s
        self.armed = armed
        self.estopped = False
        self.state = WAITING if armed else DISARMED
        self.reason = 'waiting for the leader and the follower' if armed else 'not armed'
        self._last_leader: float | None = None  # when the last complete leader reading came
        self._ramp_pose: list[float] | None = None
        self._ramp_time = 0.0
        self.engagements = 0
        self.leader_losses = 0

    # ---------------------------------------------------------------- inputs

    def arm(self) -> str:
        """Ask to drive (again); refused while the e-stop is active. Returns what happens."""
        if self.estopped:
            return 'refused: the e-stop is active; release it first'
        self.armed = True
        if self.state in (DISARMED, LEADER_LOST):
            self._set(WAITING, 'armed: checking that leader and follower poses match')
        return 'armed'

    def disarm(self, reason: str = 'disarmed') -> None:
        self.armed = False
        self._ramp_pose = None
        if not self.estopped:
            self._set(DISARMED, reason)

    def set_estop(self, active: bool) -> None:
        """E-stop stops teleop; releasing it leaves teleop disarmed until :meth:`arm` is called again."""
        if active and not self.estopped:
            self.estopped = True
            self.armed = False
            self._ramp_pose = None
            self._set(ESTOP, 'e-stop active')
        elif not active and self.estopped:
            self.estopped = False
            self._set(DISARMED, 'e-stop released: re-arm teleop (teleop/enable) to drive again')

    def _set(self, state: str, reason: str) -> None:
        if state == ENGAGED and self.state != ENGAGED:
            self.engagements += 1
        if state == LEADER_LOST and self.state != LEADER_LOST:
            self.leader_losses += 1
        self.state, self.reason = state, reason

    # ----------------------------------------------------------------- update

    def update(
        self,
        now: float,
        leader: Sequence[float] | None,
        follower: Sequence[float | None] | None,
    ) -> Decision:
        """Decide this tick. ``leader``: the mapped targets of a complete reading, or None (none this tick);
        ``follower``: the follower's measured pose in the same joint order, or None when it is not fresh."""
        if leader is not None:
            self._last_leader = now
        elif self._last_leader is not None and now - self._last_leader > self.timeout_s:
            if self.state not in (ESTOP, DISARMED):
                self._ramp_pose = None
                self._set(LEADER_LOST, f'leader silent for {now - self._last_leader:.2f} s: follower holds')
            return self._hold()
        if self.estopped or not self.armed:
            return self._hold()
        if leader is None:
            return self._hold()  # a missed read inside the timeout: hold this tick, keep the state
        if self.state == ENGAGED:
            return Decision(list(leader), ENGAGED, self.reason)
        if self.state == RAMPING and self._ramp_pose is not None:
            return self._ramp_step(now, leader)
        if follower is None or any(p is None for p in follower):
            self._set(WAITING, 'waiting for the follower pose (joint_states)')
            return self._hold()
        measured = [float(p) for p in follower if p is not None]
        worst = max(range(len(self.joints)), key=lambda i: abs(leader[i] - measured[i]))
        error = abs(leader[worst] - measured[worst])
        if error <= self.tolerance_rad:
            self._set(ENGAGED, f'engaged (poses matched within {error:.3f} rad)')
            return Decision(list(leader), ENGAGED, self.reason)
        if self.ramp:
            self._ramp_pose, self._ramp_time = measured, now
            self._set(RAMPING, f'ramping the follower to the leader at {self.ramp_velocity_rad_s:g} rad/s')
            return Decision(list(self._ramp_pose), RAMPING, self.reason)
        self._set(
            TOO_FAR,
            f'{self.joints[worst]}: leader {leader[worst]:+.3f} rad, follower {measured[worst]:+.3f} rad '
            f'(more than {self.tolerance_rad:g} apart): move the leader to the follower, or start with ramp',
        )
        return self._hold()

    def _ramp_step(self, now: float, leader: Sequence[float]) -> Decision:
        assert self._ramp_pose is not None
        step = self.ramp_velocity_rad_s * max(0.0, now - self._ramp_time)
        self._ramp_time = now
        pose = []
        for current, target in zip(self._ramp_pose, leader, strict=True):
            delta = target - current
            pose.append(target if abs(delta) <= step else current + (step if delta > 0 else -step))
        self._ramp_pose = pose
        if max(abs(a - b) for a, b in zip(pose, leader, strict=True)) <= self.tolerance_rad:
            self._ramp_pose = None
            self._set(ENGAGED, 'engaged (ramped to the leader)')
            return Decision(list(leader), ENGAGED, self.reason)
        return Decision(pose, RAMPING, self.reason)

    def _hold(self) -> Decision:
        return Decision(None, self.state, self.reason)
