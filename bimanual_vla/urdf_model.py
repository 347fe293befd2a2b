"""Minimal URDF reader and forward kinematics (numpy only).

Used to check shipped URDFs against the rig configs and the MuJoCo model, and to turn predicted
joint trajectories into gripper paths for rviz markers on machines without robot_state_publisher
or tf2 (the pip path). It understands what our URDFs use: fixed, revolute, continuous and
prismatic joints with origin/axis/limit/mimic. Geometry is ignored.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class UrdfError(ValueError):
    """The URDF cannot be parsed or is not a tree."""


@dataclass(frozen=True)
class UrdfJoint:
    name: str
    type: str
    parent: str
    child: str
    origin: np.ndarray  # 4x4 parent->joint frame
    axis: np.ndarray  # unit vector in the joint frame
    lower: float | None = None
    upper: float | None = None
    mimic: tuple[str, float, float] | None = None  # (joint, multiplier, offset)


@dataclass
class UrdfModel:
    name: str
    links: list[str]
    joints: dict[str, UrdfJoint]
    root: str
    _children: dict[str, list[UrdfJoint]] = field(default_factory=dict, repr=False)

    @property
    def actuated_joints(self) -> list[str]:
        """Joints that move and are not mimics, in document order."""
        return [j.name for j in self.joints.values() if j.type != 'fixed' and j.mimic is None]

    def forward_kinematics(self, positions: Mapping[str, float]) -> dict[str, np.ndarray]:
        """4x4 pose of every link in the root frame; joints missing from `positions` are at 0."""
        poses = {self.root: np.eye(4)}
        stack = [self.root]
        while stack:
            parent = stack.pop()
            for joint in self._children.get(parent, []):
                q = self._position(joint, positions)
                poses[joint.child] = poses[parent] @ joint.origin @ _joint_motion(joint, q)
                stack.append(joint.child)
        return poses

    def chain(self, link: str) -> list[UrdfJoint]:
        """The joints from the root down to `link`, root first."""
        by_child = {j.child: j for j in self.joints.values()}
        joints: list[UrdfJoint] = []
        while link != self.root:
            joint = by_child.get(link)
            if joint is None:
                raise UrdfError(f'{self.name}: no link {link!r}')
            joints.append(joint)
            link = joint.parent
        return joints[::-1]

    def link_poses(self, chain: list[UrdfJoint], positions: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, 4, 4) poses of the last link of `chain` (see `chain`) for N configurations at once.

        `positions` maps joint names to (N,) arrays (missing joints at 0). One batched matrix
        product per joint instead of a Python walk per configuration: the policy node turns
        every 50-step chunk into gripper paths between two inferences, where the per-step walk
        of `forward_kinematics` cost ~23 ms.
        """
        n = len(next(iter(positions.values()))) if positions else 1
        poses = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()
        for joint in chain:
            if joint.mimic is not None:
                source, multiplier, offset = joint.mimic
                q = multiplier * np.asarray(positions.get(source, np.zeros(n)), dtype=float) + offset
            else:
                q = np.asarray(positions.get(joint.name, np.zeros(n)), dtype=float)
            poses = poses @ joint.origin @ _joint_motions(joint, q)
        return poses

    def _position(self, joint: UrdfJoint, positions: Mapping[str, float]) -> float:
        if joint.mimic is not None:
            source, multiplier, offset = joint.mimic
            return multiplier * float(positions.get(source, 0.0)) + offset
        return float(positions.get(joint.name, 0.0))


def load_urdf(path: str | Path) -> UrdfModel:
    """Parse a URDF file; raise UrdfError with the file name on any structural problem."""
    path = Path(path)
    try:
        root_el = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise UrdfError(f'{path}: cannot read URDF: {exc}') from exc
    return parse_urdf(root_el, str(path))


def parse_urdf(robot: ET.Element, source: str = '<string>') -> UrdfModel:
    if robot.tag != 'robot':
        raise UrdfError(f'{source}: root element is <{robot.tag}>, expected <robot>')
    links = [link.get('name', '') for link in robot.findall('link')]
    joints: dict[str, UrdfJoint] = {}
    for el in robot.findall('joint'):
        joint = _parse_joint(el, source)
        if joint.name in joints:
            raise UrdfError(f'{source}: duplicate joint {joint.name!r}')
        for link in (joint.parent, joint.child):
            if link not in links:
                raise UrdfError(f'{source}: joint {joint.name!r} references unknown link {link!r}')
        joints[joint.name] = joint
    children = {j.child for j in joints.values()}
    roots = [link for link in links if link not in children]
    if len(roots) != 1:
        raise UrdfError(f'{source}: expected exactly one root link, found {roots}')
    model = UrdfModel(name=robot.get('name', ''), links=links, joints=joints, root=roots[0])
    for joint in joints.values():
        model._children.setdefault(joint.parent, []).append(joint)
    return model


def _parse_joint(el: ET.Element, source: str) -> UrdfJoint:
    name = el.get('name', '')
    jtype = el.get('type', '')
    if jtype not in ('fixed', 'revolute', 'continuous', 'prismatic'):
        raise UrdfError(f'{source}: joint {name!r} has unsupported type {jtype!r}')
    parent, child = el.find('parent'), el.find('child')
    if parent is None or child is None:
        raise UrdfError(f'{source}: joint {name!r} needs <parent> and <child>')
    origin_el = el.find('origin')
    xyz = _floats(origin_el.get('xyz', '0 0 0') if origin_el is not None else '0 0 0')
    rpy = _floats(origin_el.get('rpy', '0 0 0') if origin_el is not None else '0 0 0')
    axis_el = el.find('axis')
    axis = np.array(_floats(axis_el.get('xyz', '1 0 0') if axis_el is not None else '1 0 0'))
    if jtype != 'fixed':
        norm = np.linalg.norm(axis)
        if norm == 0:
            raise UrdfError(f'{source}: joint {name!r} has a zero axis')
        axis = axis / norm
    limit = el.find('limit')
    lower = float(limit.get('lower')) if limit is not None and limit.get('lower') is not None else None
    upper = float(limit.get('upper')) if limit is not None and limit.get('upper') is not None else None
    mimic_el = el.find('mimic')
    mimic = None
    if mimic_el is not None:
        mimic = (
            mimic_el.get('joint', ''),
            float(mimic_el.get('multiplier', '1')),
            float(mimic_el.get('offset', '0')),
        )
    origin = np.eye(4)
    origin[:3, :3] = rpy_to_matrix(*rpy)
    origin[:3, 3] = xyz
    return UrdfJoint(name, jtype, parent.get('link', ''), child.get('link', ''), origin, axis, lower, upper, mimic)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split()]


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """URDF convention: fixed-axis X (roll), then Y (pitch), then Z (yaw): R = Rz @ Ry @ Rx."""
    cr, sr, cp, sp, cy, sy = (
        math.cos(roll),
        math.sin(roll),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
    )
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def matrix_to_rpy(rot: np.ndarray) -> tuple[float, float, float]:
    """Inverse of rpy_to_matrix (pitch in [-pi/2, pi/2])."""
    pitch = math.asin(max(-1.0, min(1.0, -rot[2, 0])))
    if abs(math.cos(pitch)) > 1e-9:
        roll = math.atan2(rot[2, 1], rot[2, 2])
        yaw = math.atan2(rot[1, 0], rot[0, 0])
    else:  # gimbal lock: put everything in yaw
        roll = 0.0
        yaw = math.atan2(-rot[0, 1], rot[1, 1])
    return roll, pitch, yaw


def _joint_motion(joint: UrdfJoint, q: float) -> np.ndarray:
    motion = np.eye(4)
    if joint.type in ('revolute', 'continuous'):
        motion[:3, :3] = _axis_angle(joint.axis, q)
    elif joint.type == 'prismatic':
        motion[:3, 3] = joint.axis * q
    return motion


def _joint_motions(joint: UrdfJoint, q: np.ndarray) -> np.ndarray:
    """(N, 4, 4) joint motions for N positions (`_joint_motion`, vectorised)."""
    motion = np.broadcast_to(np.eye(4), (len(q), 4, 4)).copy()
    if joint.type in ('revolute', 'continuous'):
        x, y, z = joint.axis
        c, s = np.cos(q), np.sin(q)
        t = 1 - c
        motion[:, 0, 0], motion[:, 0, 1], motion[:, 0, 2] = t * x * x + c, t * x * y - s * z, t * x * z + s * y
        motion[:, 1, 0], motion[:, 1, 1], motion[:, 1, 2] = t * x * y + s * z, t * y * y + c, t * y * z - s * x
        motion[:, 2, 0], motion[:, 2, 1], motion[:, 2, 2] = t * x * z - s * y, t * y * z + s * x, t * z * z + c
    elif joint.type == 'prismatic':
        motion[:, :3, 3] = q[:, None] * joint.axis
    return motion


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis
    c, s = math.cos(angle), math.sin(angle)
    t = 1 - c
    return np.array(
        [
            [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
            [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
            [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
        ]
    )


# ------------------------------------------------------------------ writing URDF text


def fmt_floats(values) -> str:
    """Numbers as URDF attributes want them: space-separated, 6 significant digits."""
    return ' '.join(f'{float(v):.6g}' for v in values)


def origin_element(xyz, rot: np.ndarray) -> str:
    """An <origin> element for a translation and a rotation matrix."""
    return f'<origin xyz="{fmt_floats(xyz)}" rpy="{fmt_floats(matrix_to_rpy(rot))}"/>'


def segment_visual(vec: np.ndarray, radius: float, material: str, point_radius: float | None = None) -> str:
    """A <visual> cylinder from the link origin to `vec` (typically the next joint's origin).

    Where `vec` is (nearly) zero there is no segment to draw: a sphere of `point_radius`, or
    nothing when `point_radius` is None.
    """
    vec = np.asarray(vec, dtype=float)
    length = float(np.linalg.norm(vec))
    if length < 1e-4:
        if point_radius is None:
            return ''
        return (
            f'<visual><geometry><sphere radius="{point_radius:.4g}"/></geometry><material name="{material}"/></visual>'
        )
    z = vec / length
    ref = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(ref, z)
    x /= np.linalg.norm(x)
    rot = np.column_stack([x, np.cross(z, x), z])
    return (
        f'<visual>{origin_element(vec / 2, rot)}<geometry><cylinder radius="{radius:.4g}" length="{length:.4g}"/>'
        f'</geometry><material name="{material}"/></visual>'
    )
