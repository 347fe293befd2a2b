"""The MuJoCo ALOHA bimanual scene, driven by joint position targets; no ROS here.

The scene description (meshes, arms, cameras, objects) is the MJCF shipped inside the
installed ``gym-aloha`` package, loaded directly with ``mujoco``: gym-aloha's own env
goes through dm_control and renders three 480x640 cameras with shadows and 4x MSAA
on every step (~300 ms), which is far too slow for a 50 Hz control loop.

What this module adds on top of the MJCF:

* tasks ``transfer_cube`` and ``insertion``, object poses drawn from a seed over the
  same ranges gym-aloha uses, so a seed means the same episode every time;
* a mapping from the rig's joint names (``config/rigs/aloha_sim.yaml``) onto the
  MJCF's position actuators. The ALOHA model has no gripper joint and no equality
  constraint between the fingers: each finger is a slide joint with its own position
  actuator. The rig's ``gripper`` joint is the *left* finger's slide position in metres
  (0.021 closed .. 0.057 open) and the right finger's actuator gets the mirrored
  (negated) target, exactly as the real ALOHA puppet grippers are driven;
* the same safety the real arm driver applies: targets clamped to the rig's limits,
  NaN/Inf rejected (the previous target is kept), and at most ``max_step_rad`` of
  target change per control tick, nor more than ``max_velocity_rad_s`` allows in one
  (fixed, sim-time) control period;
* the reward stages and success of gym-aloha's tasks (0..4; success = stage 4),
  computed from the contact list after every control step;
* offscreen rendering (:class:`SceneRenderer`) of only the cameras asked for, with
  shadows and multisampling off.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Headless by default: MuJoCo picks its GL backend when first imported.
os.environ.setdefault('MUJOCO_GL', 'egl')
import mujoco

from bimanual_vla.config import ArmConfig, ConfigError, RigConfig

TASKS = ('transfer_cube', 'insertion')
MAX_REWARD = 4

# The arm pose every episode starts in (gym-aloha's START_ARM_POSE, per arm, without fingers).
START_ARM_QPOS = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0)
START_FINGER = 0.02239

# Object position ranges (x, y; z fixed) in metres, world frame: table centre at y=0.6.
CUBE_RANGE = ((0.0, 0.2), (0.4, 0.6))
PEG_RANGE = ((0.1, 0.2), (0.4, 0.6))
SOCKET_RANGE = ((-0.2, -0.1), (0.4, 0.6))
OBJECT_Z = 0.05

# MJCF body prefix of each rig arm.
ARM_PREFIX = {'left': 'vx300s_left', 'right': 'vx300s_right'}
SIM_ARM_JOINTS = ('waist', 'shoulder', 'elbow', 'forearm_roll', 'wrist_angle', 'wrist_rotate')

SUBTASK_STAGE_NAMES = {
    'transfer_cube': (
        'nothing touched',
        'right gripper touches the cube',
        'cube lifted by the right gripper',
        'left gripper touches the cube',
        'cube held by the left gripper in the air',
    ),
    'insertion': (
        'nothing touched',
        'both grippers touch peg and socket',
        'peg and socket lifted',
        'peg touches the socket in the air',
        'peg inserted (touches the pin)',
    ),
}


def gym_aloha_assets_dir() -> Path:
    """The MJCF directory of the installed gym-aloha package (found without importing it)."""
    spec = importlib.util.find_spec('gym_aloha')
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError('the simulated rig needs the gym-aloha package: pip install "bimanual_vla[sim]"')
    assets = Path(next(iter(spec.submodule_search_locations))) / 'assets'
    if not assets.is_dir():
        raise ConfigError(f'gym-aloha is installed but has no assets directory at {assets}')
    return assets


def scene_xml(task: str) -> Path:
    if task not in TASKS:
        raise ConfigError(f'sim task {task!r} unknown; tasks: {", ".join(TASKS)}')
    return gym_aloha_assets_dir() / f'bimanual_viperx_{task}.xml'


def load_model(task: str) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(str(scene_xml(task)))


def sample_object_poses(task: str, seed: int) -> dict[str, np.ndarray]:
    """Object name -> 7-vector (x, y, z, qw, qx, qy, qz), uniform over the task's ranges."""
    rng = np.random.default_rng(seed)

    def draw(ranges: tuple[tuple[float, float], tuple[float, float]]) -> np.ndarray:
        x = rng.uniform(*ranges[0])
        y = rng.uniform(*ranges[1])
        return np.array([x, y, OBJECT_Z, 1.0, 0.0, 0.0, 0.0])

    if task == 'transfer_cube':
        return {'red_box_joint': draw(CUBE_RANGE)}
    if task == 'insertion':
        return {'red_peg_joint': draw(PEG_RANGE), 'blue_socket_joint': draw(SOCKET_RANGE)}
    raise ConfigError(f'sim task {task!r} unknown; tasks: {", ".join(TASKS)}')


@dataclass
class _ArmMap:
    """Index tables from one rig arm onto the MJCF."""

    config: ArmConfig
    qpos_adr: np.ndarray  # qpos address of each rig joint (gripper: left finger)
    dof_adr: np.ndarray
    ctrl_idx: np.ndarray  # actuator of each rig joint (gripper: left finger actuator)
    mirror_ctrl: int  # right finger actuator (gets -gripper), or -1
    lower: np.ndarray
    upper: np.ndarray
    gripper_index: int  # index of the gripper in the rig joint order, or -1


class SimScene:
    """One ALOHA scene: reset to a seeded episode, set joint targets, step at the control rate."""

    def __init__(self, rig: RigConfig, task: str | None = None, seed: int | None = None) -> None:
        self.rig = rig
        self.task = task or (rig.sim.task if rig.sim else 'transfer_cube')
        self.model = self._load_model()
        self.data = mujoco.MjData(self.model)
        self.control_rate_hz = rig.control_rate_hz
        self.control_dt = 1.0 / rig.control_rate_hz
        self.substeps = max(1, round(self.control_dt / self.model.opt.timestep))
        if abs(self.substeps * self.model.opt.timestep - self.control_dt) > 1e-9:
            raise ConfigError(
                f'rig {rig.name}: control period {self.control_dt:g} s is not a multiple of the '
                f'model timestep {self.model.opt.timestep:g} s'
            )
        self.arms: dict[str, _ArmMap] = {arm.name: self._map_arm(arm) for arm in rig.arms}
        self._goal = {name: np.zeros(len(m.config.joints)) for name, m in self.arms.items()}
        self._contact_names = self._contact_geom_names()
        self.seed = (rig.sim.seed if rig.sim else 0) if seed is None else int(seed)
        self.reward = 0
        self.max_reward_reached = 0
        self.steps = 0
        self.reset(self.seed)

    # ------------------------------------------------------------------ mapping

    def _load_model(self) -> mujoco.MjModel:
        """The compiled scene of ``self.task`` (a subclass composes another scene here)."""
        return load_model(self.task)

    def _map_arm(self, arm: ArmConfig) -> _ArmMap:
        if arm.name not in ARM_PREFIX:
            raise ConfigError(f'rig {self.rig.name}: sim arm {arm.name!r} is not one of {sorted(ARM_PREFIX)}')
        prefix = ARM_PREFIX[arm.name]
        m = self.model
        qpos, dof, ctrl = [], [], []
        mirror = -1
        gripper_index = -1
        for i, joint in enumerate(arm.joints):
            is_gripper = joint.name == arm.gripper
            mj_joint = f'{prefix}/left_finger' if is_gripper else f'{prefix}/{joint.name}'
            jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, mj_joint)
            if jid < 0:
                raise ConfigError(
                    f'rig {self.rig.name}: arm {arm.name} joint {joint.name!r} has no MJCF joint {mj_joint!r}; '
                    f'sim arm joints are {", ".join(SIM_ARM_JOINTS)} plus the gripper'
                )
            qpos.append(m.jnt_qposadr[jid])
            dof.append(m.jnt_dofadr[jid])
            ctrl.append(self._actuator_for_joint(jid))
            if is_gripper:
                gripper_index = i
                rid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f'{prefix}/right_finger')
                mirror = self._actuator_for_joint(rid)
        return _ArmMap(
            config=arm,
            qpos_adr=np.array(qpos),
            dof_adr=np.array(dof),
            ctrl_idx=np.array(ctrl),
            mirror_ctrl=mirror,
            lower=np.array([j.lower for j in arm.joints]),
            upper=np.array([j.upper for j in arm.joints]),
            gripper_index=gripper_index,
        )

    def _actuator_for_joint(self, joint_id: int) -> int:
        m = self.model
        for a in range(m.nu):
            if m.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT and m.actuator_trnid[a, 0] == joint_id:
                return a
        raise ConfigError(f'MJCF joint {mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, joint_id)} has no actuator')

    def _contact_geom_names(self) -> list[str]:
        return [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_GEOM, g) or '' for g in range(self.model.ngeom)]

    # ------------------------------------------------------------------ episode

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: arms in the start pose, objects placed from `seed`."""
        if seed is not None:
            self.seed = int(seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        for arm in self.arms.values():
            prefix = ARM_PREFIX[arm.config.name]
            for name, value in zip(SIM_ARM_JOINTS, START_ARM_QPOS, strict=True):
                d.qpos[m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f'{prefix}/{name}')]] = value
            for finger, sign in (('left_finger', 1.0), ('right_finger', -1.0)):
                jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f'{prefix}/{finger}')
                d.qpos[m.jnt_qposadr[jid]] = sign * START_FINGER
        for joint, pose in sample_object_poses(self.task, self.seed).items():
            jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, joint)
            d.qpos[m.jnt_qposadr[jid] : m.jnt_qposadr[jid] + 7] = pose
        mujoco.mj_forward(m, d)
        for name, arm in self.arms.items():
            goal = np.clip(d.qpos[arm.qpos_adr], arm.lower, arm.upper)
            self._goal[name] = goal.copy()
            self._write_ctrl(arm, goal)
        self.reward = 0
        self.max_reward_reached = 0
        self.steps = 0

    def perturb(self, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Knock the task's first object (the cube, the peg) out of the gripper or move it (sim/perturbation.py);
        its pose before and after."""
        from bimanual_vla.sim.perturbation import place_on_table

        joint, ranges = ('red_box_joint', CUBE_RANGE) if self.task == 'transfer_cube' else ('red_peg_joint', PEG_RANGE)
        return place_on_table(self.model, self.data, joint, kind, ranges, OBJECT_Z, rng)

    def object_pose(self, joint: str) -> np.ndarray:
        """7-vector pose of a free-jointed object (``red_box_joint``, ``red_peg_joint``, ``blue_socket_joint``)."""
        jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, joint)
        if jid < 0:
            raise KeyError(f'task {self.task} has no object joint {joint!r}')
        adr = self.model.jnt_qposadr[jid]
        return self.data.qpos[adr : adr + 7].copy()

    # ------------------------------------------------------------------ control

    def command(self, arm: str, positions: Sequence[float] | Mapping[str, float]) -> np.ndarray:
        """Set the goal of one arm: a full vector in rig joint order, or a {joint: value} subset.

        Values are clamped to the rig's limits. Raises ValueError (goal unchanged) on NaN/Inf,
        a wrong length, or an unknown joint name. Returns the clamped goal.
        """
        if arm not in self.arms:
            raise ValueError(f'unknown arm {arm!r}; arms: {sorted(self.arms)}')
        amap = self.arms[arm]
        goal = self._goal[arm].copy()
        if isinstance(positions, Mapping):
            names = amap.config.joint_names
            for joint, value in positions.items():
                if joint not in names:
                    raise ValueError(f'arm {arm}: unknown joint {joint!r}; joints: {names}')
                goal[names.index(joint)] = float(value)
        else:
            values = np.asarray(positions, dtype=float).reshape(-1)
            if values.shape[0] != goal.shape[0]:
                raise ValueError(f'arm {arm}: expected {goal.shape[0]} positions, got {values.shape[0]}')
            goal = values
        if not np.all(np.isfinite(goal)):
            raise ValueError(f'arm {arm}: non-finite position target rejected')
        goal = np.clip(goal, amap.lower, amap.upper)
        self._goal[arm] = goal
        return goal.copy()

    def hold(self) -> None:
        """Make the current measured positions every arm's goal (e-stop 'hold')."""
        for name, arm in self.arms.items():
            pos = np.clip(self.data.qpos[arm.qpos_adr], arm.lower, arm.upper)
            self._goal[name] = pos
            self._write_ctrl(arm, pos)

    def goal(self, arm: str) -> np.ndarray:
        return self._goal[arm].copy()

    def _write_ctrl(self, arm: _ArmMap, target: np.ndarray) -> None:
        self.data.ctrl[arm.ctrl_idx] = target
        if arm.mirror_ctrl >= 0:
            self.data.ctrl[arm.mirror_ctrl] = -target[arm.gripper_index]

    def step(self) -> int:
        """Advance one control period; return the reward stage after it."""
        m, d = self.model, self.data
        for arm in self.arms.values():
            current = d.ctrl[arm.ctrl_idx]
            cfg = arm.config
            max_step = min(cfg.max_step_rad, cfg.max_velocity_rad_s / self.control_rate_hz)
            delta = np.clip(self._goal[cfg.name] - current, -max_step, max_step)
            self._write_ctrl(arm, current + delta)
        mujoco.mj_step(m, d, nstep=self.substeps)
        self.steps += 1
        self.reward = self.compute_reward()
        self.max_reward_reached = max(self.max_reward_reached, self.reward)
        return self.reward

    def note_stages(self, first_s: dict[str, float], now: float) -> None:
        """Record `now` as the first time of every reward stage reached so far that `first_s` lacks
        (keys '1'..'4'): when the expert, or a policy in closed loop, got to each stage."""
        for stage in range(1, self.max_reward_reached + 1):
            first_s.setdefault(str(stage), now)

    @property
    def time(self) -> float:
        return float(self.data.time)

    @property
    def success(self) -> bool:
        return self.reward >= MAX_REWARD

    def stage_name(self) -> str:
        return SUBTASK_STAGE_NAMES[self.task][self.reward]

    # ------------------------------------------------------------------ state

    def joint_positions(self, arm: str) -> np.ndarray:
        return self.data.qpos[self.arms[arm].qpos_adr].copy()

    def joint_velocities(self, arm: str) -> np.ndarray:
        return self.data.qvel[self.arms[arm].dof_adr].copy()

    def joint_efforts(self, arm: str) -> np.ndarray:
        """Actuator forces (N·m, N for the gripper finger)."""
        return self.data.actuator_force[self.arms[arm].ctrl_idx].copy()

    # ------------------------------------------------------------------ reward

    def contact_pairs(self) -> set[tuple[str, str]]:
        names = self._contact_names
        d = self.data
        pairs = set()
        for i in range(d.ncon):
            c = d.contact[i]
            a, b = names[c.geom1], names[c.geom2]
            pairs.add((a, b))
            pairs.add((b, a))
        return pairs

    def compute_reward(self) -> int:
        pairs = self.contact_pairs()
        if self.task == 'transfer_cube':
            right = ('red_box', 'vx300s_right/10_right_gripper_finger') in pairs
            left = ('red_box', 'vx300s_left/10_left_gripper_finger') in pairs
            table = ('red_box', 'table') in pairs
            reward = 0
            if right:
                reward = 1
            if right and not table:
                reward = 2
            if left:
                reward = 3
            if left and not table:
                reward = 4
            return reward
        sockets = [f'socket-{i}' for i in range(1, 5)]
        right = ('red_peg', 'vx300s_right/10_right_gripper_finger') in pairs
        left = any((s, 'vx300s_left/10_left_gripper_finger') in pairs for s in sockets)
        peg_table = ('red_peg', 'table') in pairs
        socket_table = any((s, 'table') in pairs for s in sockets)
        peg_socket = any(('red_peg', s) in pairs for s in sockets)
        reward = 0
        if left and right:
            reward = 1
        if left and right and not peg_table and not socket_table:
            reward = 2
        if peg_socket and not peg_table and not socket_table:
            reward = 3
        if ('red_peg', 'pin') in pairs:
            reward = 4
        return reward


class SceneRenderer:
    """Offscreen RGB rendering of named cameras; shadows and anti-aliasing off.

    The GL context (EGL when ``MUJOCO_GL=egl``) belongs to the thread that creates this
    object: create it, call :meth:`render` and :meth:`close` on that one thread only.
    Render from a *copy* of the scene's ``MjData`` (see :meth:`snapshot`) when physics
    runs on another thread, so a frame never shows a half-stepped state.
    """

    def __init__(self, model: mujoco.MjModel, cameras: Mapping[str, tuple[int, int]]) -> None:
        """`cameras`: MJCF camera name -> (width, height)."""
        for name in cameras:
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name) < 0:
                raise ConfigError(f'the sim scene has no camera {name!r}')
        # Multisampling is a property of the offscreen buffer, fixed when the context is made.
        model.vis.quality.offsamples = 0
        max_w = max((w for w, _ in cameras.values()), default=1)
        max_h = max((h for _, h in cameras.values()), default=1)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, max_w)
        model.vis.global_.offheight = max(model.vis.global_.offheight, max_h)
        self.cameras = dict(cameras)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        for size in set(cameras.values()):
            renderer = mujoco.Renderer(model, height=size[1], width=size[0])
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            self._renderers[size] = renderer

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """An (height, width, 3) uint8 RGB image from `camera`."""
        renderer = self._renderers[self.cameras[camera]]
        renderer.update_scene(data, camera=camera)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        return renderer.render()

    def render_all(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {name: self.render(data, name) for name in self.cameras}

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


def snapshot(model: mujoco.MjModel, data: mujoco.MjData, into: mujoco.MjData | None = None) -> mujoco.MjData:
    """A copy of `data` to render from while physics keeps stepping the original."""
    out = into if into is not None else mujoco.MjData(model)
    mujoco.mj_copyData(out, model, data)
    return out


def rig_cameras(rig: RigConfig, sizes: Mapping[str, tuple[int, int]] | None = None) -> dict[str, tuple[int, int]]:
    """Camera name -> (width, height) from the rig, with optional per-camera overrides."""
    out = {}
    for cam in rig.cameras:
        out[cam.name] = (sizes or {}).get(cam.name, (cam.width, cam.height))
    return out
