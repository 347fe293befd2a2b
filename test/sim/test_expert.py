"""The scripted expert: IK accuracy, subtask labels, success in-process and through the CLI."""

from __future__ import annotations

import json
import re

import gym_aloha  # noqa: F401  (make test installs the sim extra; a missing one must fail, not skip)
import mujoco  # noqa: F401
import numpy as np
import pytest

from bimanual_vla.config import load_rig
from bimanual_vla.sim.expert import ExpertOptions, ScriptedExpert, run_episode
from bimanual_vla.sim.scene import SimScene

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
    noisy = ScriptedExpert(RIG, 'transfer_cube', 4, options=ExpertOptions(noise_rad=0.02))
    gripper = RIG.arm('right').joint_names.index('gripper')
    for k in (0, 100, 300):
        assert np.array_equal(noisy.act(k)[0]['right'], clean.act(k)[0]['right'])  # the recorded action
    assert np.array_equal(noisy.perturbed(0)['right'], clean.act(0)[0]['right'])  # faded in from zero
    offsets = np.array([noisy.perturbed(k)['right'] - clean.act(k)[0]['right'] for k in range(100, 400)])
    assert np.all(offsets[:, gripper] == 0)  # never on the gripper
    arm = np.delete(offsets, gripper, axis=1)
    assert 0.01 < arm.std() < 0.03  # about the requested std
    assert np.abs(np.diff(arm, axis=0)).max() < 0.02 * 2 * np.pi * 1.0 * 0.02 * 3  # slow: <= 1 Hz sines
    again = ScriptedExpert(RIG, 'transfer_cube', 4, options=ExpertOptions(noise_rad=0.02))
    assert np.array_equal(again.perturbed(250)['left'], noisy.perturbed(250)['left'])  # seeded by the episode
    assert np.array_equal(clean.perturbed(250)['left'], clean.act(250)[0]['left'])  # 0: the plan itself


def test_idle_arms_never_succeed() -> None:
    scene = SimScene(RIG, seed=11)
    for _ in range(200):
        scene.step()
    assert scene.max_reward_reached == 0 and not scene.success


def test_sim_expert_cli_prints_json(capsys) -> None:
    from bimanual_vla.cli.main import main

    assert main(['sim-expert', '--task', 'transfer_cube', '--episodes', '2', '--seed', '20']) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['episodes'] == 2 and result['first_seed'] == 20
    assert result['success_rate'] == 1.0 and result['failed_seeds'] == []


def test_sim_expert_cli_passes_the_handover_options_on(capsys) -> None:
    """--noise, --meet-jitter and --aim-left reach the expert: seed 510 fails unaimed and succeeds aimed."""
    from bimanual_vla.cli.main import main

    args = ['sim-expert', '--episodes', '1', '--seed', '510', '--max-speed', '2']
    args += ['--noise', '0.01', '--meet-jitter', '0.02']
    results = []
    for extra in ([], ['--aim-left']):
        assert main(args + extra) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert [r['aim_left'] for r in results] == [False, True]
    assert all(r['noise_rad'] == 0.01 and r['meet_jitter'] == 0.02 for r in results)
    assert [r['successes'] for r in results] == [0, 1]


def test_expert_replay_records_when_each_stage_was_first_reached() -> None:
    rig = load_rig('aloha_sim')
    result = run_episode(SimScene(rig, 'transfer_cube', 1000), ScriptedExpert(rig, 'transfer_cube', 1000))
    times = result['stage_first_s']
    assert result['success'] and sorted(times) == ['1', '2', '3', '4']
    assert times['1'] <= times['2'] <= times['3'] <= times['4']
    assert 2.5 < times['1'] < 3.5 and 4.5 < times['4'] < 6.0  # grasp after the 2.4 s descent; handover by 6 s


def test_a_speed_limited_expert_trails_its_wrist_flip_then_catches_up_and_still_succeeds(tmp_path, capsys) -> None:
    """`max_joint_speed_rad_s` (collect --expert-max-speed): no arm joint faster than the policy node's gate."""
    free = ScriptedExpert(RIG, 'transfer_cube', 4, options=ExpertOptions(approach='cartesian'))
    limited = ScriptedExpert(
        RIG, 'transfer_cube', 4, options=ExpertOptions(max_joint_speed_rad_s=2.0, approach='cartesian')
    )
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
        ScriptedExpert(RIG, 'transfer_cube', 4, options=ExpertOptions(max_joint_speed_rad_s=0.0))

    from bimanual_vla.cli.main import main

    status = main(['collect', str(tmp_path / 'bag'), '--episodes', '1', '--expert-max-speed', '-1', '--no-progress'])
    assert status == 2  # bad input: one line, exit status 2
    assert re.search(
        r'collect: max_joint_speed_rad_s must be positive \(None: unlimited\), got -1', capsys.readouterr().err
    )
    assert not (tmp_path / 'bag').exists()


def test_the_joint_space_approach_reaches_above_the_cube_without_the_wrist_flip(tmp_path) -> None:
    """The default approach: a joint-space move to the IK solution nearest home, then the Cartesian plan.

    A straight line from home to above the cube crosses the wrist singularity (`wrist_angle` 0), and
    the IK rolls the forearm half a turn, to +2.6 rad on some seeds and -2.6 on others: two answers
    for one observation, which a cloned policy averages into neither.
    """
    names = RIG.arm('right').joint_names
    roll, wrist = names.index('forearm_roll'), names.index('wrist_angle')
    for seed in (1000, 1001):  # the line flips the forearm to -3.1 on one, +2.8 on the other
        joint = ScriptedExpert(RIG, 'transfer_cube', seed)
        line = ScriptedExpert(RIG, 'transfer_cube', seed, options=ExpertOptions(approach='cartesian'))
        assert joint.approach == 'joint' and joint.labels == line.labels  # same clock, same labels
        plan, old = joint.joint_plan['right'], line.joint_plan['right']
        assert np.abs(old[:, roll]).max() > 2.3  # the flip the straight line makes
        assert np.abs(plan[:, roll]).max() < 1.2  # none here, on the whole plan
        above = int(round(1.6 / joint.dt)) - 1  # the step the joint-space move ends on
        assert plan[above, wrist] > 0.3 and old[above, wrist] < -0.3  # the wrist bent the other way
        ik = joint.ik['right']
        arm_cols = [names.index(j.name) for j in ik.arm_joints]
        pos_j, rot_j = ik.tcp(plan[above, arm_cols])
        pos_c, rot_c = ik.tcp(old[above, arm_cols])
        np.testing.assert_allclose(pos_j, pos_c, atol=2e-3)  # the same pose, reached the other way
        assert np.abs(rot_j - rot_c).max() < 2e-2
        # a joint-space move is not a line: the TCP must still stay well above the table on its way
        assert min(ik.tcp(plan[k, arm_cols])[0][2] for k in range(above + 1)) > 0.08
        speed = np.abs(np.diff(plan[:, arm_cols], axis=0)) / joint.dt
        assert speed.max() < 3.0  # against 4.7-45 rad/s for the flip
        assert np.abs(np.diff(line.joint_plan['right'][:, arm_cols], axis=0)).max() / line.dt > 4.0  # 14.5, 4.7 rad/s
    # seed 4 (cube straight ahead): the line only wiggles through the singularity (17 rad/s, 0.2 rad)
    wiggle = ScriptedExpert(RIG, 'transfer_cube', 4, options=ExpertOptions(approach='cartesian')).joint_plan['right']
    smooth = ScriptedExpert(RIG, 'transfer_cube', 4).joint_plan['right']
    assert np.abs(np.diff(wiggle[:, roll])).max() * RIG.control_rate_hz > 5.0
    assert np.abs(np.diff(smooth[:, roll])).max() * RIG.control_rate_hz < 1.0
    outcome = run_episode(SimScene(RIG, 'transfer_cube', 1001), ScriptedExpert(RIG, 'transfer_cube', 1001))
    assert outcome['success'] and 2.5 < outcome['stage_first_s']['1'] < 3.5
    with pytest.raises(ValueError, match='approach must be one of'):
        ScriptedExpert(RIG, 'transfer_cube', 4, options=ExpertOptions(approach='straight'))

    with pytest.raises(ValueError, match=r"approach must be one of \('joint', 'cartesian'\), got 'line'"):
        ExpertOptions(approach='line')


def _label_changes(expert: ScriptedExpert) -> list[tuple[int, str]]:
    labels = expert.labels
    return [(k, labels[k]) for k in range(1, len(labels)) if labels[k] != labels[k - 1]]


def test_a_time_warped_expert_stretches_each_segment_within_its_bound_and_still_hands_over() -> None:
    """`time_warp`: every segment of the shared timeline gets its own length; the order and the handover stay."""
    from bimanual_vla.sim.expert import GRIPPER_CLOSED, GRIPPER_OPEN

    nominal = ScriptedExpert(RIG, 'transfer_cube', 300)
    warped = ScriptedExpert(RIG, 'transfer_cube', 300, options=ExpertOptions(time_warp=0.2))
    assert _label_changes(
        ScriptedExpert(RIG, 'transfer_cube', 300, options=ExpertOptions(time_warp=0.0))
    ) == _label_changes(nominal)
    assert _label_changes(
        ScriptedExpert(RIG, 'transfer_cube', 300, options=ExpertOptions(time_warp=0.2))
    ) == _label_changes(warped)
    assert _label_changes(
        ScriptedExpert(RIG, 'transfer_cube', 301, options=ExpertOptions(time_warp=0.2))
    ) != _label_changes(warped)
    changes_n, changes_w = _label_changes(nominal), _label_changes(warped)
    assert [label for _, label in changes_w] == [label for _, label in changes_n]  # the same moves in order
    bounds_n = np.diff([0] + [k for k, _ in changes_n] + [nominal.num_steps])
    bounds_w = np.diff([0] + [k for k, _ in changes_w] + [warped.num_steps])
    # each segment within exp(+/-0.2) of its nominal length (a tick either end for the rounding)
    assert np.all(bounds_w >= np.exp(-0.2) * bounds_n - 2) and np.all(bounds_w <= np.exp(0.2) * bounds_n + 2)
    ratios = bounds_w / bounds_n
    assert ratios.max() - ratios.min() > 0.1  # not one common factor: the segments vary on their own
    # the handover keeps its order: the right gripper opens only once the left one has closed
    left, right = RIG.arm('left'), RIG.arm('right')
    left_grip = warped.joint_plan['left'][:, left.joint_names.index(left.gripper)]
    right_grip = warped.joint_plan['right'][:, right.joint_names.index(right.gripper)]
    left_closed = int(np.argmax(left_grip <= GRIPPER_CLOSED + 1e-9))
    right_closed = int(np.argmax(right_grip <= GRIPPER_CLOSED + 1e-9))
    right_reopens = right_closed + int(np.argmax(right_grip[right_closed:] > GRIPPER_CLOSED + 1e-3))
    assert 0 < right_closed < left_closed <= right_reopens and left_grip[0] == pytest.approx(GRIPPER_OPEN)
    outcome = run_episode(SimScene(RIG, 'transfer_cube', 300), warped)
    assert outcome['success']
    for bad in (-0.1, 0.8):
        with pytest.raises(ValueError, match='time_warp must be in'):
            ScriptedExpert(RIG, 'transfer_cube', 300, options=ExpertOptions(time_warp=bad))


def test_nearest_solution_prefers_the_least_motion_and_refuses_an_unreachable_pose() -> None:
    expert = ScriptedExpert(RIG, 'transfer_cube', 0)
    ik = expert.ik['right']
    home = expert.home_q['right']
    pos, rot = ik.tcp(home)
    np.testing.assert_allclose(ik.nearest_solution(pos, rot, home), home, atol=1e-3)  # home itself
    with pytest.raises(ValueError, match='no IK solution within the joint limits'):
        ik.nearest_solution(pos + [3.0, 0, 0], rot, home)


def _cube_at(expert: ScriptedExpert, seed: int, step: int) -> tuple[dict, np.ndarray]:
    """Play `expert` on seed `seed`; its outcome and the cube's centre as `observe(step)` saw it."""
    seen = {}

    def on_step(k: int, scene: SimScene, label: str) -> None:
        if k == step - 1:  # observe(step) runs before step `step`, after on_step(step - 1)
            seen['cube'] = scene.object_pose('red_box_joint')[:3].copy()

    outcome = run_episode(SimScene(RIG, 'transfer_cube', seed), expert, on_step=on_step)
    return outcome, seen['cube']


def test_the_aimed_left_grasp_closes_where_the_cube_is_held() -> None:
    """`aim_left`: halfway around the cube the left grasp moves onto the measured cube; nothing else changes."""
    from bimanual_vla.sim.expert import AIM_LABEL, LEFT_GRASP_FROM_CUBE

    seed, kw = 510, {'max_joint_speed_rad_s': 2.0, 'noise_rad': 0.01, 'meet_jitter': 0.02}
    plain = ScriptedExpert(RIG, 'transfer_cube', seed, options=ExpertOptions(**kw))
    aimed = ScriptedExpert(RIG, 'transfer_cube', seed, options=ExpertOptions(aim_left=True, **kw))
    assert plain.aim_step is None and aimed.aim_step is not None
    k = aimed.aim_step
    outcome, cube = _cube_at(aimed, seed, k)
    assert outcome['success']
    assert not run_episode(SimScene(RIG, 'transfer_cube', seed), plain)['success']  # this seed needs the aim
    grasp = next(w for w in aimed.plans['left'] if w.label == AIM_LABEL)
    np.testing.assert_allclose(aimed.aim_correction, cube + LEFT_GRASP_FROM_CUBE - grasp.pos, atol=1e-12)
    assert 0.005 < np.linalg.norm(aimed.aim_correction) < 0.03  # the DART offsets moved the cube by millimetres
    # before the aim the plans are the same; from the grasp on the left TCP is where the cube was measured
    np.testing.assert_array_equal(aimed.joint_plan['left'][:k], plain.joint_plan['left'][:k])
    np.testing.assert_array_equal(aimed.joint_plan['right'], plain.joint_plan['right'])
    assert aimed.labels == plain.labels
    at_grasp = int(round(grasp.t / aimed.dt)) + 10
    for expert, target in ((aimed, cube + LEFT_GRASP_FROM_CUBE), (plain, grasp.pos)):
        tcp, _ = expert.ik['left'].tcp(ScriptedExpert._arm_only(RIG, 'left', expert.joint_plan['left'][at_grasp]))
        np.testing.assert_allclose(tcp, target, atol=1e-3)
    # the re-plan is continuous and keeps the speed limit
    left = RIG.arm('left')
    arm_cols = [i for i, n in enumerate(left.joint_names) if n != left.gripper]
    steps = np.abs(np.diff(aimed.joint_plan['left'][:, arm_cols], axis=0))
    assert steps.max() * 50 <= 2.0 + 1e-9
    assert not aimed.observe(k, lambda: cube + 1.0)  # aims once per episode
    assert not aimed.observe(k + 1, lambda: cube + 1.0)


@pytest.mark.parametrize(('task', 'kind', 'at_s'), [('transfer_cube', 'drop', 4.0), ('transfer_cube', 'move', 4.5),
                                                  ('insertion', 'drop', 4.0)])  # fmt: skip
def test_after_a_perturbation_the_expert_plans_again_and_retries_from_the_first_subtask(task, kind, at_s) -> None:
    """`replan`: the object knocked out of the gripper (or moved) while held; the expert starts the task over from
    where the arms were commanded, its labels going back to the first subtask, and still succeeds."""
    seed = 301
    # DART offsets on transfer_cube (the insertion expert itself succeeds on 2 of 12 seeds at 0.01 rad)
    options = ExpertOptions(max_joint_speed_rad_s=2.0, noise_rad=0.01 if task == 'transfer_cube' else 0.0)
    expert = ScriptedExpert(RIG, task, seed, options=options)
    nominal = ScriptedExpert(RIG, task, seed, options=options)
    scene = SimScene(RIG, task=task, seed=seed)
    at = int(round(at_s / expert.dt))
    for k in range(at):
        for arm, target in expert.perturbed(k).items():
            scene.command(arm, target)
        scene.step()
    assert scene.reward >= 2  # lifted: the perturbation takes the object out of the gripper
    before, after = scene.perturb(kind, np.random.default_rng([seed, 0, 31]))
    assert np.linalg.norm(after[:3] - before[:3]) > 0.01  # out of the gripper (onto the table, or elsewhere)
    expert.replan(at, {name: scene.object_pose(name) for name in expert.poses})
    assert expert.replans == [at]
    for k in range(at, expert.num_steps + 50):
        for arm, target in expert.perturbed(k).items():
            scene.command(arm, target)
        scene.step()
    assert scene.success
    # the steps before are kept; after it the labels start over and the plan is a whole episode longer
    assert expert.labels[:at] == nominal.labels[:at]
    assert expert.labels[at] == nominal.labels[0] != nominal.labels[at]
    assert list(dict.fromkeys(expert.labels[at:])) == list(dict.fromkeys(nominal.labels))
    for arm in ('left', 'right'):
        np.testing.assert_array_equal(expert.joint_plan[arm][:at], nominal.joint_plan[arm][:at])
        # continuous through the re-plan (the speed limit on the arm joints; the grippers from where they were)
        jump = np.abs(expert.joint_plan[arm][at] - expert.joint_plan[arm][at - 1])
        assert jump.max() <= 2.0 * expert.dt + 1e-6, (arm, jump)
        assert expert.noise[arm].shape == expert.joint_plan[arm].shape
        assert np.abs(expert.noise[arm][at] - expert.noise[arm][at - 1]).max() < 1e-3  # the offsets fade across
    assert expert.num_steps > nominal.num_steps + at - 10


def test_a_coached_subtask_is_done_from_where_the_arms_are_then_the_task_again() -> None:
    """`follow`: told 'release the cube from the right gripper' at 4 s (held, long before the handover), the
    expert does that subtask's move (the plan's own joint change over it) from its last targets, labelled so;
    then, planned again from the cube on the table, it still succeeds."""
    seed, release = 302, 'release the cube from the right gripper'
    options = ExpertOptions(max_joint_speed_rad_s=2.0)
    expert, nominal = (ScriptedExpert(RIG, 'transfer_cube', seed, options=options) for _ in range(2))
    steps = expert.subtasks_with_steps()
    assert list(steps) == expert.subtasks and release in steps and sum(steps.values()) <= expert.num_steps
    with pytest.raises(ValueError, match="no subtask 'dance'"):
        expert.follow(10, 'dance')
    scene = SimScene(RIG, task='transfer_cube', seed=seed)
    at, k = 200, 0
    while k < expert.num_steps + 50:
        if k == at:
            end = expert.follow(k, release)
            assert end == at + steps[release] == expert.replan_due
        if expert.replan_due is not None and k >= expert.replan_due:
            expert.replan(k, {name: scene.object_pose(name) for name in expert.poses})
        for arm, target in expert.perturbed(k).items():
            scene.command(arm, target)
        scene.step()
        k += 1
    assert scene.success and expert.coached == [(at, release)] and expert.replans == [end]
    assert expert.labels[at:end] == [release] * steps[release]
    assert expert.labels[end] == 'move the right gripper above the cube'
    a = nominal.labels.index(release)
    for arm in ('left', 'right'):
        moved = expert.joint_plan[arm][end - 1] - expert.joint_plan[arm][at - 1]
        planned = nominal.joint_plan[arm][a + steps[release] - 1] - nominal.joint_plan[arm][a - 1]
        np.testing.assert_allclose(moved, planned, atol=1e-9)  # the same displacement, from elsewhere
    right = RIG.arm('right')
    grip = right.joint_names.index(right.gripper)
    assert expert.joint_plan['right'][end - 1, grip] - expert.joint_plan['right'][at - 1, grip] > 0.02  # it opened


def test_a_jittered_handover_point_moves_both_arms_and_is_seeded() -> None:
    """`meet_jitter`: the right arm hands over at a seeded point within the bound; the left grasp follows it."""
    from bimanual_vla.sim.expert import AIM_LABEL

    def handover(expert: ScriptedExpert) -> tuple[np.ndarray, np.ndarray]:
        right = next(w for w in expert.plans['right'] if w.label == 'hand the cube to the left arm')
        left = next(w for w in expert.plans['left'] if w.label == AIM_LABEL)
        return right.pos, left.pos

    nominal = handover(ScriptedExpert(RIG, 'transfer_cube', 42))
    moved = handover(ScriptedExpert(RIG, 'transfer_cube', 42, options=ExpertOptions(meet_jitter=0.02)))
    offset = moved[0] - nominal[0]
    np.testing.assert_allclose(moved[1] - nominal[1], offset, atol=1e-12)  # the left grasp moves with it
    assert np.all(np.abs(offset) <= 0.02) and np.abs(offset).max() > 0.005
    again = handover(ScriptedExpert(RIG, 'transfer_cube', 42, options=ExpertOptions(meet_jitter=0.02)))
    other = handover(ScriptedExpert(RIG, 'transfer_cube', 43, options=ExpertOptions(meet_jitter=0.02)))
    np.testing.assert_array_equal(again[0], moved[0])
    assert np.abs(other[0] - moved[0]).max() > 1e-4
    for bad in (-0.01, 0.05):
        with pytest.raises(ValueError, match='meet_jitter must be in'):
            ScriptedExpert(RIG, 'transfer_cube', 42, options=ExpertOptions(meet_jitter=bad))
    with pytest.raises(ValueError, match='apply to transfer_cube only'):
        ScriptedExpert(RIG, 'insertion', 42, options=ExpertOptions(aim_left=True))


@pytest.mark.parametrize(
    ('fields', 'message'),
    [
        ({'noise_rad': 0.25}, r'noise_rad must be in \[0, 0.2\] rad, got 0.25'),
        ({'noise_rad': float('nan')}, r'noise_rad must be in \[0, 0.2\] rad, got nan'),
        (
            {'max_joint_speed_rad_s': float('inf')},
            r'max_joint_speed_rad_s must be positive \(None: unlimited\), got inf',
        ),
        ({'time_warp': 0.6}, r'time_warp must be in \[0, 0.5\], got 0.6'),
        ({'meet_jitter': -0.01}, r'meet_jitter must be in \[0, 0.03\] m, got -0.01'),
    ],
)
def test_expert_options_are_checked_once_when_made(fields: dict, message: str) -> None:
    """Every option out of its range is refused by ExpertOptions itself, naming the field and the value."""
    with pytest.raises(ValueError, match=message):
        ExpertOptions(**fields)


def test_expert_options_for_transfer_cube_only_are_refused_for_insertion() -> None:
    ExpertOptions(meet_jitter=0.02, aim_left=True).check_task('transfer_cube')
    ExpertOptions(noise_rad=0.01, time_warp=0.2).check_task('insertion')  # DART and warp apply to both
    for options in (ExpertOptions(aim_left=True), ExpertOptions(meet_jitter=0.01)):
        with pytest.raises(ValueError, match="apply to transfer_cube only, not 'insertion'"):
            options.check_task('insertion')


def test_expert_options_travel_to_sim_rig_parameters_and_back() -> None:
    """The sim rig's expert_* parameters carry every option; 0 is an unlimited speed (a parameter has no null)."""
    from bimanual_vla.sim.node import expert_options, expert_parameters

    options = ExpertOptions(0.01, 2.0, 'cartesian', 0.2, 0.02, True)
    params = expert_parameters(options)
    assert params == {
        'expert_noise_rad': 0.01,
        'expert_max_joint_speed': 2.0,
        'expert_approach': 'cartesian',
        'expert_time_warp': 0.2,
        'expert_meet_jitter': 0.02,
        'expert_aim_left': True,
    }
    assert expert_options(params) == options
    assert expert_parameters(ExpertOptions())['expert_max_joint_speed'] == 0.0
    assert expert_options({'expert_max_joint_speed': 0.0}) == ExpertOptions()
    assert isinstance(expert_parameters(ExpertOptions(meet_jitter=0))['expert_meet_jitter'], float)  # a double


def test_sim_expert_cli_refuses_a_bad_option_naming_it() -> None:
    from bimanual_vla.cli.main import main

    with pytest.raises(SystemExit, match=r'sim-expert: time_warp must be in \[0, 0.5\], got 0.7'):
        main(['sim-expert', '--episodes', '1', '--time-warp', '0.7'])
    with pytest.raises(SystemExit, match='sim-expert: aim_left and meet_jitter apply to transfer_cube only'):
        main(['sim-expert', '--episodes', '1', '--task', 'insertion', '--aim-left'])
