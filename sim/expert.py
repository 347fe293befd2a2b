"""A scripted expert for the simulated ALOHA tasks, labelling every step with its subtask.

It exists to make demonstrations (and to prove the sim rig can be solved through its
own command interface): for each gripper a list of Cartesian waypoints (position of the
point between the fingertips + gripper orientation) is laid out from the episode's
initial object poses, interpolated with a minimum-jerk profile, and solved to joint
targets by damped-least-squares IK on MuJoCo's Jacobian (``mj_jac`` at that point) on a
private kinematic copy of the model (a waypoint marked `joint_space` is reached by a joint-space
move instead, see APPROACHES). The plan is computed once per episode, so
:meth:`ScriptedExpert.act` is a table look-up by control step: the same plan can be
played in-process (:func:`run_episode`) or over ROS topics against the ``sim_rig`` node.
Two exceptions: ``aim_left`` (transfer_cube): :meth:`ScriptedExpert.observe` reads the
cube's position once, halfway through the left gripper's approach, and solves the rest of the
left arm's plan again around it; and :meth:`ScriptedExpert.replan`, after the objects were
disturbed (a perturbation: the cube knocked out of the gripper or moved), plans the task again from
where the arms and the objects are, so the labels go back to the first subtask and the arms retry:
the demonstrations of recovery a policy that reasons in text learns from.

Each waypoint carries a subtask in words ("move the right gripper above the cube",
"grasp the cube", ...), the label a pi0.5-style policy learns to write before acting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import mujoco
import numpy as np

from bimanual_vla.config import RigConfig
from bimanual_vla.sim.dart import MAX_NOISE_RAD, slow_offsets
from bimanual_vla.sim.scene import ARM_PREFIX, SimScene, load_model, sample_object_poses

# Point between the fingertips, in the gripper_link frame (x: pointing, y: finger closing axis).
TCP_OFFSET = np.array([0.13, 0.0, 0.0])
GRIPPER_OPEN = 0.050  # left-finger slide, metres: ~5.5 cm between the pads
GRIPPER_CLOSED = 0.021  # the limit; squeezing an object leaves a steady grip force
CUBE_HALF = 0.02
PEG_HALF_Z = 0.01
IK_DAMPING = 1e-4  # damped least squares: lambda^2
PEG_HALF_X = 0.06
SOCKET_CENTRE_Z = 0.022  # resting height of the socket body (its walls reach 2 mm lower)
PIN_END_X = 0.04  # the pin's +x end in the socket frame
# How the right gripper gets above the cube in transfer_cube. 'joint': a joint-space move to the IK
# solution nearest home, no wrist flip (the default: docs/experiments/2026-12-01-retrain-joint-space-expert.md).
# 'cartesian': a straight line, which crosses the wrist singularity and rolls the forearm half a turn either
# way (the shipped checkpoint's data).
APPROACHES = ('joint', 'cartesian')
MAX_TIME_WARP = 0.5  # ExpertOptions.time_warp: segments at most e^0.5 = 1.65x longer or shorter
MAX_MEET_JITTER = 0.03  # ExpertOptions.meet_jitter: the handover point moves at most 3 cm per axis
# transfer_cube: where the left gripper's TCP closes, relative to the handover point. Level with the cube's
# centre: the right gripper holds the cube ~7 mm below the point, and the open fingers (5.5 cm apart) clear the
# 4 cm cube by 7.5 mm either side only when centred on it; lower, the upper finger meets the cube's near edge
# and pushes the cube out from between the fingers. The heights compared, and the success counts that chose
# this one: docs/experiments/2026-12-01-left-grasp-level-and-aimed-finetune.md. The labels and the timeline do
# not depend on it.
LEFT_GRASP_FROM_MEET = np.array([0.0, 0.0, -0.0075])
# aim_left: the left TCP at its grasp relative to the cube's centre, as the nominal plan has it at aim_step,
# halfway through the left gripper's move around the cube (seeds 0-11, --expert-max-speed 2: std 0.6, 0.3 and
# 0.2 mm in x, y, z; at the start of that move the right arm is still settling, y std 3 mm).
LEFT_GRASP_FROM_CUBE = np.array([-0.0192, -0.0005, -0.0003])
AIM_LABEL = 'move the left gripper around the cube'  # aim_left corrects this segment's second half


def _rot(x_axis: np.ndarray, y_axis: np.ndarray) -> np.ndarray:
    """Rotation matrix with the given (orthonormalised) x and y axes as columns."""
    x = x_axis / np.linalg.norm(x_axis)
    y = y_axis - x * np.dot(x, y_axis)
    y /= np.linalg.norm(y)
    return np.column_stack([x, y, np.cross(x, y)])


def _quat(mat: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, mat.reshape(-1))
    return q


def _slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)


def _min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s**3 * (10 - 15 * s + 6 * s**2)


@dataclass(frozen=True)
class Waypoint:
    """Reach `pos`/`rot` (TCP, world frame) and gripper `grip` by time `t` (s); `label` names the move.

    `joint_space`: get there by interpolating the joints (minimum jerk) to the IK solution nearest
    the joints the segment starts from, instead of following a straight Cartesian line. A straight
    line can cross a wrist singularity on the way, where the IK has to roll the forearm half a turn
    within a fraction of a second; a joint-space move to the nearest solution never does.
    """

    t: float
    pos: np.ndarray
    rot: np.ndarray
    grip: float
    label: str
    joint_space: bool = False


class ArmIK:
    """Damped-least-squares IK for one arm's six joints, on a private MjData."""

    def __init__(self, model: mujoco.MjModel, rig: RigConfig, arm: str) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        prefix = ARM_PREFIX[arm]
        cfg = rig.arm(arm)
        self.arm_joints = [j for j in cfg.joints if j.name != cfg.gripper]
        ids = [model.joint(f'{prefix}/{j.name}').id for j in self.arm_joints]
        self.qadr = np.array([model.jnt_qposadr[i] for i in ids])
        self.dadr = np.array([model.jnt_dofadr[i] for i in ids])
        self.lower = np.array([j.lower for j in self.arm_joints])
        self.upper = np.array([j.upper for j in self.arm_joints])
        self.body = model.body(f'{prefix}/gripper_link').id
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def tcp(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.data
        d.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, d)
        rot = d.xmat[self.body].reshape(3, 3).copy()
        return d.xpos[self.body] + rot @ TCP_OFFSET, rot

    def solve(self, pos: np.ndarray, rot: np.ndarray, q0: np.ndarray, iters: int = 60) -> tuple[np.ndarray, float]:
        """Joint angles reaching (pos, rot), iterating from q0; returns (q, position error in metres)."""
        q = q0.copy()
        err_p = np.inf
        for _ in range(iters):
            p, r = self.tcp(q)
            err_p_vec = pos - p
            err_r_vec = 0.5 * sum(np.cross(r[:, i], rot[:, i]) for i in range(3))
            err_p = float(np.linalg.norm(err_p_vec))
            if err_p < 1e-4 and np.linalg.norm(err_r_vec) < 1e-3:
                break
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jac(self.model, self.data, self._jacp, self._jacr, p, self.body)
            jac = np.vstack([self._jacp[:, self.dadr], self._jacr[:, self.dadr]])
            err = np.concatenate([err_p_vec, err_r_vec])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + IK_DAMPING * np.eye(6), err)
            q = np.clip(q + np.clip(dq, -0.3, 0.3), self.lower, self.upper)
        return q, err_p

    def rotation_error(self, q: np.ndarray, rot: np.ndarray) -> float:
        """Angle-like error (rad) between the TCP orientation at `q` and `rot`."""
        _, r = self.tcp(q)
        return float(np.linalg.norm(0.5 * sum(np.cross(r[:, i], rot[:, i]) for i in range(3))))

    def nearest_solution(self, pos: np.ndarray, rot: np.ndarray, q_from: np.ndarray, starts: int = 16) -> np.ndarray:
        """The IK solution for (pos, rot) nearest `q_from` (largest joint difference), over several starts.

        A 6-joint arm reaches most poses in more than one way (elbow, wrist bent either way); the
        damped IK finds whichever its start leads to. Starting from `q_from`, from `q_from` with the
        wrist bent the other way, and from seeded random joint vectors, then keeping the converged
        solution closest to `q_from`, picks the one a joint-space move reaches with the least motion.
        Deterministic: the random starts are seeded.
        """
        wrist = [j.name for j in self.arm_joints].index('wrist_angle')
        flipped = q_from.copy()
        flipped[wrist] = -flipped[wrist]
        rng = np.random.default_rng(0)
        candidates = [q_from.copy(), flipped] + [rng.uniform(self.lower, self.upper) for _ in range(starts)]
        best, best_dist = None, np.inf
        for q0 in candidates:
            q, err = self.solve(pos, rot, q0, iters=300)
            if err > 1e-3 or self.rotation_error(q, rot) > 1e-2:
                continue
            dist = float(np.abs(q - q_from).max())
            if dist < best_dist:
                best, best_dist = q, dist
        if best is None:
            raise ValueError(f'no IK solution within the joint limits for the TCP at {np.round(pos, 3).tolist()}')
        return best


@dataclass(frozen=True)
class ExpertOptions:
    """How the scripted expert executes its plan: the data options of `collect`, `sim-expert` and `sim_rig`.

    They change the demonstrations, never what eval-sim scores against. Checked here, once, when made:
    a ValueError names the field. Checks that need the task are in `check_task`.

    `noise_rad`: DART, slow joint offsets of this std executed but not published (ScriptedExpert._smooth_noise).
    `max_joint_speed_rad_s`: no arm joint faster than this (None: unlimited; ScriptedExpert._limit_speed).
    `approach`: how the right gripper gets above the cube in transfer_cube (APPROACHES).
    `time_warp`: each segment of the timeline stretched by a seeded exp(U(-w, w)) (ScriptedExpert._warp_times).
    `meet_jitter`: transfer_cube, the handover point moved by a seeded U(-j, j) m per axis.
    `aim_left`: transfer_cube, the left grasp aimed at the cube as measured (ScriptedExpert.observe).
    """

    noise_rad: float = 0.0
    max_joint_speed_rad_s: float | None = None
    approach: str = 'joint'
    time_warp: float = 0.0
    meet_jitter: float = 0.0
    aim_left: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_rad <= MAX_NOISE_RAD:
            raise ValueError(f'noise_rad must be in [0, {MAX_NOISE_RAD}] rad, got {self.noise_rad}')
        speed = self.max_joint_speed_rad_s
        if speed is not None and not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f'max_joint_speed_rad_s must be positive (None: unlimited), got {speed}')
        if self.approach not in APPROACHES:
            raise ValueError(f'approach must be one of {APPROACHES}, got {self.approach!r}')
        if not 0.0 <= self.time_warp <= MAX_TIME_WARP:
            raise ValueError(f'time_warp must be in [0, {MAX_TIME_WARP}], got {self.time_warp}')
        if not 0.0 <= self.meet_jitter <= MAX_MEET_JITTER:
            raise ValueError(f'meet_jitter must be in [0, {MAX_MEET_JITTER}] m, got {self.meet_jitter}')

    def check_task(self, task: str) -> None:
        """Refuse (ValueError) the options that only transfer_cube has a use for on any other task, and on the
        SO-101 twin's tasks anything but noise_rad (its expert, sim/so101_expert.py, has no other option)."""
        from bimanual_vla.sim.so101_scene import SO101_TASKS

        if task in SO101_TASKS and replace(self, noise_rad=0.0) != ExpertOptions():
            raise ValueError(f"the SO-101 twin's expert takes only the DART noise (--expert-noise), not for {task!r}")
        if (self.aim_left or self.meet_jitter > 0) and task != 'transfer_cube':
            raise ValueError(f'aim_left and meet_jitter apply to transfer_cube only, not {task!r}')


class ScriptedExpert:
    """Plans one episode of `task` from the seed's object poses; `act(step)` gives joint targets + subtask."""

    def __init__(
        self,
        rig: RigConfig,
        task: str,
        seed: int,
        object_poses: dict[str, np.ndarray] | None = None,
        options: ExpertOptions | None = None,
        start_q: dict[str, np.ndarray] | None = None,
    ) -> None:
        """`start_q`: per arm, the joints (rig order, gripper included) the plan starts from; default the
        scene's home pose with the grippers open (a fresh episode). `replan` starts from the arms' last targets."""
        self.options = options if options is not None else ExpertOptions()
        self.options.check_task(task)
        self.approach = self.options.approach
        self.rig = rig
        self.task = task
        self.seed = seed
        self.meet_jitter = self.options.meet_jitter
        self.dt = 1.0 / rig.control_rate_hz
        self.poses = object_poses if object_poses is not None else sample_object_poses(task, seed)
        model = load_model(task)
        self.ik = {arm: ArmIK(model, rig, arm) for arm in ('left', 'right')}
        if start_q is None:
            scene_home = SimScene(rig, task=task, seed=seed)
            self.home_q = {arm: self._arm_only(rig, arm, scene_home.joint_positions(arm)) for arm in self.ik}
            self.start_grip = {arm: GRIPPER_OPEN for arm in self.ik}
        else:
            self.home_q = {arm: self._arm_only(rig, arm, np.asarray(start_q[arm], float)) for arm in self.ik}
            self.start_grip = {arm: self._gripper_of(rig, arm, np.asarray(start_q[arm], float)) for arm in self.ik}
        self.replans: list[int] = []  # the steps `replan` planned the task again from
        self.plans = self._warp_times(self._waypoints(), self.options.time_warp)
        self.num_steps = int(round(max(w[-1].t for w in self.plans.values()) / self.dt)) + 1
        self.joint_plan: dict[str, np.ndarray] = {}
        self._ik_plan: dict[str, np.ndarray] = {}  # IK solutions (IK joint order) before the speed limit
        self.labels: list[str] = []
        self.max_ik_error = 0.0
        self.max_joint_speed_rad_s = self.options.max_joint_speed_rad_s
        self._solve(self.plans)
        self.max_speed_lag_rad = 0.0  # how far the speed limit made a joint trail its IK solution
        if self.max_joint_speed_rad_s is not None:
            self._limit_speed(self.max_joint_speed_rad_s)
        # aim_left: the step at which observe() measures the cube, and the correction it applied
        self.aim_step = self._aim_step() if self.options.aim_left else None
        self.aim_correction: np.ndarray | None = None
        self._fresh: tuple[int, ScriptedExpert] | None = None  # (first step, plan) of the last replan
        # follow(): the plan as first made (the moves a coached subtask copies), and the step at which the
        # coached move ends and the task must be planned again (the caller knows where the objects are then)
        self._nominal = ({arm: plan.copy() for arm, plan in self.joint_plan.items()}, list(self.labels))
        self.replan_due: int | None = None
        self.coached: list[tuple[int, str]] = []  # (step, subtask) of every follow()
        self.noise = {arm: self._smooth_noise(arm, self.options.noise_rad) for arm in self.joint_plan}

    @staticmethod
    def _arm_only(rig: RigConfig, arm: str, q: np.ndarray) -> np.ndarray:
        cfg = rig.arm(arm)
        return np.array([v for j, v in zip(cfg.joints, q, strict=True) if j.name != cfg.gripper])

    @staticmethod
    def _gripper_of(rig: RigConfig, arm: str, q: np.ndarray) -> float:
        cfg = rig.arm(arm)
        return float(q[cfg.joint_names.index(cfg.gripper)])

    # ------------------------------------------------------------------ waypoints

    def _waypoints(self) -> dict[str, list[Waypoint]]:
        if self.task == 'transfer_cube':
            return self._transfer_cube()
        return self._insertion()

    def _warp_times(self, plans: dict[str, list[Waypoint]], warp: float) -> dict[str, list[Waypoint]]:
        """Stretch or shrink every segment of the shared timeline by its own factor exp(U(-warp, warp)).

        The plan's waypoint times are one timeline for both arms (the left gripper closes when the right
        holds the cube still; the right opens once the left has closed). With a fixed timeline every
        demonstration starts each move the same time after the previous one, so a cloned policy can
        time a move by the clock it infers (how long the other arm has been still) instead of by what
        it sees. Segments of random length, seeded by the episode seed, take that cue away: each
        move starts exactly when the previous one ends, whenever that is. The labels follow the
        warped clock. 0 keeps the nominal timeline (the one eval-sim's labels use). A fine-tune on
        such data kept the demonstrations' pace closed loop, but the drops after the handover it was
        aimed at did not change (docs/experiments/2026-12-01-finetune-time-warped-demonstrations.md).
        """
        if warp <= 0:
            return plans
        times = sorted({w.t for wps in plans.values() for w in wps})
        rng = np.random.default_rng([self.seed, 11])
        factors = np.exp(rng.uniform(-warp, warp, len(times) - 1))
        warped = np.concatenate([[times[0]], times[0] + np.cumsum(np.diff(times) * factors)])
        new_t = dict(zip(times, warped.tolist(), strict=True))
        return {arm: [replace(w, t=new_t[w.t]) for w in wps] for arm, wps in plans.items()}

    def _meet_offset(self) -> np.ndarray:
        """Where this episode's handover happens relative to the nominal point: U(-j, j) per axis, seeded.

        With one fixed handover point the left gripper can close on the same spot every time and
        still succeed, so demonstrations never show it going where the cube actually is. Closed loop
        the right arm brings the cube a little off that spot, and a cloned left gripper closes beside
        it (docs/experiments/2026-12-01-finetune-time-warped-demonstrations.md). Moving the point per
        episode (both arms follow) puts the cube somewhere else each time.
        """
        if self.meet_jitter <= 0:
            return np.zeros(3)
        return np.random.default_rng([self.seed, 13]).uniform(-self.meet_jitter, self.meet_jitter, 3)

    def _start(self, arm: str, label: str) -> Waypoint:
        pos, rot = self.ik[arm].tcp(self.home_q[arm])
        return Waypoint(0.0, pos, rot, self.start_grip[arm], label)

    def _transfer_cube(self) -> dict[str, list[Waypoint]]:
        cube = self.poses['red_box_joint'][:3].copy()
        cube[2] = CUBE_HALF
        tilt = np.radians(60)
        # right gripper points down at the cube from the +x side, fingers closing along world y
        pick = _rot(np.array([-np.cos(tilt), 0, -np.sin(tilt)]), np.array([0, -1.0, 0]))
        meet = np.array([0.0, 0.5, 0.25]) + self._meet_offset()
        # left gripper horizontal from the -x side, fingers closing vertically
        hand = _rot(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]))
        r_open, closed = GRIPPER_OPEN, GRIPPER_CLOSED
        joint = self.approach == 'joint'  # no wrist flip on the way above the cube (APPROACHES)
        above = 'move the right gripper above the cube'
        right = [
            self._start('right', above),
            Waypoint(1.6, cube + [0, 0, 0.08], pick, r_open, above, joint_space=joint),
            Waypoint(2.4, cube + [0, 0, 0.0], pick, r_open, 'lower the right gripper around the cube'),
            Waypoint(3.0, cube + [0, 0, 0.0], pick, closed, 'grasp the cube with the right gripper'),
            Waypoint(3.4, cube + [0, 0, 0.05], pick, closed, 'lift the cube'),
            Waypoint(4.6, meet + [0.02, 0, 0], pick, closed, 'hand the cube to the left arm'),
            Waypoint(6.0, meet + [0.02, 0, 0], pick, closed, 'hold the cube for the left gripper'),
            Waypoint(6.6, meet + [0.02, 0, 0], pick, r_open, 'release the cube from the right gripper'),
            Waypoint(7.4, meet + [0.12, 0, 0.02], pick, r_open, 'move the right gripper away'),
            Waypoint(8.0, meet + [0.12, 0, 0.02], pick, r_open, 'hold the cube with the left arm'),
        ]
        left_grasp = meet + LEFT_GRASP_FROM_MEET
        left = [
            self._start('left', 'wait for the right arm'),
            Waypoint(3.4, self._start('left', '').pos, hand, r_open, 'wait for the right arm'),
            Waypoint(4.6, left_grasp + [-0.1, 0, 0], hand, r_open, 'move the left gripper towards the cube'),
            Waypoint(5.4, left_grasp, hand, r_open, 'move the left gripper around the cube'),
            Waypoint(6.0, left_grasp, hand, closed, 'grasp the cube with the left gripper'),
            Waypoint(6.6, left_grasp, hand, closed, 'release the cube from the right gripper'),
            Waypoint(7.4, left_grasp + [-0.08, 0, 0], hand, closed, 'move the cube to the left'),
            Waypoint(8.0, left_grasp + [-0.08, 0, 0], hand, closed, 'hold the cube with the left arm'),
        ]
        return {'left': left, 'right': right}

    def _insertion(self) -> dict[str, list[Waypoint]]:
        # Both grippers point straight down, fingers closing along world y, fingertips 3 mm above the
        # table: the held objects then keep known vertical offsets from the TCP and cannot tilt in x.
        tip_clearance = 0.003
        grasp_z = tip_clearance + (0.154 - TCP_OFFSET[0])
        peg = self.poses['red_peg_joint'][:3].copy()
        socket = self.poses['blue_socket_joint'][:3].copy()
        peg_dz = PEG_HALF_Z - grasp_z  # object centre below the TCP once grasped
        socket_dz = SOCKET_CENTRE_Z - grasp_z
        down = np.array([0, 0, -1.0])
        r_pick = _rot(down, np.array([0, -1.0, 0]))
        l_pick = _rot(down, np.array([0, 1.0, 0]))
        grip_x = 0.035  # grasp each object this far from its centre, on the outer side
        peg_grasp = np.array([peg[0] + grip_x, peg[1], grasp_z])
        socket_grasp = np.array([socket[0] - grip_x, socket[1], grasp_z])
        # meeting point: socket centre there; the peg's -x end enters the socket's +x opening and
        # stops 3 mm past the pin's +x end (socket frame: opening at +0.06, pin end at +0.04).
        meet = np.array([-0.03, 0.5, 0.2])
        socket_tcp = meet + [-grip_x, 0, -socket_dz]
        peg_centre_inserted = meet + [PIN_END_X + PEG_HALF_X - 0.003, 0, 0]
        peg_tcp_inserted = peg_centre_inserted + [grip_x, 0, -peg_dz]
        peg_tcp_aligned = peg_tcp_inserted + [0.05, 0, 0]
        closed, opened = GRIPPER_CLOSED, GRIPPER_OPEN
        right = [
            self._start('right', 'move the grippers above the peg and the socket'),
            Waypoint(1.6, peg_grasp + [0, 0, 0.08], r_pick, opened, 'move the grippers above the peg and the socket'),
            Waypoint(2.4, peg_grasp, r_pick, opened, 'lower the grippers around the peg and the socket'),
            Waypoint(3.0, peg_grasp, r_pick, closed, 'grasp the peg and the socket'),
            Waypoint(3.6, peg_grasp + [0, 0, 0.08], r_pick, closed, 'lift the peg and the socket'),
            Waypoint(5.0, peg_tcp_aligned, r_pick, closed, 'line the peg up with the socket'),
            Waypoint(6.4, peg_tcp_inserted, r_pick, closed, 'insert the peg into the socket'),
            Waypoint(7.2, peg_tcp_inserted, r_pick, closed, 'hold the peg in the socket'),
        ]
        left = [
            self._start('left', 'move the grippers above the peg and the socket'),
            Waypoint(
                1.6, socket_grasp + [0, 0, 0.08], l_pick, opened, 'move the grippers above the peg and the socket'
            ),
            Waypoint(2.4, socket_grasp, l_pick, opened, 'lower the grippers around the peg and the socket'),
            Waypoint(3.0, socket_grasp, l_pick, closed, 'grasp the peg and the socket'),
            Waypoint(3.6, socket_grasp + [0, 0, 0.08], l_pick, closed, 'lift the peg and the socket'),
            Waypoint(5.0, socket_tcp, l_pick, closed, 'line the peg up with the socket'),
            Waypoint(6.4, socket_tcp, l_pick, closed, 'insert the peg into the socket'),
            Waypoint(7.2, socket_tcp, l_pick, closed, 'hold the peg in the socket'),
        ]
        return {'left': left, 'right': right}

    # ------------------------------------------------------------------ solving

    def _sample(self, wps: list[Waypoint], t: float) -> tuple[np.ndarray, np.ndarray, float, str]:
        if t >= wps[-1].t:
            w = wps[-1]
            return w.pos, w.rot, w.grip, w.label
        for a, b in zip(wps, wps[1:], strict=False):
            if a.t <= t < b.t:
                s = _min_jerk((t - a.t) / (b.t - a.t))
                pos = a.pos + s * (b.pos - a.pos)
                quat = _slerp(_quat(a.rot), _quat(b.rot), s)
                rot = np.zeros(9)
                mujoco.mju_quat2Mat(rot, quat)
                return pos, rot.reshape(3, 3), a.grip + s * (b.grip - a.grip), b.label
        raise AssertionError('unreachable')

    def _solve(self, plans: dict[str, list[Waypoint]]) -> None:
        labels = {}
        for arm, wps in plans.items():
            self._ik_plan[arm] = np.zeros((self.num_steps, len(self.ik[arm].qadr) + 1))
            labels[arm] = self._solve_arm(arm, wps)
            self.joint_plan[arm] = self._rig_order(arm, self._ik_plan[arm])
        # One label per step: the arm doing the "active" part (the right until the left takes over).
        self.labels = [self._merge(labels['left'][k], labels['right'][k]) for k in range(self.num_steps)]

    def _solve_arm(
        self,
        arm: str,
        wps: list[Waypoint],
        first_step: int = 0,
        shift: Callable[[float], np.ndarray] | None = None,
    ) -> list[str]:
        """Solve `arm`'s IK plan (`self._ik_plan[arm]`) from `first_step` on; the labels of those steps.

        `shift(t)` is added to the sampled TCP position (aim_left's correction). From `first_step`
        > 0 the IK starts from the solution of the step before, so the plan stays continuous.
        """
        ik = self.ik[arm]
        out = self._ik_plan[arm]
        q = self.home_q[arm].copy() if first_step == 0 else out[first_step - 1, :-1].copy()
        joint_moves: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # segment end index -> (q start, q end)
        labels = []
        for k in range(first_step, self.num_steps):
            t = (k + 1) * self.dt
            pos, rot, grip, label = self._sample(wps, t)
            if shift is not None:
                pos = pos + shift(t)
            b = next((i for i, w in enumerate(wps) if w.t > t), None)
            if b is not None and b > 0 and wps[b].joint_space:
                if b not in joint_moves:  # solved once, from the joints the segment starts from
                    joint_moves[b] = (q.copy(), ik.nearest_solution(wps[b].pos, wps[b].rot, q))
                q_a, q_b = joint_moves[b]
                q = q_a + _min_jerk((t - wps[b - 1].t) / (wps[b].t - wps[b - 1].t)) * (q_b - q_a)
            else:
                q, err = ik.solve(pos, rot, q)
                self.max_ik_error = max(self.max_ik_error, err)
            out[k, :-1] = q
            out[k, -1] = grip
            labels.append(label)
        return labels

    def _rig_order(self, arm: str, ik_plan: np.ndarray) -> np.ndarray:
        """IK-order columns (arm joints, gripper last) in the rig's joint order (gripper wherever the rig has it)."""
        cfg = self.rig.arm(arm)
        names = [j.name for j in self.ik[arm].arm_joints] + [cfg.gripper]
        return ik_plan[:, [names.index(j) for j in cfg.joint_names]]

    def _limit_speed(self, max_rad_s: float, arms: tuple[str, ...] | None = None) -> None:
        """Let no arm joint move faster than `max_rad_s`: a joint that would trails its IK solution, then catches up.

        With the straight-line approach ('cartesian'), on its way above the cube the right wrist passes
        near its singularity, and the IK turns
        `forearm_roll` and `wrist_rotate` ~2.6 rad in opposite directions within ~0.4 s (median peak
        7.4 rad/s over seeds 1000-1049, up to 45). The policy node's gate (`safety.max_velocity_rad_s`,
        2 rad/s by default) would clamp a policy that learned that, so data meant for such a policy is
        collected under the same limit. The two joints mostly cancel each other, so the gripper's
        orientation barely suffers while they trail: measured on seeds 1000-1099 the expert succeeds
        on 99 of 100 at 2 rad/s (100 unlimited) and reaches its stages at the same times.
        Grippers (metres) are left alone.
        """
        step = max_rad_s * self.dt
        for arm in arms or tuple(self.joint_plan):
            plan = self._rig_order(arm, self._ik_plan[arm])
            cfg = self.rig.arm(arm)
            movable = np.array([j != cfg.gripper for j in cfg.joint_names])
            out = plan.copy()
            for k in range(1, len(plan)):
                delta = plan[k] - out[k - 1]
                out[k] = out[k - 1] + np.where(movable, np.clip(delta, -step, step), delta)
            self.max_speed_lag_rad = max(self.max_speed_lag_rad, float(np.abs(out - plan).max()))
            self.joint_plan[arm] = out

    @staticmethod
    def _merge(left: str, right: str) -> str:
        if left == right or left.startswith('wait'):
            return right
        if right.startswith('hold the cube for'):
            return left
        return right if 'right' in right and 'left' not in left else left

    def _smooth_noise(self, arm: str, std: float) -> np.ndarray:
        """(steps, joints) DART offsets for `arm` (sim/dart.py), none on the gripper, seeded by the episode."""
        cfg = self.rig.arm(arm)
        gripper = cfg.joint_names.index(cfg.gripper)
        seed = (self.seed, 1 if arm == 'right' else 0, 7)
        return slow_offsets(self.num_steps, self.dt, self.joint_plan[arm].shape[1], [gripper], std, seed)

    # ------------------------------------------------------------------ aiming

    def _aim_step(self) -> int:
        """The step halfway through the left gripper's move around the cube (after the right arm has settled)."""
        left = self.plans['left']
        b = next(i for i, w in enumerate(left) if w.label == AIM_LABEL)
        return int(round(0.5 * (left[b - 1].t + left[b].t) / self.dt)) - 1

    def observe(self, step: int, cube_position: Callable[[], np.ndarray]) -> bool:
        """With aim_left, at `aim_step`: move the left gripper's grasp onto the cube where it really is.

        Call before `act(step)` every step (only aim_step reads `cube_position()`, the cube's centre
        in world coordinates). The left grasp and everything after it are moved by the difference
        between the measured cube plus LEFT_GRASP_FROM_CUBE and the planned grasp, blended in with a
        minimum-jerk ramp over the rest of the move around the cube, and the left arm's plan is
        solved again from this step (then speed-limited as before). The nominal plan closes on a
        fixed spot; a cube held off it (DART offsets on the right arm, a handover point moved by
        meet_jitter) is then missed or only just caught, and such episodes were the demonstrations
        that failed. Returns True when it re-planned.
        """
        if self._fresh is not None:
            offset, fresh = self._fresh
            if step < offset or not fresh.observe(step - offset, cube_position):
                return False
            self.joint_plan['left'][offset:] = fresh.joint_plan['left']
            self.aim_correction = fresh.aim_correction
            return True
        if self.aim_step is None or step != self.aim_step or self.aim_correction is not None:
            return False
        left = self.plans['left']
        b = next(i for i, w in enumerate(left) if w.label == AIM_LABEL)
        target = np.asarray(cube_position(), dtype=float) + LEFT_GRASP_FROM_CUBE
        delta = target - left[b].pos
        self.aim_correction = delta
        t_from, t_to = (step + 1) * self.dt, left[b].t

        def shift(t: float) -> np.ndarray:
            return _min_jerk((t - t_from) / (t_to - t_from)) * delta  # 0 at this step, all of it from the grasp

        self._solve_arm('left', left, first_step=step, shift=shift)  # same waypoints: the labels do not change
        self.joint_plan['left'] = self._rig_order('left', self._ik_plan['left'])
        if self.max_joint_speed_rad_s is not None:
            self._limit_speed(self.max_joint_speed_rad_s, arms=('left',))
        return True

    # ------------------------------------------------------------------ re-planning

    def replan(self, step: int, object_poses: dict[str, np.ndarray]) -> None:
        """Plan the task again from control step `step` on, as a fresh episode would go from here.

        After the objects were disturbed (``sim/perturb``: the cube knocked out of the gripper or moved)
        the rest of the plan aims at where they were. The new plan starts from the arms' targets of the
        step before (so the commands stay continuous, grippers included), reaches for the objects at
        `object_poses` (the scene's poses now, as `sample_object_poses` gives them), and labels its
        steps from the task's first subtask again: the text goes back and the arms retry. The steps
        before `step` are kept; the DART offsets of the old plan fade out over a second as the new
        plan's fade in; ``aim_left`` aims the new plan's left grasp as it did the first.
        """
        k = min(max(int(step), 1), self.num_steps)
        start_q = {arm: plan[k - 1].copy() for arm, plan in self.joint_plan.items()}
        fresh = ScriptedExpert(self.rig, self.task, self.seed, object_poses, self.options, start_q=start_q)
        fade = np.clip(1.0 - np.arange(fresh.num_steps) * self.dt, 0.0, 1.0)[:, None]
        for arm in self.joint_plan:
            self.joint_plan[arm] = np.concatenate([self.joint_plan[arm][:k], fresh.joint_plan[arm]])
            self._ik_plan[arm] = np.concatenate([self._ik_plan[arm][:k], fresh._ik_plan[arm]])
            self.noise[arm] = np.concatenate([self.noise[arm][:k], fresh.noise[arm] + fade * self.noise[arm][k - 1]])
        self.labels = self.labels[:k] + fresh.labels
        self.num_steps = k + fresh.num_steps
        self.poses = {name: np.asarray(pose, float).copy() for name, pose in object_poses.items()}
        self.max_ik_error = max(self.max_ik_error, fresh.max_ik_error)
        self._fresh = (k, fresh)
        self.replans.append(k)
        self.replan_due = None

    @property
    def subtasks(self) -> list[str]:
        """The task's subtasks in the order a fresh plan does them (what `follow` accepts)."""
        return list(dict.fromkeys(self._nominal[1]))

    def _subtask_span(self, subtask: str) -> tuple[int, int]:
        """The steps [a, b) of `subtask`'s first run in the plan as first made (the move `follow` copies)."""
        labels = self._nominal[1]
        a = b = labels.index(subtask)
        while b < len(labels) and labels[b] == subtask:
            b += 1
        return a, b

    def subtasks_with_steps(self) -> dict[str, int]:
        """Each subtask and the steps of its move in a fresh plan (its first run of steps: `follow` does that one)."""
        spans = {text: self._subtask_span(text) for text in self.subtasks}
        return {text: b - a for text, (a, b) in spans.items()}

    def follow(self, step: int, subtask: str) -> int:
        """Do `subtask` now, as a coach asked: its move from the arms' last targets, then the task again.

        The move is the one the plan as first made does over that subtask (each joint's change from the
        subtask's first step, the grippers' included), added to the targets of the step before `step`,
        within the joint limits, and labelled `subtask`: the same displacement the coaching measure
        (learning/coaching.py) expects of a policy told that subtask. When it ends (the returned step,
        `replan_due`) the caller plans the task again with the objects where they are then (`replan`);
        until then the expert holds the move's last targets. Demonstrations in which the text, not the
        scene, says what the arms do next: what a policy learns to follow a coached subtask from.
        ValueError for a subtask the task does not have.
        """
        plan, labels = self._nominal
        if subtask not in labels:
            raise ValueError(f'{self.task} has no subtask {subtask!r}; it has {self.subtasks}')
        a, b = self._subtask_span(subtask)
        k = min(max(int(step), 1), self.num_steps)
        for arm in self.joint_plan:
            cfg = self.rig.arm(arm)
            low, high = np.array([j.lower for j in cfg.joints]), np.array([j.upper for j in cfg.joints])
            origin = plan[arm][max(a - 1, 0)]
            move = np.clip(self.joint_plan[arm][k - 1] + (plan[arm][a:b] - origin), low, high)
            self.joint_plan[arm] = np.concatenate([self.joint_plan[arm][:k], move])
            # a replan follows, which never reads these rows again: the last IK solution held, for the shape
            ik = self._ik_plan[arm]
            self._ik_plan[arm] = np.concatenate([ik[:k], np.repeat(ik[k - 1][None, :], b - a, axis=0)])
            held = np.repeat(self.noise[arm][k - 1][None, :], b - a, axis=0)
            self.noise[arm] = np.concatenate([self.noise[arm][:k], held])
        self.labels = self.labels[:k] + [subtask] * (b - a)
        self.num_steps = k + (b - a)
        self._fresh = None  # the aim of an earlier plan no longer applies
        self.aim_step = None
        self.replan_due = self.num_steps
        self.coached.append((k, subtask))
        return self.num_steps

    # ------------------------------------------------------------------ playing

    def offsets(self, step: int) -> dict[str, np.ndarray]:
        """The DART offsets at `step` (zeros if noise is 0), to add to `act(step)`'s targets when executing."""
        k = min(max(int(step), 0), self.num_steps - 1)
        return {arm: noise[k] for arm, noise in self.noise.items()}

    def perturbed(self, step: int) -> dict[str, np.ndarray]:
        """The targets to *execute* at `step`: the plan plus the DART offsets (the plan itself if noise is 0)."""
        targets, _ = self.act(step)
        offsets = self.offsets(step)
        return {arm: target + offsets[arm] for arm, target in targets.items()}

    def act(self, step: int) -> tuple[dict[str, np.ndarray], str]:
        """Joint targets (rig order, gripper last) for control step `step` (0 = first tick) and its subtask."""
        k = min(max(int(step), 0), self.num_steps - 1)
        return {arm: plan[k].copy() for arm, plan in self.joint_plan.items()}, self.labels[k]

    def done(self, step: int) -> bool:
        return step >= self.num_steps


def run_episode(scene: SimScene, expert: ScriptedExpert, extra_steps: int = 0, on_step=None) -> dict:
    """Play `expert` on `scene` (already reset to the expert's seed); return the episode's outcome.

    `stage_first_s`: the time (s since the reset) each reward stage was first reached, the
    expert's pace that a policy's closed-loop stage times are compared with.
    """
    labels = []
    stage_first_s: dict[str, float] = {}
    for k in range(expert.num_steps + extra_steps):
        expert.observe(k, lambda: scene.object_pose('red_box_joint')[:3])
        _, label = expert.act(k)
        for arm, target in expert.perturbed(k).items():  # with the DART offsets, as the sim rig executes them
            scene.command(arm, target)
        scene.step()
        labels.append(label)
        scene.note_stages(stage_first_s, round((k + 1) * expert.dt, 3))
        if on_step is not None:
            on_step(k, scene, label)
    return {
        'seed': scene.seed,
        'success': scene.success,
        'max_stage': scene.max_reward_reached,
        'final_stage': scene.reward,
        'steps': scene.steps,
        'subtasks': list(dict.fromkeys(labels)),
        'stage_first_s': stage_first_s,
    }


def evaluate(rig: RigConfig, task: str, episodes: int, seed: int, options: ExpertOptions | None = None) -> dict:
    """Success rate of the expert over `episodes` seeds starting at `seed` (success = stage 4 at the end)."""
    options = options if options is not None else ExpertOptions()
    results = []
    for i in range(episodes):
        scene = SimScene(rig, task=task, seed=seed + i)
        results.append(run_episode(scene, ScriptedExpert(rig, task, seed + i, options=options)))
    successes = sum(r['success'] for r in results)
    return {
        'task': task,
        'episodes': episodes,
        'first_seed': seed,
        'successes': successes,
        'success_rate': successes / max(1, episodes),
        'reached_stage_4_rate': sum(r['max_stage'] >= 4 for r in results) / max(1, episodes),
        'failed_seeds': [r['seed'] for r in results if not r['success']],
        'failed_final_stages': [r['final_stage'] for r in results if not r['success']],
        'approach': options.approach,
        'time_warp': options.time_warp,
        'meet_jitter': options.meet_jitter,
        'aim_left': options.aim_left,
        'noise_rad': options.noise_rad,
    }


if __name__ == '__main__':  # quick look: python -m bimanual_vla.sim.expert
    from bimanual_vla.config import load_rig

    print(json.dumps(evaluate(load_rig('aloha_sim'), 'transfer_cube', 5, 0), indent=1))
