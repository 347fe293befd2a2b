"""A scripted expert for the SO-101 twin's tasks, labelling every step with its subtask.

As the ALOHA expert (sim/expert.py): per arm a list of waypoints (a grasp point between the jaw
pads, where a held cube's centre sits, and the gripper's orientation) laid out from the episode's
initial object pose, interpolated with a minimum-jerk profile on one timeline shared by both arms,
and solved to joint targets by damped-least-squares IK on MuJoCo's Jacobian, on a private
kinematic copy of the twin's model. The plan is computed once per episode, so :meth:`act` is a
table look-up by control step, in-process (:func:`run_episode`) or over ROS against ``sim_rig``.

The SO-101 has five arm joints, so a gripper can point only within the vertical plane through its
shoulder_pan axis, and turn about its pointing direction with wrist_roll. The plans keep to that:
grasps from straight above (any plane contains the vertical), and a handover on the line between
the two pan axes, where each arm points along that line toward the other.

* ``handover_cube``: the right gripper takes the cube from above, jaws closing along world x; turns
  it to point at the left arm over the midpoint; the left gripper, pointing back, closes on the
  cube's top and bottom faces (the right holds the x faces), the right lets go and backs away, the
  left lifts it.
* ``lift_bar``: both grippers from above onto the bar's ends, jaws closing across the bar; both
  close, lift 8 cm together, hold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import mujoco
import numpy as np

from bimanual_vla.config import RigConfig
from bimanual_vla.sim.dart import MAX_NOISE_RAD, slow_offsets
from bimanual_vla.sim.so101_scene import BAR_HALF, CUBE_HALF, So101Scene, sample_object_pose

# Where a grasped 25 mm cube's centre sits in the gripper body (x: from the fixed jaw toward the
# moving one, -z: along the fingers): its face on the fixed pad's inner face (x = -1.5 mm), at the pads' height.
GRASP_POINT = np.array([-0.0015 + CUBE_HALF, -0.0002, -0.097])
GRIP_OPEN = 0.7  # rad, moving jaw: ~5 cm between the pads
GRIP_CLOSED = 0.2  # rad: 5 mm tighter than a 25 mm cube (0.26 rad), ~1 N.m of grip; the closed end would crush it
IK_DAMPING = 1e-4
ROT_WEIGHT = 0.2  # m per rad in the IK's error: orientation matters, position more
MEET = np.array([0.0388, 0.0, 0.24])  # handover point: on the line between the two shoulder_pan axes
# Where the cube's centre is, relative to MEET, while the right arm holds it there: the arm sags under
# the cube and its own weight (position servos, kp 17.8). The right's pose there is the same in every
# episode; measured on seeds 0-3 at 5.1-5.9 s (+-1 mm).
HELD_AT_MEET = np.zeros(3)
# IK starting points for the arms' poses at the handover (pointing at each other, the right wrist
# rolled a quarter turn): the branch without a flipped wrist.
RIGHT_AT_MEET = (-1.6, -1.17, 0.8, 0.37, -1.52)
LEFT_NEAR_MEET = (1.57, -1.17, 0.8, 0.37, 0.05)


def _min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s**3 * (10 - 15 * s + 6 * s**2)


def gripper_rotation(pointing: np.ndarray, closing: np.ndarray) -> np.ndarray:
    """The gripper body's orientation (columns: body axes in the world) pointing its fingers along
    ``pointing`` with the jaws closing along ``closing`` (from the fixed jaw toward the moving one)."""
    z = -np.asarray(pointing, dtype=float)
    z /= np.linalg.norm(z)
    x = np.asarray(closing, dtype=float) - z * np.dot(z, closing)
    x /= np.linalg.norm(x)
    return np.column_stack([x, np.cross(z, x), z])


@dataclass(frozen=True)
class Waypoint:
    """Grasp point ``pos``, orientation ``rot`` and gripper ``grip`` reached by time ``t`` (s); ``label``: the move."""

    t: float
    pos: np.ndarray
    rot: np.ndarray
    grip: float
    label: str
    # Reach it by a minimum-jerk move of the joints to the IK solution (from `guess`, or from where the
    # segment starts), not along a straight Cartesian line: the right arm's turn from pointing down to
    # pointing at the left arm swings the pan 1.6 rad, and the Cartesian path's IK flips the wrist on the way.
    joint_space: bool = False
    guess: tuple[float, ...] | None = None


class So101IK:
    """Damped-least-squares IK of one arm's five joints for its grasp point and gripper orientation."""

    def __init__(self, scene: So101Scene, arm: str) -> None:
        self.model = scene.model
        self.data = mujoco.MjData(scene.model)
        amap = scene.arms[arm]
        self.index = [i for i, j in enumerate(amap.config.joints) if j.name != amap.config.gripper]
        self.qadr = amap.qpos_adr[self.index]
        self.dadr = amap.dof_adr[self.index]
        self.lower = amap.lower[self.index]
        self.upper = amap.upper[self.index]
        self.body = self.model.body(f'{arm}/gripper').id
        self.kp = self.model.actuator_gainprm[amap.ctrl_idx[self.index], 0]
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))

    def pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(grasp point, gripper rotation) in the world for arm joints ``q``."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)  # mj_jac needs the com-based frames
        rot = self.data.xmat[self.body].reshape(3, 3).copy()
        return self.data.xpos[self.body] + rot @ GRASP_POINT, rot

    def gravity_offset(self, q: np.ndarray) -> np.ndarray:
        """What to add to joint targets ``q`` so the position servos hold the arm *at* ``q`` against gravity.

        A position servo pushes ``kp * (target - q)``; at rest that must equal the gravity torque, so
        the target sits ``bias / kp`` beyond the pose wanted (up to ~0.06 rad on the shoulder here;
        without it the twin's arms sag 1 cm at the handover).
        """
        m, d = self.model, self.data
        d.qpos[self.qadr] = q
        d.qvel[:] = 0.0
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_comVel(m, d)
        bias = np.zeros(m.nv)
        mujoco.mj_rne(m, d, 0, bias)  # gravity (no motion): no collision detection needed
        return bias[self.dadr] / self.kp

    def solve(self, pos: np.ndarray, rot: np.ndarray, q0: np.ndarray, iters: int = 25) -> tuple[np.ndarray, float]:
        """Joints reaching (pos, rot) from ``q0``; returns (q, position error in m)."""
        q = q0.copy()
        err_p = np.inf
        for _ in range(iters):
            p, r = self.pose(q)
            err_p_vec = pos - p
            a, b = r, rot  # orientation error: half the sum of the column cross products, written out (fast)
            err_r = 0.5 * np.array(
                [
                    (a[1] * b[2] - a[2] * b[1]).sum(),
                    (a[2] * b[0] - a[0] * b[2]).sum(),
                    (a[0] * b[1] - a[1] * b[0]).sum(),
                ]
            )
            err_p = float(np.linalg.norm(err_p_vec))
            if err_p < 1e-4 and np.linalg.norm(err_r) < 1e-3:
                break
            mujoco.mj_jac(self.model, self.data, self._jacp, self._jacr, p, self.body)
            jac = np.vstack([self._jacp[:, self.dadr], ROT_WEIGHT * self._jacr[:, self.dadr]])
            e = np.concatenate([err_p_vec, ROT_WEIGHT * err_r])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + IK_DAMPING * np.eye(6), e)
            q = np.clip(q + dq, self.lower, self.upper)
        return q, err_p


class So101Expert:
    """Plans one episode of ``task`` from the seed's object pose; ``act(step)`` gives joint targets + subtask."""

    def __init__(self, rig: RigConfig, task: str, seed: int, noise_rad: float = 0.0) -> None:
        """`noise_rad`: DART offsets of this std (sim/dart.py) executed, not published (`offsets`)."""
        if not 0.0 <= noise_rad <= MAX_NOISE_RAD:
            raise ValueError(f'noise_rad must be in [0, {MAX_NOISE_RAD}] rad, got {noise_rad}')
        self.rig, self.task, self.seed = rig, task, seed
        self.dt = 1.0 / rig.control_rate_hz
        scene = So101Scene(rig, task=task, seed=seed)  # a private copy: the start pose and the kinematics
        self.object_pose = sample_object_pose(task, seed)
        self.ik = {arm: So101IK(scene, arm) for arm in ('left', 'right')}
        self.home_q = {arm: scene.joint_positions(arm)[self.ik[arm].index] for arm in self.ik}
        self.plans = self._handover() if task == 'handover_cube' else self._lift_bar()
        self.num_steps = int(round(max(w[-1].t for w in self.plans.values()) / self.dt)) + 1
        self.max_ik_error = 0.0
        self.joint_plan: dict[str, np.ndarray] = {}
        labels = {arm: self._solve(arm, wps) for arm, wps in self.plans.items()}
        self.labels = [self._merge(labels['left'][k], labels['right'][k]) for k in range(self.num_steps)]
        self.noise = {arm: self._dart(arm, noise_rad) for arm in self.joint_plan}

    def _dart(self, arm: str, std: float) -> np.ndarray:
        cfg = self.rig.arm(arm)
        skip = [cfg.joint_names.index(cfg.gripper)] if cfg.gripper else []
        seed = (self.seed, 1 if arm == 'right' else 0, 101)
        return slow_offsets(self.num_steps, self.dt, self.joint_plan[arm].shape[1], skip, std, seed)

    # ------------------------------------------------------------------ plans

    def _start(self, arm: str, label: str) -> Waypoint:
        pos, rot = self.ik[arm].pose(self.home_q[arm])
        return Waypoint(0.0, pos, rot, GRIP_OPEN, label)

    def _handover(self) -> dict[str, list[Waypoint]]:
        cube = self.object_pose[:3].copy()
        down_x = gripper_rotation([0, 0, -1.0], [1.0, 0, 0])
        to_left = gripper_rotation([0, 1.0, 0], [1.0, 0, 0])  # right arm pointing +y, still closing along x
        to_right = gripper_rotation([0, -1.0, 0], [0, 0, 1.0])  # left arm pointing -y, closing vertically
        o, c = GRIP_OPEN, GRIP_CLOSED
        above = 'move the right gripper above the cube'
        right = [
            self._start('right', above),
            Waypoint(1.5, cube + [0, 0, 0.06], down_x, o, above),
            Waypoint(2.3, cube, down_x, o, 'lower the right gripper around the cube'),
            Waypoint(2.9, cube, down_x, c, 'grasp the cube with the right gripper'),
            Waypoint(3.5, cube + [0, 0, 0.08], down_x, c, 'lift the cube'),
            Waypoint(5.1, MEET + [0, -0.003, 0], to_left, c, 'hand the cube to the left arm', True, RIGHT_AT_MEET),
            Waypoint(6.7, MEET + [0, -0.003, 0], to_left, c, 'hold the cube for the left gripper'),
            Waypoint(7.3, MEET + [0, -0.003, 0], to_left, o, 'release the cube from the right gripper'),
            Waypoint(8.1, MEET + [0, -0.045, 0], to_left, o, 'move the right gripper away'),
            Waypoint(8.7, MEET + [0, -0.045, 0], to_left, o, 'hold the cube with the left arm'),
        ]
        # The left pads over the cube's +y half, the fixed (lower) pad 2 mm below the cube as the right
        # arm holds it (HELD_AT_MEET): the moving pad then presses it down onto the fixed one.
        grasp = MEET + HELD_AT_MEET + [0, 0.012, -0.002]
        left = [
            self._start('left', 'wait for the right arm'),
            Waypoint(3.5, self._start('left', '').pos, self._start('left', '').rot, o, 'wait for the right arm'),
            Waypoint(
                5.1, grasp + [0, 0.04, 0.0], to_right, o, 'move the left gripper towards the cube', True, LEFT_NEAR_MEET
            ),
            Waypoint(5.9, grasp, to_right, o, 'move the left gripper around the cube'),
            Waypoint(6.7, grasp, to_right, c, 'grasp the cube with the left gripper'),
            Waypoint(7.3, grasp, to_right, c, 'release the cube from the right gripper'),
            Waypoint(8.1, grasp + [0, 0.04, 0.02], to_right, c, 'move the cube to the left'),
            Waypoint(8.7, grasp + [0, 0.04, 0.02], to_right, c, 'hold the cube with the left arm'),
        ]
        return {'left': left, 'right': right}

    def _lift_bar(self) -> dict[str, list[Waypoint]]:
        x, y, z, qw, _, _, qz = self.object_pose
        yaw = 2 * math.atan2(qz, qw)
        along = np.array([-math.sin(yaw), math.cos(yaw), 0.0])  # the bar's long axis (its y)
        across = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        centre = np.array([x, y, z])
        ends = {'left': centre + along * (BAR_HALF[1] - 0.035), 'right': centre - along * (BAR_HALF[1] - 0.035)}
        down = {arm: gripper_rotation([0, 0, -1.0], across) for arm in ends}
        # the grasp point is a cube's centre from the fixed pad: the bar is thinner, its face on the fixed pad
        shift = across * (BAR_HALF[0] - CUBE_HALF)
        o, c = GRIP_OPEN, GRIP_CLOSED
        plans = {}
        for arm, end in ends.items():
            grasp = end + shift
            plans[arm] = [
                self._start(arm, 'move both grippers above the bar ends'),
                Waypoint(1.6, grasp + [0, 0, 0.06], down[arm], o, 'move both grippers above the bar ends'),
                Waypoint(2.4, grasp, down[arm], o, 'lower both grippers around the bar'),
                Waypoint(3.0, grasp, down[arm], c, 'grasp the bar with both grippers'),
                Waypoint(4.4, grasp + [0, 0, 0.08], down[arm], c, 'lift the bar together'),
                Waypoint(5.4, grasp + [0, 0, 0.08], down[arm], c, 'hold the bar level'),
            ]
        return plans

    # ------------------------------------------------------------------ solving

    def _sample(self, wps: list[Waypoint], t: float) -> tuple[np.ndarray, np.ndarray, float, str]:
        if t >= wps[-1].t:
            w = wps[-1]
            return w.pos, w.rot, w.grip, w.label
        for a, b in zip(wps, wps[1:], strict=False):
            if a.t <= t < b.t:
                s = _min_jerk((t - a.t) / (b.t - a.t))
                qa, qb, q = np.zeros(4), np.zeros(4), np.zeros(4)
                mujoco.mju_mat2Quat(qa, a.rot.reshape(-1))
                mujoco.mju_mat2Quat(qb, b.rot.reshape(-1))
                if np.dot(qa, qb) < 0:
                    qb = -qb
                q = (1 - s) * qa + s * qb
                rot = np.zeros(9)
                mujoco.mju_quat2Mat(rot, q / np.linalg.norm(q))
                return a.pos + s * (b.pos - a.pos), rot.reshape(3, 3), a.grip + s * (b.grip - a.grip), b.label
        raise AssertionError('unreachable')

    def _solve(self, arm: str, wps: list[Waypoint]) -> list[str]:
        ik = self.ik[arm]
        cfg = self.rig.arm(arm)
        plan = np.zeros((self.num_steps, len(cfg.joints)))
        gripper = cfg.joint_names.index(cfg.gripper)
        q = self.home_q[arm].copy()
        labels = []
        moves: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # joint-space segment (end index) -> (q from, q to)
        for k in range(self.num_steps):
            t = (k + 1) * self.dt
            pos, rot, grip, label = self._sample(wps, t)
            b = next((i for i, w in enumerate(wps) if w.t > t), None)
            if b is not None and b > 0 and wps[b].joint_space:
                if b not in moves:
                    start = np.array(wps[b].guess) if wps[b].guess is not None else q
                    q_end, err = ik.solve(wps[b].pos, wps[b].rot, start, iters=300)
                    self.max_ik_error = max(self.max_ik_error, err)
                    moves[b] = (q.copy(), q_end)
                q_a, q_b = moves[b]
                q = q_a + _min_jerk((t - wps[b - 1].t) / (wps[b].t - wps[b - 1].t)) * (q_b - q_a)
            else:
                q, err = ik.solve(pos, rot, q)
                self.max_ik_error = max(self.max_ik_error, err)
            plan[k, ik.index] = np.clip(q + ik.gravity_offset(q), ik.lower, ik.upper)
            plan[k, gripper] = grip
            labels.append(label)
        self.joint_plan[arm] = plan
        return labels

    @staticmethod
    def _merge(left: str, right: str) -> str:
        """One label a step: the arm doing the active part (the right until the left takes over)."""
        if left == right or left.startswith('wait') or right == 'hand the cube to the left arm':
            return right
        return left  # from the left's approach on, the left arm leads (the right holds, lets go, backs away)

    # ------------------------------------------------------------------ playing

    def observe(self, step: int, object_position: object) -> bool:
        """The ALOHA expert's hook for re-planning on a measurement; this expert plans once (nothing to do)."""
        return False

    def offsets(self, step: int) -> dict[str, np.ndarray]:
        """The DART offsets at ``step`` (zeros without noise), added to ``act(step)``'s targets when executing."""
        k = min(max(int(step), 0), self.num_steps - 1)
        return {arm: noise[k].copy() for arm, noise in self.noise.items()}

    def act(self, step: int) -> tuple[dict[str, np.ndarray], str]:
        """Joint targets (rig order) for control step ``step`` (0 = first tick) and its subtask."""
        k = min(max(int(step), 0), self.num_steps - 1)
        return {arm: plan[k].copy() for arm, plan in self.joint_plan.items()}, self.labels[k]


def run_episode(scene: So101Scene, expert: So101Expert, extra_steps: int = 25) -> dict:
    """Play ``expert`` on ``scene`` (reset to the expert's seed); the episode's outcome."""
    labels = []
    for k in range(expert.num_steps + extra_steps):
        targets, label = expert.act(k)
        offsets = expert.offsets(k)  # executed as the sim rig executes them (DART), never published
        for arm, target in targets.items():
            scene.command(arm, target + offsets[arm])
        scene.step()
        labels.append(label)
    return {
        'seed': scene.seed,
        'success': scene.success,
        'max_stage': scene.max_reward_reached,
        'final_stage': scene.reward,
        'subtasks': list(dict.fromkeys(labels)),
        'max_ik_error_m': expert.max_ik_error,
    }


def evaluate(rig: RigConfig, task: str, episodes: int, seed: int, noise_rad: float = 0.0) -> dict:
    """Success rate of the expert over ``episodes`` seeds from ``seed`` (success: stage 4 at the end), executed
    with DART offsets of ``noise_rad``."""
    results = []
    for i in range(episodes):
        scene = So101Scene(rig, task=task, seed=seed + i)
        results.append(run_episode(scene, So101Expert(rig, task, seed + i, noise_rad)))
    successes = sum(r['success'] for r in results)
    return {
        'task': task,
        'noise_rad': noise_rad,
        'episodes': episodes,
        'first_seed': seed,
        'successes': successes,
        'success_rate': successes / max(1, episodes),
        'failed_seeds': [r['seed'] for r in results if not r['success']],
        'failed_final_stages': [r['final_stage'] for r in results if not r['success']],
        'max_ik_error_m': max(r['max_ik_error_m'] for r in results) if results else 0.0,
    }


if __name__ == '__main__':  # python -m bimanual_vla.sim.so101_expert
    from bimanual_vla.config import load_rig

    for name in ('handover_cube', 'lift_bar'):
        print(json.dumps(evaluate(load_rig('so101_sim'), name, 5, 0), indent=1))
