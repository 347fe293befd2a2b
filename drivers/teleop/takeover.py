"""Takeover mode: a human takes an arm over from the running policy by moving its leader. No ROS.

With ``teleop --takeover`` the leaders do not drive their followers until the operator takes over.
Per leader/follower pair, :class:`TakeoverDetector` watches the leader's mapped pose against where
it was left (its *rest* pose, the first reading or the pose at the last hand-back):

* **take over**: some joint of the leader moves more than ``threshold_rad`` from the rest pose, or
  the operator asks (``teleop/takeover`` topic). The pair's :class:`~.engage.Engagement` is armed
  with the ramp on, so the follower is commanded from its *measured* pose toward the leader at the
  ramp velocity, then follows the leader (no jump whatever the policy left the arm doing). The
  event ``start`` goes out on ``teleop/intervention`` and the policy node mutes that arm;
* **hand back**: the leader held still (no joint moving more than ``still_rad``) for ``release_s``
  while engaged (a hand waiting for the ramp to arrive is not letting go), or the operator asks.
  Teleop stops commanding (the engagement is disarmed), the rest pose becomes the leader's present
  pose, and the event ``end`` lets the policy resume from the measured state.

E-stop, a silent leader and re-arming behave as in plain teleop (the engagement's states); while
the e-stop is active no takeover starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from bimanual_vla.drivers.teleop.engage import DISARMED, ENGAGED, ESTOP, Decision, Engagement

POLICY = 'policy'
START, END = 'start', 'end'
TAKE_ALL_KEY, HAND_BACK_KEY = 't', 'h'
"""Keys on the operator's terminal (the e-stop's reader passes them on): take every arm over, hand all back;
the digits 1-9 take one arm over, in the order the arms are listed."""


def takeover_command(key: str, arms: Sequence[str]) -> str | None:
    """The ``teleop/takeover`` message a terminal key stands for (None: not a takeover key).

    ``t``: every arm (``"left right"``); ``h``: ``release`` (every arm handed back); ``1``..``9``: the
    n-th of ``arms`` alone. A digit past the arms is no key of this map.
    """
    if not arms:
        return None
    if key == TAKE_ALL_KEY:
        return ' '.join(arms)
    if key == HAND_BACK_KEY:
        return 'release'
    if key.isdigit() and 1 <= int(key) <= len(arms):
        return arms[int(key) - 1]
    return None


class TakeoverDetector:
    """Decides, per leader reading, whether the human or the policy drives the follower."""

    def __init__(
        self,
        engagement: Engagement,
        *,
        threshold_rad: float = 0.15,
        still_rad: float = 0.02,
        release_s: float = 1.0,
    ) -> None:
        if not (threshold_rad > 0 and still_rad > 0 and release_s > 0):
            raise ValueError('threshold_rad, still_rad and release_s must be > 0')
        self.engagement = engagement
        engagement.ramp = True  # a takeover never jumps: from the follower's pose at the ramp velocity
        engagement.disarm('policy drives (takeover mode): move the leader to take over')
        self.threshold_rad, self.still_rad, self.release_s = threshold_rad, still_rad, release_s
        self.human = False
        self.reason = ''
        self._rest: list[float] | None = None
        self._still_pose: list[float] | None = None
        self._still_since = 0.0
        self._request: bool | None = None  # the operator's take (True) / release (False), applied next update

    def request(self, human: bool) -> None:
        """The operator's explicit take over (True) or hand back (False), applied at the next reading."""
        self._request = human

    def update(
        self, now: float, leader: Sequence[float] | None, follower: Sequence[float | None] | None
    ) -> tuple[Decision, str | None]:
        """This tick's decision and the takeover event (``start``, ``end`` or None)."""
        event = None
        request, self._request = self._request, None
        if not self.human and leader is not None:
            if self._rest is None:
                self._rest = list(leader)
            moved = max(abs(a - b) for a, b in zip(leader, self._rest, strict=True))
            if (moved > self.threshold_rad or request) and self.engagement.arm() == 'armed':
                self.human, event = True, START
                self.reason = 'operator asked' if request else f'leader moved {moved:.2f} rad'
                self._still_pose, self._still_since = list(leader), now
        elif self.human and leader is not None:
            moved = max(abs(a - b) for a, b in zip(leader, self._still_pose or leader, strict=True))
            if moved > self.still_rad or self.engagement.state != ENGAGED:  # still *while engaged* counts
                self._still_pose, self._still_since = list(leader), now
            still = now - self._still_since >= self.release_s and self.engagement.state == ENGAGED
            if still or request is False:
                self.human, event, self._rest = False, END, list(leader)
                self.reason = 'operator asked' if request is False else f'leader still for {self.release_s:g} s'
                self.engagement.disarm('handed back to the policy: move the leader to take over again')
        decision = self.engagement.update(now, leader, follower)
        if not self.human and decision.state == DISARMED:
            decision = Decision(None, POLICY, decision.reason)
        return decision, event

    def set_estop(self, active: bool) -> str | None:
        """E-stop: teleop stops (the engagement's rules); an arm under human control is handed back (``end``):
        the policy is disabled by the same e-stop, and after it nobody should find the arm muted."""
        self.engagement.set_estop(active)
        if active and self.human:
            self.human, self.reason = False, 'e-stop'
            return END
        return None

    @property
    def state(self) -> str:
        state = self.engagement.state
        return POLICY if not self.human and state == DISARMED else (ESTOP if state == ESTOP else state)
