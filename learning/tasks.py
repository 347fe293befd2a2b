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

#: Other words for each task: `train --paraphrase` trains on all of these (the TASK_TEXT first), so a
#: prompt means the task, not one string. The tiny word-level tokenizer learns every word in them.
TASK_PHRASINGS = {
    'transfer_cube': (
        TASK_TEXT['transfer_cube'],
        'pass the cube from the right gripper to the left gripper',
        'give the cube to the left arm',
        'move the cube over to the left arm',
        'the right arm picks up the cube and hands it to the left arm',
    ),
    'insertion': (
        TASK_TEXT['insertion'],
        'put the peg in the socket',
        'pick up the peg and the socket and fit them together',
        'insert the peg in the hole of the socket',
        'push the peg into the socket with both arms',
    ),
    'handover_cube': (
        TASK_TEXT['handover_cube'],
        'pass the cube from the right gripper to the left gripper',
        'give the cube to the left arm',
        'the right arm picks up the cube and hands it to the left arm',
    ),
    'lift_bar': (
        TASK_TEXT['lift_bar'],
        'pick up the bar with both grippers',
        'raise the bar using both arms',
    ),
}

#: Phrasings kept out of training, for evaluating prompts a checkpoint never saw (`eval-sim --prompt`).
HELD_OUT_PHRASINGS = {
    'transfer_cube': ('move the cube from the right arm to the left arm', 'hand the cube to the left gripper'),
    'insertion': ('fit the peg into the socket', 'put the peg into the socket with both arms'),
    'handover_cube': ('move the cube from the right arm to the left arm',),
    'lift_bar': ('lift the bar using both grippers',),
}


def phrasings_of(text: str) -> tuple[str, ...]:
    """The training phrasings of the task `text` names (its TASK_TEXT or one of its phrasings), else `text` alone.

    Paraphrases shared by two tasks (the two handovers) resolve to the first task in TASK_PHRASINGS whose
    own TASK_TEXT is `text`, else the first that lists it.
    """
    for task, texts in TASK_PHRASINGS.items():
        if TASK_TEXT[task] == text:
            return texts
    for texts in TASK_PHRASINGS.values():
        if text in texts:
            return texts
    return (text,)


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
