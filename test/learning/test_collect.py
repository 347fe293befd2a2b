"""`bimanual-vla collect`: the sim expert recorded through the real topics and recorder, faster than real time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

EPISODE_S = 1.2


@pytest.fixture(scope='module')
def collected(tmp_path_factory):
    from bimanual_vla.learning.collect import CollectSettings, collect
    from bimanual_vla.sim.expert import ExpertOptions

    out = tmp_path_factory.mktemp('collect') / 'bag'
    # the straight-line approach, whose wrist flip the limit has to tame
    expert = ExpertOptions(max_joint_speed_rad_s=2.0, approach='cartesian', time_warp=0.3)
    settings = CollectSettings(
        task='transfer_cube', episodes=2, seed=7, episode_s=EPISODE_S, progress=False, expert=expert
    )
    return out, collect(out, settings)


def test_the_speed_limited_expert_records_no_command_faster_than_the_gate(collected):
    """`--expert-max-speed 2`: the recorded actions hold no motion the policy node's 2 rad/s gate would clamp."""
    from bimanual_vla.config import load_rig
    from bimanual_vla.learning.dataset import BagDataset
    from bimanual_vla.sim.expert import ExpertOptions, ScriptedExpert

    out, _ = collected
    summary = json.loads((out / 'collect.json').read_text())
    assert summary['expert_max_joint_speed_rad_s'] == 2.0 and summary['command_stamps'] == 'issued'
    assert summary['format_version'] == 3
    assert summary['expert_approach'] == 'cartesian'  # reached the sim: the joint approach peaks at 1.1 here
    rig = load_rig('aloha_sim')
    ticks = int(EPISODE_S * 50)
    unlimited = max(
        float(np.max(np.abs(np.diff(plan[:ticks], axis=0)))) * 50
        for seed in (7, 8)
        for plan in ScriptedExpert(
            rig, 'transfer_cube', seed, options=ExpertOptions(approach='cartesian')
        ).joint_plan.values()
    )
    assert unlimited > 4.0  # without the limit these seconds hold the wrist flip
    ds = BagDataset(out, rig='aloha_sim', chunk_size=2, time_base='header')
    grippers = [i for i, n in enumerate(ds.joint_names) if n.endswith('gripper')]
    fastest = 0.0
    for i in range(len(ds)):
        a = ds.sample(i, images=False)['actions']
        fastest = max(fastest, float(np.max(np.delete(np.abs(a[1] - a[0]), grippers))) * 50)
    assert 1.5 < fastest <= 2.0 + 1e-4  # float32 positions in the bag


def test_the_time_warped_expert_reaches_the_sim(collected):
    """`--expert-time-warp`: the recorded commands follow the warped plan of each seed, not the nominal one."""
    from bimanual_vla.config import load_rig
    from bimanual_vla.learning.dataset import BagDataset
    from bimanual_vla.sim.expert import ExpertOptions, ScriptedExpert

    out, _ = collected
    assert json.loads((out / 'collect.json').read_text())['expert_time_warp'] == 0.3
    rig = load_rig('aloha_sim')
    ds = BagDataset(out, rig='aloha_sim', chunk_size=1, time_base='header')
    for e, seed in enumerate((7, 8)):
        plans = {
            warp: ScriptedExpert(
                rig,
                'transfer_cube',
                seed,
                options=ExpertOptions(max_joint_speed_rad_s=2.0, approach='cartesian', time_warp=warp),
            ).joint_plan['right']
            for warp in (0.0, 0.3)
        }
        errors = {warp: [] for warp in plans}
        for i in ds.episode_range(e):
            sample = ds.sample(i, images=False)
            k = int(round(sample['time_ns'] * 1e-9 * 50))
            for warp, plan in plans.items():  # the nearest of the plan's ticks around the stamp
                near = plan[max(0, k - 2) : k + 2]
                errors[warp].append(float(np.abs(near - sample['actions'][0][7:14]).max(axis=1).min()))
        assert np.median(errors[0.3]) < 0.01 < np.median(errors[0.0])


def test_the_aimed_and_jittered_expert_reaches_the_sim(tmp_path):
    """`--expert-aim-left --expert-meet-jitter`: the sim's expert hands over at the seed's point and aims there.

    The recorded commands are compared with the same expert played in-process on the same seed (the
    physics is the same, so it measures the same cube): the right arm follows the jittered plan, not the
    nominal one, and from the aim on the left arm follows the aimed plan, not the unaimed one.
    """
    from bimanual_vla.config import load_rig
    from bimanual_vla.learning.collect import CollectSettings, collect
    from bimanual_vla.learning.dataset import BagDataset
    from bimanual_vla.sim.expert import ExpertOptions, ScriptedExpert, run_episode
    from bimanual_vla.sim.scene import SimScene

    seed, kw = 501, {'max_joint_speed_rad_s': 2.0, 'noise_rad': 0.02}
    out = tmp_path / 'bag'
    expert = ExpertOptions(meet_jitter=0.02, aim_left=True, **kw)
    collect(
        out, CollectSettings(task='transfer_cube', episodes=1, seed=seed, episode_s=5.8, progress=False, expert=expert)
    )
    summary = json.loads((out / 'collect.json').read_text())
    assert summary['expert_meet_jitter'] == 0.02 and summary['expert_aim_left'] is True
    rig = load_rig('aloha_sim')
    aimed = ScriptedExpert(rig, 'transfer_cube', seed, options=expert)
    run_episode(SimScene(rig, 'transfer_cube', seed), aimed)
    assert np.linalg.norm(aimed.aim_correction) > 0.003
    plans = {
        'aimed': aimed.joint_plan,
        'unaimed': ScriptedExpert(rig, 'transfer_cube', seed, options=ExpertOptions(meet_jitter=0.02, **kw)).joint_plan,
        'nominal': ScriptedExpert(rig, 'transfer_cube', seed, options=ExpertOptions(**kw)).joint_plan,
    }
    ds = BagDataset(out, rig='aloha_sim', chunk_size=1, time_base='header')
    errors = {(name, arm): [] for name in plans for arm in ('left', 'right')}
    for i in ds.episode_range(0):
        sample = ds.sample(i, images=False)
        k = int(round(sample['time_ns'] * 1e-9 * 50))
        if k < 175:  # the handover moves: the right arm from 3.5 s, the aim at ~5 s
            continue
        for name, plan in plans.items():
            for arm, cols in (('left', slice(0, 7)), ('right', slice(7, 14))):
                if arm == 'left' and k < aimed.aim_step + 5:
                    continue
                near = plan[arm][max(0, k - 2) : k + 2]
                errors[name, arm].append(float(np.abs(near - sample['actions'][0][cols]).max(axis=1).min()))
    median = {key: float(np.median(v)) for key, v in errors.items()}
    assert median['aimed', 'right'] < 0.002 < median['nominal', 'right']
    assert median['aimed', 'left'] < 0.002 < median['unaimed', 'left']


def test_summary_names_every_episode_with_its_seed_and_outcome(collected):
    out, result = collected
    summary = json.loads((out / 'collect.json').read_text())
    assert [e['seed'] for e in summary['episodes']] == [7, 8]
    assert [e['label'] for e in summary['episodes']] == ['transfer_cube seed 7', 'transfer_cube seed 8']
    # 1.2 s of a transfer is not a success: the flag follows sim/success, not a default
    assert [e['success'] for e in summary['episodes']] == [False, False]
    assert summary['task_text'] == 'transfer the cube from the right arm to the left arm'
    assert summary['dropped_messages'] == 0
    assert [e['foreign_publishers'] for e in summary['episodes']] == [[], []]  # alone on its domain
    for e in result.episodes:
        assert e.first_tick_s is not None and e.first_tick_s <= 0.1  # the marker follows the reset's first tick


def test_a_perturbed_episode_records_the_expert_starting_over(tmp_path):
    """`--perturb t=3.8:drop`: the cube knocked out of the right gripper after the lift; the recorded labels go
    back to the first subtask and the commands stay continuous; collect.json says what was asked and when."""
    from bimanual_vla.learning.collect import CollectSettings, collect
    from bimanual_vla.learning.dataset import BagDataset
    from bimanual_vla.learning.recovery import PerturbEvent
    from bimanual_vla.sim.expert import ExpertOptions

    out = tmp_path / 'bag'
    settings = CollectSettings(
        task='transfer_cube', episodes=1, seed=7, episode_s=5.5, progress=False,
        expert=ExpertOptions(max_joint_speed_rad_s=2.0), perturb=(PerturbEvent(3.8, 'drop'),),
    )  # fmt: skip
    collect(out, settings)
    summary = json.loads((out / 'collect.json').read_text())
    assert summary['perturb'] == [[3.8, 'drop']] and summary['episodes'][0]['events'] == [[3.8, 'perturb', 'drop']]
    ds = BagDataset(out, rig='aloha_sim', chunk_size=1, time_base='header')
    rows = [ds.sample(i, images=False) for i in ds.episode_range(0)]
    times = np.array([r['time_ns'] * 1e-9 for r in rows])
    labels = [r['subtask'] for r in rows]
    before = [label for t, label in zip(times, labels, strict=True) if t < 3.8]
    after = [label for t, label in zip(times, labels, strict=True) if t > 4.0]
    assert 'lift the cube' in before and 'lift the cube' not in after[:5]
    assert after[0] == 'move the right gripper above the cube'  # the task over again, from its first subtask
    actions = np.array([r['actions'][0] for r in rows])
    arm_cols = [c for c in range(14) if c not in (6, 13)]  # the grippers are in metres
    assert np.abs(np.diff(actions[:, arm_cols], axis=0)).max() < 2.0 * 0.02 * 1.5  # no jump at the re-plan


def test_event_times_are_jittered_per_episode_and_refused_where_they_cannot_run():
    from bimanual_vla.learning.coaching import CoachEvent
    from bimanual_vla.learning.collect import CollectSettings
    from bimanual_vla.learning.recovery import PerturbEvent

    asked = (PerturbEvent(4.0, 'drop'), PerturbEvent(1.0, 'move'))
    coach = (CoachEvent(6.0, 'lift the cube'),)
    fixed = CollectSettings(task='transfer_cube', perturb=asked, coach=coach)
    assert fixed.events(3) == [(1.0, 'perturb', 'move'), (4.0, 'perturb', 'drop'), (6.0, 'coach', 'lift the cube')]
    # the expert starts over after the last event, here after the coached lift (0.4 s of the plan)
    assert fixed.extra_duration_s(fixed.events(3)) == pytest.approx(6.4, abs=0.05)
    jittered = CollectSettings(task='transfer_cube', perturb=asked, jitter_s=0.5)
    a, b = jittered.events(3), jittered.events(4)
    assert a == jittered.events(3) != b  # seeded by the episode
    for got in (a, b):
        assert abs(got[0][0] - 1.0) <= 0.5 and abs(got[1][0] - 4.0) <= 0.5
    with pytest.raises(ValueError, match='does not plan again'):
        CollectSettings(task='handover_cube', rig_name='so101_sim', perturb=asked)
    with pytest.raises(ValueError, match='does not plan again'):
        CollectSettings(task='handover_cube', rig_name='so101_sim', coach=coach)
    with pytest.raises(ValueError, match='give at least one'):
        CollectSettings(task='transfer_cube', jitter_s=0.5)
    with pytest.raises(ValueError, match='jitter_s'):
        CollectSettings(task='transfer_cube', perturb=asked, jitter_s=9.0)
    with pytest.raises(ValueError, match="no subtask 'dance'"):
        CollectSettings(task='transfer_cube', coach=(CoachEvent(2.0, 'dance'),))


def test_a_coached_episode_records_the_coached_move_under_its_label_then_the_task_again(tmp_path):
    """`--coach "t=4.0:release the cube from the right gripper"`: the expert opens the right gripper at 4 s (the
    cube is held, long before the handover), labelled so, for as long as that move lasts; then it starts over."""
    from bimanual_vla.config import load_rig
    from bimanual_vla.learning.coaching import CoachEvent
    from bimanual_vla.learning.collect import CollectSettings, collect
    from bimanual_vla.learning.dataset import BagDataset
    from bimanual_vla.sim.expert import ExpertOptions, ScriptedExpert

    release = 'release the cube from the right gripper'
    out = tmp_path / 'bag'
    options = ExpertOptions(max_joint_speed_rad_s=2.0)
    settings = CollectSettings(
        task='transfer_cube', episodes=1, seed=7, episode_s=5.6, progress=False, expert=options,
        coach=(CoachEvent(4.0, release),),
    )  # fmt: skip
    collect(out, settings)
    summary = json.loads((out / 'collect.json').read_text())
    steps = ScriptedExpert(load_rig('aloha_sim'), 'transfer_cube', 7, options=options).subtasks_with_steps()[release]
    assert summary['coach'] == [[4.0, release]]
    assert summary['episodes'][0]['events'] == [[4.0, 'coach', release, pytest.approx(steps / 50)]]
    ds = BagDataset(out, rig='aloha_sim', chunk_size=1, time_base='header')
    rows = [ds.sample(i, images=False) for i in ds.episode_range(0)]
    times = np.array([r['time_ns'] * 1e-9 for r in rows])
    labels = [r['subtask'] for r in rows]
    coached = [t for t, label in zip(times, labels, strict=True) if label == release]
    assert coached and 3.95 <= min(coached) <= 4.2  # asked at 4.0, done from the next tick the sim saw it
    assert max(coached) - min(coached) == pytest.approx(steps / 50, abs=0.06)  # the plan's own release move
    after = [label for t, label in zip(times, labels, strict=True) if t > max(coached) + 0.05]
    assert after and after[0] == 'move the right gripper above the cube'  # then the task from its start
    gripper = np.array([r['actions'][0][13] for r in rows])  # the right gripper (m): opens during the move
    inside = (times >= min(coached)) & (times <= max(coached))
    assert gripper[inside][-1] - gripper[inside][0] > 0.02


def test_bag_holds_labelled_episodes_with_fresh_frames_and_expert_labels(collected):
    from bimanual_vla.bags.read import BagReader
    from bimanual_vla.learning.dataset import BagDataset

    out, _ = collected
    with BagReader(out) as bag:
        assert [e.label for e in bag.episodes] == ['transfer_cube seed 7', 'transfer_cube seed 8']
        assert all(e.end_ns is not None for e in bag.episodes)
    ds = BagDataset(out, rig='aloha_sim', chunk_size=10, time_base='header')
    assert len(ds.episodes) == 2
    assert not any(v for k, v in ds.skipped.items() if k.startswith('stale'))  # every frame rendered in time
    for e, ep in enumerate(ds.episodes):
        r = ds.episode_range(e)
        first, last = ds.sample(r[0], images=False), ds.sample(r[-1], images=False)
        # sim-time stamps restart at the reset: the episode starts within the first ticks
        assert first['time_ns'] * 1e-9 <= 0.1
        assert last['time_ns'] * 1e-9 == pytest.approx(EPISODE_S, abs=0.1)
        assert len(r) == pytest.approx(EPISODE_S * 50, abs=6)  # one sample per 50 Hz tick
        # lockstep rendering: 15 fps in sim time, no frame dropped
        cam_t = ep.cam_sync['top'] * 1e-9
        assert np.allclose(np.diff(cam_t), 1 / 15, atol=0.021)
        assert len(cam_t) == pytest.approx(EPISODE_S * 15, abs=2)
        assert first['task'] == 'transfer the cube from the right arm to the left arm'
        labels = {ds.sample(i, images=False)['subtask'] for i in r}
        assert 'move the right gripper above the cube' in labels
        # the recorded commands are the expert's: it swings the right arm over the cube in its first second
        start, end = first['actions'][0], last['actions'][0]
        assert np.max(np.abs(end[7:13] - start[7:13])) > 0.05


def test_output_that_exists_is_refused(tmp_path):
    from bimanual_vla.learning.collect import CollectSettings, collect

    (tmp_path / 'bag').mkdir()
    with pytest.raises(FileExistsError):
        collect(tmp_path / 'bag', CollectSettings(episodes=1, progress=False))


def test_handover_options_out_of_range_or_for_the_wrong_task_are_refused_before_anything_starts(tmp_path, capsys):
    from bimanual_vla.cli.main import main
    from bimanual_vla.learning.collect import CollectSettings
    from bimanual_vla.sim.expert import ExpertOptions

    assert (
        main(['collect', str(tmp_path / 'a'), '--episodes', '1', '--no-progress', '--expert-meet-jitter', '0.05']) == 2
    )
    assert capsys.readouterr().err == 'error: collect: meet_jitter must be in [0, 0.03] m, got 0.05\n'
    assert main(['collect', str(tmp_path / 'b'), '--task', 'insertion', '--expert-aim-left', '--no-progress']) == 2
    assert capsys.readouterr().err == (
        "error: collect: aim_left and meet_jitter apply to transfer_cube only, not 'insertion'\n"
    )
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()
    with pytest.raises(ValueError, match="apply to transfer_cube only, not 'insertion'"):
        CollectSettings(task='insertion', expert=ExpertOptions(meet_jitter=0.01))
    with pytest.raises(ValueError, match="unknown task 'stacking'"):
        CollectSettings(task='stacking')
    with pytest.raises(ValueError, match='episodes must be >= 1'):
        CollectSettings(episodes=0)


def test_the_collect_flags_become_settings_and_sim_parameters():
    """`collect`'s flags reach CollectSettings and the sim rig's parameters unchanged (0: unlimited speed)."""
    import argparse

    from bimanual_vla.cli.commands.collect import add_parser, settings

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ['collect', 'OUT', '--task', 'transfer_cube', '--episodes', '3', '--seed', '9', '--expert-noise', '0.01']
        + ['--expert-time-warp', '0.2', '--expert-meet-jitter', '0.02', '--expert-aim-left', '--no-progress']
    )
    got = settings(args)
    assert (got.episodes, got.seed, got.progress, got.real_time_factor) == (3, 9, False, 0.0)
    assert got.expert.max_joint_speed_rad_s is None and got.expert.aim_left and got.expert.time_warp == 0.2
    assert got.sim_parameters() == {
        'task': 'transfer_cube',
        'seed': 9,
        'real_time_factor': 0.0,
        'expert': True,
        'expert_noise_rad': 0.01,
        'expert_max_joint_speed': 0.0,
        'expert_approach': 'joint',
        'expert_time_warp': 0.2,
        'expert_meet_jitter': 0.02,
        'expert_aim_left': True,
    }


def test_collect_json_says_its_format_version_and_a_file_without_one_is_the_oldest():
    from bimanual_vla.learning.collect import FORMAT_VERSION, CollectResult, summary_format_version
    from bimanual_vla.sim.expert import ExpertOptions

    written = CollectResult.start(Path('bag'), 'transfer_cube', ExpertOptions(max_joint_speed_rad_s=2.0)).to_json()
    assert written['format_version'] == FORMAT_VERSION == 3
    assert summary_format_version(json.loads(json.dumps(written))) == 3
    assert written['perturb'] == [] and written['coach'] == [] and written['jitter_s'] == 0.0
    assert written['episode_s'] is None
    assert written['expert_max_joint_speed_rad_s'] == 2.0 and written['expert_aim_left'] is False
    assert summary_format_version({'command_stamps': 'issued', 'episodes': []}) == 1


def test_episodes_cut_short_are_partial_demonstrations_not_failures():
    """`collect --episode-s 3.5` (the reach phase) never succeeds; train keeps such episodes without --keep-failed,
    and still leaves out failed full-length ones and any recorded beside another node."""
    from bimanual_vla.learning.collect import CollectResult
    from bimanual_vla.learning.train_data import failed_labels
    from bimanual_vla.sim.expert import ExpertOptions

    episodes = [
        {'label': 'a', 'success': False, 'foreign_publishers': []},
        {'label': 'b', 'success': True, 'foreign_publishers': []},
        {'label': 'c', 'success': False, 'foreign_publishers': ['/clock']},
    ]
    full = {**CollectResult.start(Path('bag'), 'handover_cube', ExpertOptions()).to_json(), 'episodes': episodes}
    cut = {**CollectResult.start(Path('bag'), 'handover_cube', ExpertOptions(), episode_s=3.5).to_json(),
           'episodes': episodes}  # fmt: skip
    assert cut['episode_s'] == 3.5
    assert failed_labels(full) == {'a', 'c'}
    assert failed_labels(cut) == {'c'}


def test_a_second_sim_on_the_domain_marks_the_episode_and_train_leaves_it_out(tmp_path, ros_context):
    """Another node publishing sim time on the collection's ROS domain (a second sim, an eval, a test)."""
    import rclpy
    from rosgraph_msgs.msg import Clock

    from bimanual_vla import topics
    from bimanual_vla.learning.collect import CollectSettings, collect
    from bimanual_vla.learning.train_data import failed_episode_labels

    intruder = rclpy.create_node('intruding_sim', context=ros_context)
    intruder.create_publisher(Clock, topics.CLOCK, 10)  # it need not even publish: it is there
    try:
        result = collect(tmp_path / 'bag', CollectSettings(episodes=1, seed=7, episode_s=0.5, progress=False))
    finally:
        intruder.destroy_node()
    assert result.episodes[0].foreign_publishers == ['/clock']
    summary = json.loads((tmp_path / 'bag' / 'collect.json').read_text())
    assert summary['episodes'][0]['foreign_publishers'] == ['/clock']
    summary['episodes'][0]['success'] = True  # even a successful episode: its bag holds the other node's data
    (tmp_path / 'bag' / 'collect.json').write_text(json.dumps(summary))
    assert failed_episode_labels([tmp_path / 'bag']) == {'transfer_cube seed 7'}
    summary['episodes'][0]['foreign_publishers'] = []
    (tmp_path / 'bag' / 'collect.json').write_text(json.dumps(summary))
    assert failed_episode_labels([tmp_path / 'bag']) == set()


def test_the_bag_says_its_stamps_are_sim_time_and_is_read_on_them_by_default(collected):
    """collect marks its bag (metadata custom_data) so every consumer reads it on sim time unasked."""
    from bimanual_vla.bags.read import BagReader
    from bimanual_vla.bags.time_base import TIME_BASE_KEY
    from bimanual_vla.learning.dataset import BagDataset

    out, result = collected
    with BagReader(out) as bag:
        assert bag.custom_data[TIME_BASE_KEY] == 'header'
    ds = BagDataset(out, rig='aloha_sim', chunk_size=1)  # no time base named
    assert [(tb.base, tb.source) for tb in ds.time_bases] == [('header', 'metadata')]
    for e, episode in enumerate(result.episodes):
        sampled_s = len(ds.episode_range(e)) / 50
        assert abs(sampled_s - episode.sim_duration_s) <= 0.1, (e, sampled_s, episode.sim_duration_s)
