"""The scripted expert: IK accuracy, subtask labels, success in-process and through the CLI."""

from __future__ import annotations

import json

import gym_aloha  # noqa: F401  (make test installs the sim extra; a missing one must fail, not skip)
import mujoco  # noqa: F401
import numpy as np
import pytest

from bimanual_vla.config import load_rig
from drivers.expert import ScriptedExpert, run_episode
from drivers.sim_scene import SimScene

RIG = load_rig('aloha_sim')


def test_ik_reaches_a_pose_and_targets_stay_in_limits() -> None:
    expert = ScriptedExpert(RIG, 'transfer_cube', 0)
    assert expert.max_ik_error < 2e-3
    for arm in ('left', 'right'):
        plan = expert.joint_plan[arm]
        cfg = RIG.arm(arm)
        assert plan.shape == (expert.num_steps, len(cfg.joints))
        assert np.all(plan >= [j.lower for j in cfg.joints]) and np.all(plan <= [j.upper for j in cfg.joints])
        # the shoulder and elbow move smoothly (the wrist may swing near its singularity; the sim's
        # max-step limiter smooths that, as the real driver would)
        assert np.abs(np.diff(plan[:, 1:3], axis=0)).max() < cfg.max_step_rad
    ik = expert.ik['right']
    q0 = expert.home_q['right']
    pos, rot = ik.tcp(q0)
    q, err = ik.solve(pos + [-0.05, 0.03, -0.04], rot, q0)
    assert err < 1e-3 and np.allclose(ik.tcp(q)[0], pos + [-0.05, 0.03, -0.04], atol=1e-3)


def test_every_step_labelled_in_task_order() -> None:
    expert = ScriptedExpert(RIG, 'transfer_cube', 1)
    assert len(expert.labels) == expert.num_steps and all(expert.labels)
    order = list(dict.fromkeys(expert.labels))
    for earlier, later in [
        ('move the right gripper above the cube', 'grasp the cube with the right gripper'),
        ('grasp the cube with the right gripper', 'lift the cube'),
        ('lift the cube', 'grasp the cube with the left gripper'),
        ('grasp the cube with the left gripper', 'release the cube from the right gripper'),
    ]:
        assert order.index(earlier) < order.index(later)
    targets, label = expert.act(0)
    assert set(targets) == {'left', 'right'} and label == 'move the right gripper above the cube'


@pytest.mark.parametrize(('task', 'seed'), [('transfer_cube', 11), ('transfer_cube', 12), ('insertion', 11)])
def test_expert_succeeds_in_process(task: str, seed: int) -> None:
    scene = SimScene(RIG, task=task, seed=seed)
    stages = []
    outcome = run_episode(scene, ScriptedExpert(RIG, task, seed), on_step=lambda k, sc, _: stages.append(sc.reward))
    assert outcome['success'] and outcome['final_stage'] == 4
    assert stages[0] == 0 and 2 in stages  # it went through the intermediate stages
    assert stages.index(4) > stages.index(2)


def test_dart_noise_perturbs_execution_not_the_plan() -> None:
    clean = ScriptedExpert(RIG, 'transfer_cube', 4)
    noisy = ScriptedExpert(RIG, 'transfer_cube', 4, noise_rad=0.02)
    gripper = RIG.arm('right').joint_names.index('gripper')
    for k in (0, 100, 300):
        assert np.array_equal(noisy.act(k)[0]['right'], clean.act(k)[0]['right'])  # the recorded action
    assert np.array_equal(noisy.perturbed(0)['right'], clean.act(0)[0]['right'])  # faded in from zero
    offsets = np.array([noisy.perturbed(k)['right'] - clean.act(k)[0]['right'] for k in range(100, 400)])
    assert np.all(offsets[:, gripper] == 0)  # never on the gripper
    arm = np.delete(offsets, gripper, axis=1)
    assert 0.01 < arm.std() < 0.03  # about the requested std
    assert np.abs(np.diff(arm, axis=0)).max() < 0.02 * 2 * np.pi * 1.0 * 0.02 * 3  # slow: <= 1 Hz sines
    again = ScriptedExpert(RIG, 'transfer_cube', 4, noise_rad=0.02)
    assert np.array_equal(again.perturbed(250)['left'], noisy.perturbed(250)['left'])  # seeded by the episode
    assert np.array_equal(clean.perturbed(250)['left'], clean.act(250)[0]['left'])  # 0: the plan itself


def test_idle_arms_never_succeed() -> None:
    scene = SimScene(RIG, seed=11)
    for _ in range(200):
        scene.step()
    assert scene.max_reward_reached == 0 and not scene.success


def test_sim_expert_cli_prints_json(capsys) -> None:
    from bimanual_vla.cli import main

    assert main(['sim-expert', '--task', 'transfer_cube', '--episodes', '2', '--seed', '20']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['episodes'] == 2 and result['first_seed'] == 20
    assert result['success_rate'] == 1.0 and result['failed_seeds'] == []


def test_expert_replay_records_when_each_stage_was_first_reached() -> None:
    rig = load_rig('aloha_sim')
    result = run_episode(SimScene(rig, 'transfer_cube', 1000), ScriptedExpert(rig, 'transfer_cube', 1000))
    times = result['stage_first_s']
    assert result['success'] and sorted(times) == ['1', '2', '3', '4']
    assert times['1'] <= times['2'] <= times['3'] <= times['4']
    assert 2.5 < times['1'] < 3.5 and 4.5 < times['4'] < 6.0  # grasp after the 2.4 s descent; handover by 6 s


def test_a_speed_limited_expert_trails_its_wrist_flip_then_catches_up_and_still_succeeds(tmp_path) -> None:
    """`max_joint_speed_rad_s` (collect --expert-max-speed): no arm joint faster than the policy node's gate."""
    free = ScriptedExpert(RIG, 'transfer_cube', 4)
    limited = ScriptedExpert(RIG, 'transfer_cube', 4, max_joint_speed_rad_s=2.0)
    gripper = RIG.arm('right').joint_names.index('gripper')
    free_plan, plan = free.joint_plan['right'], limited.joint_plan['right']
    free_speed = np.abs(np.diff(free_plan, axis=0)) / free.dt
    assert np.delete(free_speed, gripper, axis=1).max() > 10  # the wrist flip on the way above the cube
    speed = np.abs(np.diff(plan, axis=0)) / limited.dt
    assert np.delete(speed, gripper, axis=1).max() <= 2.0 + 1e-9
    assert np.array_equal(plan[:, gripper], free_plan[:, gripper])  # grippers are not limited
    assert limited.max_speed_lag_rad > 0.1  # it did trail (0.3 rad on this seed)...
    np.testing.assert_allclose(plan[-1], free_plan[-1], atol=1e-9)  # ...and caught up
    assert limited.labels == free.labels  # same clock, same labels
    outcome = run_episode(SimScene(RIG, 'transfer_cube', 4), limited)
    assert outcome['success']
    with pytest.raises(ValueError, match='max_joint_speed_rad_s must be positive'):
        ScriptedExpert(RIG, 'transfer_cube', 4, max_joint_speed_rad_s=0.0)

    from bimanual_vla.collect import collect

    with pytest.raises(ValueError, match=r'expert_max_joint_speed_rad_s must be >= 0 \(0: unlimited\), got -1'):
        collect(tmp_path / 'bag', episodes=1, expert_max_joint_speed_rad_s=-1.0, progress=False)
    assert not (tmp_path / 'bag').exists()
