"""Human takeover on the policy's side: mute the arms a human drives, resume them from where they are.

The ``teleop`` node in takeover mode publishes, latched, on ``teleop/intervention`` the arms a human
has taken over with a leader arm (:mod:`bimanual_vla.intervention_msgs` is its format). Here:

* an arm taken over is **muted**: the safety gate (:meth:`CommandGate.mute`) stops commanding its
  joints and keeps their reference at the measured position, and the command output sends that
  arm nothing, so the follower obeys teleop alone (the arm driver takes the newest command source);
* an arm handed back is resumed as after a pause: the executing chunk is dropped, so the next chunk
  is planned from the measured state of both arms (with real-time chunking, nothing guides it toward
  what the old chunk meant for an arm the human has since moved), and the gate's first command for
  that arm starts at its measured position and moves at most the max step per tick.

:class:`Takeover` is ROS-free; :func:`attach` is the node's one line of wiring (the subscription).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bimanual_vla.intervention_msgs import parse_intervention


class Takeover:
    """Which of the policy's arms a human controls, and what changes when that changes."""

    def __init__(self, arms: Mapping[str, tuple[list[str], np.ndarray]], n_joints: int) -> None:
        """``arms``: arm -> (qualified joint names, their columns in the checkpoint's order)."""
        self.arms = {arm: np.asarray(cols, dtype=np.int64) for arm, (_names, cols) in arms.items()}
        self.n_joints = n_joints
        self.human: frozenset[str] = frozenset()
        self.takeovers = 0
        self.releases = 0

    def columns(self) -> np.ndarray:
        mask = np.zeros(self.n_joints, dtype=bool)
        for arm in self.human:
            mask[self.arms[arm]] = True
        return mask

    def update(self, text: str) -> tuple[frozenset[str], frozenset[str]]:
        """A ``teleop/intervention`` message: (arms taken over, arms handed back); ValueError if malformed.
        Arms this policy does not command are ignored."""
        now = parse_intervention(text) & set(self.arms)
        taken, released = now - self.human, self.human - now
        self.human = frozenset(now)
        self.takeovers += len(taken)
        self.releases += len(released)
        return frozenset(taken), frozenset(released)

    def apply(self, text: str, gate: Any, scheduler: Any) -> str | None:
        """Update from ``text`` and act on the gate and scheduler (call under the node's lock); a log line
        when something changed."""
        taken, released = self.update(text)
        if not taken and not released:
            return None
        gate.mute(self.columns(), self.human)
        if released:
            scheduler.executor.clear()  # restart from the measured state: the next chunk plans it
        parts = [f'{", ".join(sorted(taken))} taken over by a human: muted'] if taken else []
        if released:
            parts.append(f'{", ".join(sorted(released))} handed back: resuming from the measured pose')
        return '; '.join(parts)


def attach(
    node: Any, arms: Mapping[str, tuple[list[str], np.ndarray]], lock: Any, gate: Any, scheduler: Any
) -> Takeover:
    """Subscribe ``node`` to ``teleop/intervention`` (any publisher, latched values too) and apply it."""
    from std_msgs.msg import String

    from bimanual_vla import topics
    from bimanual_vla.ros_utils import subscribe_from_any_publisher

    takeover = Takeover(arms, len(gate.joint_names))

    def on_message(msg: String) -> None:
        try:
            with lock:
                line = takeover.apply(msg.data, gate, scheduler)
        except ValueError as exc:
            node.get_logger().warning(f'{topics.TELEOP_INTERVENTION}: {exc}')
            return
        if line:
            node.get_logger().info(line)

    callback: Callable[[String], None] = on_message
    subscribe_from_any_publisher(node, String, topics.TELEOP_INTERVENTION, callback, latched=True)
    return takeover
