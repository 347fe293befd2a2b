"""Perturbing a running episode: the task object knocked out of the gripper or moved, as a person would.

Recovery is a test of a policy that reasons in text: after the object leaves the gripper, the model's
subtask should go back to an earlier one (reach, grasp) and the arms should retry. ``sim/perturb``
(std_msgs/String) asks the simulator for one of :data:`PERTURBATIONS` at its next tick:

* ``drop``: the object falls out of the gripper: it is put back on the table right below where it is,
  at rest, upright;
* ``move``: the object is taken away and put down elsewhere: at a new place on the table drawn from the
  task's own start range (seeded by the episode seed and the perturbation's count), at rest, upright.

Both scenes (ALOHA, the SO-101 twin) call :func:`place_on_table`; eval-sim schedules them (``--perturb``).
"""

from __future__ import annotations

import mujoco
import numpy as np

PERTURBATIONS = ('drop', 'move')


def perturbation_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of an episode's `index`-th perturbation (where a ``move`` puts the object down).

    Seeded by the episode seed and the index alone, so a replay of the episode in-process (a scripted
    operator planning the retry, eval_runner.replan_after_perturbation) draws the place sim_rig draws.
    """
    return np.random.default_rng([seed, index, 31])


def place_on_table(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    joint: str,
    kind: str,
    ranges: tuple[tuple[float, float], tuple[float, float]],
    rest_z: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply perturbation `kind` to the free-jointed object `joint`: its 7-vector pose (before, after).

    ValueError for another kind or a scene without that joint.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f'unknown perturbation {kind!r}; choose from {", ".join(PERTURBATIONS)}')
    jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, joint)
    if jid < 0:
        raise ValueError(f'the scene has no object joint {joint!r}')
    adr, dof = model.jnt_qposadr[jid], model.jnt_dofadr[jid]
    before = data.qpos[adr : adr + 7].copy()
    if kind == 'drop':
        xy = data.qpos[adr : adr + 2].copy()
    else:
        xy = np.array([rng.uniform(*ranges[0]), rng.uniform(*ranges[1])])
    data.qpos[adr : adr + 7] = [xy[0], xy[1], rest_z, 1.0, 0.0, 0.0, 0.0]
    data.qvel[dof : dof + 6] = 0.0
    mujoco.mj_forward(model, data)
    return before, data.qpos[adr : adr + 7].copy()
