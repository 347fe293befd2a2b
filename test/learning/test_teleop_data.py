"""Teleoperated recordings as training data: the action chosen explicitly (leader or command), re-recorded
takes left out, samples inside human takeovers flagged and weighted; train and export-lerobot on such a bag."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.datasets import MS, SEC, T0, BagSpec, command_value, leader_value, write_bag

from bimanual_vla.bags.episodes import discard_payload, intervention_payload

pytestmark = pytest.mark.ros

# Three takes: episode_001 was re-recorded (its discard follows its end, before the retake starts).
EPISODES = [('episode_000', 0.0, 1.5), ('episode_001', 1.6, 3.0), ('episode_001', 3.1, 4.5)]
STRINGS = (
    ('/record/discard', 3.05, discard_payload('episode_001')),
    ('/teleop/intervention', 0.0, intervention_payload([])),
    ('/teleop/intervention', 0.5, intervention_payload(['left'], 'start', 'left')),
    ('/teleop/intervention', 1.0, intervention_payload([], 'end', 'left')),
)


@pytest.fixture(scope='module')
def teleop_bag(tmp_path_factory):
    spec = BagSpec(episodes=EPISODES, camera_gap=None, leader=True, strings=STRINGS)
    return write_bag(tmp_path_factory.mktemp('teleop') / 'bag', spec)


def _dataset(bag, source):
    from bimanual_vla.learning.dataset import BagDataset

    return BagDataset([bag], rig='aloha_sim', chunk_size=3, action_source=source)


def test_discarded_take_is_left_out_and_the_retake_kept(teleop_bag):
    ds = _dataset(teleop_bag, 'leader')
    assert [e.label for e in ds.episodes] == ['episode_000', 'episode_001']
    assert ds.skipped['discarded_episode'] == 1
    retake = ds.episodes[1]
    assert retake.samples[0] >= T0 + int(3.1 * SEC)  # nothing of the discarded take at 1.6-3.0 s
    assert retake.samples[-1] < T0 + int(4.5 * SEC)


@pytest.mark.parametrize(
    ('source', 'value', 'offset_ms'), [('leader', leader_value, 5), ('commands', command_value, 3)]
)
def test_actions_come_from_the_chosen_source(teleop_bag, source, value, offset_ms):
    ds = _dataset(teleop_bag, source)
    checked = 0
    for index in range(0, len(ds), 17):
        s = ds.sample(index, images=False)
        tick = (s['time_ns'] - T0 - offset_ms * MS) // (20 * MS)  # the message in force at t
        want = [value(a, j, tick) for a in range(2) for j in range(7)]
        np.testing.assert_allclose(s['actions'][0], want, atol=1e-6)
        checked += 1
    assert checked > 5


def test_samples_inside_a_takeover_are_flagged(teleop_bag):
    ds = _dataset(teleop_bag, 'leader')
    for index in range(len(ds)):
        s = ds.sample(index, images=False)
        inside = T0 + SEC // 2 <= s['time_ns'] < T0 + SEC
        assert s['intervention'] == inside, s['time_ns'] - T0


def test_the_action_must_be_chosen_for_a_bag_with_leaders(teleop_bag, tmp_path):
    from bimanual_vla.learning.dataset import choose_action_source

    with pytest.raises(ValueError, match=r'--action-source leader\|command') as err:
        choose_action_source([teleop_bag], None)
    assert str(teleop_bag) in str(err.value)
    assert choose_action_source([teleop_bag], 'command') == 'commands'
    assert choose_action_source([teleop_bag], 'leader') == 'leader'
    plain = write_bag(tmp_path / 'plain', BagSpec(end_s=1.0, camera_gap=None))
    assert choose_action_source([plain], None) == 'commands'


def test_interventions_weight_repeats_the_takeover_samples():
    from bimanual_vla.learning.train import TrainConfig, sample_table
    from bimanual_vla.learning.train_data import CachedSamples

    n = 200
    flags = np.zeros(n, dtype=bool)
    flags[50:90] = True
    samples = CachedSamples(
        directory=None, cameras=[], joint_names=['j'], frames={}, frame_index=np.zeros((n, 0), np.int64),
        state=np.zeros((n, 1), np.float32), actions=np.zeros((n, 2, 1), np.float32),
        actions_is_pad=np.zeros((n, 2), bool), task_id=np.zeros(n, np.int64), subtask_id=np.zeros(n, np.int64),
        episode=np.zeros(n, np.int64), tasks=[''], subtasks=[''], info={'rate_hz': 50.0}, intervention=flags,
    )  # fmt: skip

    def counts(weight):
        table = sample_table(samples, TrainConfig(data=[], out='x', interventions_weight=weight))
        return np.bincount(table, minlength=n)

    assert (counts(1.0) == 1).all()
    three = counts(3.0)
    assert (three[flags] == 3).all() and (three[~flags] == 1).all()
    assert (counts(0.0)[flags] == 0).all()
    half = counts(2.5)[flags]
    assert set(half.tolist()) == {2, 3} and 10 <= int((half == 3).sum()) <= 30


@pytest.mark.slow
def test_train_and_export_take_the_bag_as_it_is(teleop_bag, tmp_path, capsys):
    from bimanual_vla.cli.main import main
    from bimanual_vla.learning.train_data import build_cache

    tiny = ['hidden=32', 'layers=2', 'heads=2', 'head_dim=16', 'expert_hidden=16', 'vision_hidden=16',
            'vision_layers=1', 'image_size=32', 'patch_size=16']  # fmt: skip
    common = ['--data', str(teleop_bag), '--rig', 'aloha_sim', '--tiny-config', *tiny, '--chunk-size', '10',
              '--batch-size', '4', '--threads', '1', '--save-every', '0', '--no-progress',
              '--cache-dir', str(tmp_path / 'cache')]  # fmt: skip
    assert main(['train', '--out', str(tmp_path / 'no'), '--steps', '1', *common]) == 2
    assert '--action-source leader|command' in capsys.readouterr().err
    run = tmp_path / 'run'
    args = ['train', '--out', str(run), '--steps', '2', '--action-source', 'leader', '--interventions-weight', '4']
    assert main([*args, *common]) == 0
    state = json.loads((run / 'train_state' / 'state.json').read_text())
    assert state['config']['action_source'] == 'leader' and state['config']['interventions_weight'] == 4.0
    cache = build_cache([teleop_bag], tmp_path / 'cache', rig='aloha_sim', image_size=(32, 32), chunk_size=10,
                        progress=False, action_source='leader')  # fmt: skip
    assert cache.info['episode_labels'] == ['episode_000', 'episode_001']
    assert 0 < int(cache.intervention.sum()) < len(cache)
    first = int(np.flatnonzero(cache.episode == 0)[0])
    np.testing.assert_allclose(cache.actions[first, 0, 0], leader_value(0, 0, 0), atol=0.01)

    out = tmp_path / 'ds'
    assert main(['export-lerobot', str(teleop_bag), '--out', str(out), '--rig', 'aloha_sim', '--fps', '25']) == 2
    assert '--action-source' in capsys.readouterr().err
    argv = ['export-lerobot', str(teleop_bag), '--out', str(out), '--rig', 'aloha_sim', '--fps', '25']
    assert main([*argv, '--action-source', 'leader', '--vcodec', 'h264']) == 0
    info = json.loads((out / 'meta' / 'info.json').read_text())
    assert info['total_episodes'] == 2  # the discarded take is not exported


@pytest.mark.parametrize('source', ['commands', 'leader'])
def test_command_steps_near_a_takeover_switch_are_padded(teleop_bag, source):
    """The takeover starts at 0.5 s and ends at 1.0 s: a recorded command chunk that reaches within the guard
    of either switch is padded from there on (two publishers meet there); the leader's stream never switches."""
    from bimanual_vla.learning.dataset import BagDataset

    ds = BagDataset([teleop_bag], rig='aloha_sim', chunk_size=25, action_source=source, time_base='receive')
    guard, switches = int(0.1 * SEC), np.array([T0 + SEC // 2, T0 + SEC])  # the default guard: 0.1 s
    checked = padded = 0
    for index in ds.episode_range(0):
        s = ds.sample(index, images=False)
        if s['time_ns'] >= T0 + int(0.9 * SEC):  # later chunks also reach the episode's end
            break
        steps = s['time_ns'] + np.arange(25) * 20 * MS
        near = np.abs(steps[:, None] - switches[None, :]).min(axis=1) <= guard
        want = np.maximum.accumulate(near) if source == 'commands' else np.zeros(25, bool)
        np.testing.assert_array_equal(s['actions_is_pad'], want, err_msg=f'sample at {s["time_ns"] - T0} ns')
        checked += 1
        padded += int(want.any())
    assert checked > 20 and (padded > 10) == (source == 'commands')
