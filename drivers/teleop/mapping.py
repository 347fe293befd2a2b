"""Leader angles -> follower joint targets: joint by joint, and the gripper's range onto the follower's.

Both arms' angles are already calibrated radians (each through its own calibration file), so a body
joint's target is the leader joint's angle, on the follower joint the rig's ``joint_map`` names. The
gripper is mapped linearly from the leader's (closed, open) range to the follower's and clamped to
it: a leader trigger and a follower jaw rarely span the same angles. Nothing here clamps body joints
to the follower's limits or limits speed: the arm driver's command filter does that for every command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bimanual_vla.config import ArmConfig, LeaderConfig
from bimanual_vla.drivers.servo.calibration import ArmCalibration, load_calibration


@dataclass(frozen=True)
class GripperMap:
    """Linear map of the leader gripper's (closed, open) onto the follower's, clamped to the follower's range."""

    leader_closed: float
    leader_open: float
    follower_closed: float
    follower_open: float

    def __call__(self, leader: float) -> float:
        u = (leader - self.leader_closed) / (self.leader_open - self.leader_closed)
        u = min(max(u, 0.0), 1.0)
        return self.follower_closed + u * (self.follower_open - self.follower_closed)

    def leader_angle(self, follower: float) -> float:
        """The leader angle this map turns into `follower` (clamped to the follower's range first): what a
        scripted leader holds to make the follower's gripper go to `follower`."""
        u = (follower - self.follower_closed) / (self.follower_open - self.follower_closed)
        u = min(max(u, 0.0), 1.0)
        return self.leader_closed + u * (self.leader_open - self.leader_closed)


def leader_gripper_range(leader: LeaderConfig, calibration: ArmCalibration) -> tuple[float, float]:
    """The leader gripper's (closed, open) angles: the rig file's, else its calibrated range, low end closed."""
    grip = leader.gripper
    assert grip is not None
    low, high = calibration.range_radians(grip.joint)
    closed = grip.leader_closed if grip.leader_closed is not None else low
    opened = grip.leader_open if grip.leader_open is not None else high
    return closed, opened


def follower_calibration(follower: ArmConfig) -> ArmCalibration | None:
    """The follower's calibration file, read for its gripper range only (the arm driver applies it); None if absent."""
    if not follower.calibration or not Path(follower.calibration).expanduser().exists():
        return None
    return load_calibration(Path(follower.calibration).expanduser(), arm=follower)


def gripper_map(leader: LeaderConfig, follower: ArmConfig, leader_calibration: ArmCalibration) -> GripperMap | None:
    """The map teleop puts between `leader`'s gripper and `follower`'s (None for a leader without a gripper)."""
    if leader.gripper is None:
        return None
    closed, opened = leader_gripper_range(leader, leader_calibration)
    f_closed, f_open = follower_gripper_range(leader, follower, follower_calibration(follower))
    return GripperMap(closed, opened, f_closed, f_open)


def follower_gripper_range(
    leader: LeaderConfig, follower: ArmConfig, calibration: ArmCalibration | None
) -> tuple[float, float]:
    """The follower gripper's (closed, open): the rig file's, else its calibrated range within its joint limits
    (low end closed), else its joint limits."""
    grip = leader.gripper
    assert grip is not None and follower.gripper is not None
    joint = next(j for j in follower.joints if j.name == follower.gripper)
    low, high = joint.lower, joint.upper
    if calibration is not None and not calibration.is_identity and follower.gripper in calibration.joints:
        cal_low, cal_high = calibration.range_radians(follower.gripper)
        if max(low, cal_low) < min(high, cal_high):
            low, high = max(low, cal_low), min(high, cal_high)
    closed = grip.follower_closed if grip.follower_closed is not None else low
    opened = grip.follower_open if grip.follower_open is not None else high
    return closed, opened


class LeaderMapping:
    """Turns a leader reading (leader joint order) into follower targets (``names``: ``<arm>_<joint>``)."""

    def __init__(self, leader: LeaderConfig, follower: ArmConfig, gripper: GripperMap | None) -> None:
        if (leader.gripper is None) != (gripper is None):
            raise ValueError('a leader with a gripper needs a GripperMap, and one without none')
        self.leader = leader
        self.follower = follower
        self.gripper = gripper
        index = {name: i for i, name in enumerate(leader.joint_names)}
        pairs = [(index[j], leader.follower_joint(j)) for j in leader.body_joints()]
        if leader.gripper is not None:
            assert follower.gripper is not None
            pairs.append((index[leader.gripper.joint], follower.gripper))
        order = {name: i for i, name in enumerate(follower.joint_names)}
        pairs.sort(key=lambda p: order[p[1]])  # follower joint order, as its joint_states has them
        self._sources = [i for i, _ in pairs]
        self._gripper_slot = next((k for k, (_, j) in enumerate(pairs) if j == follower.gripper), None)
        self.joints = [j for _, j in pairs]
        self.names = [f'{follower.name}_{j}' for j in self.joints]

    def __call__(self, leader_positions: Sequence[float | None]) -> list[float] | None:
        """Follower targets, or None when a mapped leader joint has no reading."""
        out: list[float] = []
        for slot, source in enumerate(self._sources):
            value = leader_positions[source]
            if value is None:
                return None
            if slot == self._gripper_slot and self.gripper is not None and self.leader.gripper is not None:
                value = self.gripper(value)
            out.append(value)
        return out
