"""The simulated tasks, what a policy is told for each, and which rig runs which.

One table for every consumer of a task's prompt: `collect` publishes it on ``policy/task`` (and
training reads it back from the bag), `eval-sim` and `demo` give it to the policy node, so a
checkpoint is evaluated on the words it was trained on. Task names are unique across the scenes,
so the table is keyed by task alone; `rig_tasks` says which of them a rig's scene runs (the ALOHA
scene: transfer_cube, insertion; the SO-101 twin: handover_cube, lift_bar).
"""

from __future__ import annotations

from bimanual_vla.config import RigConfig

#: What the instruction on `policy/task` says for each simulated task.
TASK_TEXT = {
    'transfer_cube': 'transfer the cube from the right arm to the left arm',
    'insertion': 'insert the peg into the socket',
    'handover_cube': 'hand the cube over from the right arm to the left arm',
    'lift_bar': 'lift the bar with both arms',
}

ALOHA_TASKS = ('transfer_cube', 'insertion')  # sim/scene.py, TASKS
SO101_TASKS = ('handover_cube', 'lift_bar')  # sim/so101_scene.py, SO101_TASKS (the twin's scene)


def rig_tasks(rig: RigConfig) -> tuple[str, ...]:
    """The tasks `rig`'s scene runs: those of the scene its own `sim.task` belongs to.

    ValueError for a rig without a `sim:` block (hardware: nothing simulates it).
    """
    if rig.sim is None:
        raise ValueError(f'rig {rig.name!r} is not simulated (no sim: block); choose a simulated rig or a twin')
    return SO101_TASKS if rig.sim.task in SO101_TASKS else ALOHA_TASKS


def task_for_rig(rig: RigConfig, task: str | None) -> str:
    """`task`, or the rig's `sim.task` when None, checked against the tasks the rig's scene runs (ValueError)."""
    tasks = rig_tasks(rig)
    chosen = rig.sim.task if task is None else task
    if chosen not in TASK_TEXT:
        raise ValueError(f'unknown task {chosen!r}; choose from {sorted(TASK_TEXT)}')
    if chosen not in tasks:
        raise ValueError(f"task {chosen!r} is not one of rig {rig.name!r}'s: {', '.join(tasks)}")
    return chosen
