"""rviz markers for a predicted chunk: where each gripper is going, and what the model is thinking.

With the rig's URDF (``RigConfig.urdf``) the gripper paths are true Cartesian paths: forward
kinematics of every action in the chunk, taking the point where the gripper joint sits on the
gripper body (or, for an arm without a gripper, the child link of its last joint), in the URDF's
root frame. Without a loadable URDF there is no FK, so we fall back to a *joint-space timeline*
(said so in the marker namespace): per arm a strip whose x is time along the chunk (0.5 m per
second), y separates the arms, and z is the gripper joint's position normalised to its limits
(0 = lower, 0.3 m = upper), i.e. "when will it open and close". Both render in rviz; only the
first is a path in space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from bimanual_vla.config import RigConfig, resolve_share_relative

_log = logging.getLogger(__name__)

# Distinct, colour-blind-friendly colours for up to 6 arms (Okabe-Ito).
_ARM_COLOURS = [
    (0.0, 0.447, 0.698),
    (0.902, 0.624, 0.0),
    (0.0, 0.620, 0.451),
    (0.800, 0.475, 0.655),
    (0.337, 0.706, 0.914),
    (0.835, 0.369, 0.0),
]
TIMELINE_M_PER_S = 0.5
TIMELINE_HEIGHT_M = 0.3


@dataclass(frozen=True)
class _ArmPath:
    arm: str
    indices: np.ndarray  # columns of the chunk that are this arm's joints (rig order)
    joint_names: list[str]  # qualified names, same order
    gripper_col: int | None  # column (within `indices`) of the gripper joint, if any
    lower: np.ndarray
    upper: np.ndarray


class GripperPaths:
    """Turns a chunk (H, n_joints in checkpoint order) into one 3-D polyline per arm."""

    def __init__(self, rig: RigConfig, joint_names: list[str], arms: list[str]) -> None:
        self._arms: list[_ArmPath] = []
        col = {name: i for i, name in enumerate(joint_names)}
        for arm_name in arms:
            arm = rig.arm(arm_name)
            names = arm.qualified_joint_names()
            gripper = arm.joint_names.index(arm.gripper) if arm.gripper else None
            self._arms.append(
                _ArmPath(
                    arm=arm.name,
                    indices=np.array([col[n] for n in names]),
                    joint_names=names,
                    gripper_col=gripper,
                    lower=np.array([j.lower for j in arm.joints]),
                    upper=np.array([j.upper for j in arm.joints]),
                )
            )
        self._urdf = None
        self._tips: dict[str, tuple[list, np.ndarray]] = {}  # arm -> (URDF joints root..tip link, tip offset)
        self.frame_id = 'world'
        self.mode = 'joint_space_timeline'
        self.why_no_fk = ''
        try:
            from bimanual_vla.urdf_model import load_urdf

            model = load_urdf(resolve_share_relative(rig.urdf))
            for arm in self._arms:
                cfg = rig.arm(arm.arm)
                joint_name = f'{cfg.name}_{cfg.gripper or cfg.joints[-1].name}'
                joint = model.joints.get(joint_name)
                if joint is None:
                    raise ValueError(f'URDF has no joint {joint_name!r}')
                if cfg.gripper:  # the gripper joint's frame on the gripper body
                    self._tips[arm.arm] = (model.chain(joint.parent), joint.origin)
                else:  # the end of the last joint
                    self._tips[arm.arm] = (model.chain(joint.child), np.eye(4))
            self._urdf = model
            self.frame_id = model.root
            self.mode = 'urdf_fk'
        except Exception as exc:  # no URDF module, file, or joint: degrade to the timeline, and say why
            self.why_no_fk = f'{type(exc).__name__}: {exc}'
            _log.info('gripper paths as joint-space timeline (no FK): %s', self.why_no_fk)

    def paths(self, actions: np.ndarray, dt: float) -> dict[str, np.ndarray]:
        """arm -> (H, 3) points."""
        out: dict[str, np.ndarray] = {}
        for k, arm in enumerate(self._arms):
            q = actions[:, arm.indices]
            if self._urdf is not None:
                chain, offset = self._tips[arm.arm]
                poses = self._urdf.link_poses(chain, dict(zip(arm.joint_names, q.T, strict=True)))
                out[arm.arm] = (poses @ offset)[:, :3, 3]
            else:
                col = arm.gripper_col if arm.gripper_col is not None else len(arm.joint_names) - 1
                level = (q[:, col] - arm.lower[col]) / (arm.upper[col] - arm.lower[col])
                t = np.arange(len(q)) * dt
                y = (k - (len(self._arms) - 1) / 2) * 0.5
                out[arm.arm] = np.stack(
                    [t * TIMELINE_M_PER_S, np.full(len(q), y), np.clip(level, 0, 1) * TIMELINE_HEIGHT_M], axis=1
                )
        return out


def chunk_markers(
    paths: GripperPaths,
    actions: np.ndarray,
    dt: float,
    *,
    stamp,
    reasoning: str,
    frozen_steps: int = 0,
) -> MarkerArray:
    """LINE_STRIP per arm (committed RTC steps drawn brighter) + TEXT_VIEW_FACING with the subtask."""
    array = MarkerArray()
    arm_paths = paths.paths(actions, dt)
    ns_path = 'gripper_path' if paths.mode == 'urdf_fk' else 'gripper_timeline_joint_space'
    for k, (arm, pts) in enumerate(arm_paths.items()):
        r, g, b = _ARM_COLOURS[k % len(_ARM_COLOURS)]
        m = Marker()
        m.header.frame_id = paths.frame_id
        m.header.stamp = stamp
        m.ns = f'{ns_path}/{arm}'
        m.id = 0
        m.type = Marker.LINE_STRIP
        m.action = Marker.ADD
        m.pose.orientation.w = 1.0
        m.scale.x = 0.006
        m.lifetime = Duration(sec=0)
        for i, p in enumerate(pts):
            m.points.append(Point(x=float(p[0]), y=float(p[1]), z=float(p[2])))
            alpha = 1.0 if i < frozen_steps else 0.6
            m.colors.append(ColorRGBA(r=r, g=g, b=b, a=alpha))
        m.color = ColorRGBA(r=r, g=g, b=b, a=0.8)
        array.markers.append(m)
    text = Marker()
    text.header.frame_id = paths.frame_id
    text.header.stamp = stamp
    text.ns = 'reasoning'
    text.id = 0
    text.type = Marker.TEXT_VIEW_FACING
    text.action = Marker.ADD
    centre = np.mean([p[0] for p in arm_paths.values()], axis=0) if arm_paths else np.zeros(3)
    text.pose.position = Point(x=float(centre[0]), y=float(centre[1]), z=float(centre[2]) + 0.35)
    text.pose.orientation.w = 1.0
    text.scale.z = 0.05
    text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    text.text = reasoning
    array.markers.append(text)
    return array
