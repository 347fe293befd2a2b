"""The training sample cache is per bag: adding a bag decodes only that bag, and the join is exact."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

CACHE_ARGS = dict(rig='aloha_sim', image_size=(32, 32), chunk_size=10, keep_failed=True, progress=False)


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    """Two bags of one short episode each, recorded through the topics by `collect`."""
    from bimanual_vla.learning.collect import CollectSettings, collect

    root = tmp_path_factory.mktemp('bags')
    collect(root / 'a', CollectSettings(episodes=1, seed=3, episode_s=0.8, progress=False))
    collect(root / 'b', CollectSettings(episodes=1, seed=5, episode_s=0.8, progress=False))
    return root / 'a', root / 'b'


def test_adding_a_bag_decodes_only_that_bag_and_the_join_equals_the_parts(bags, tmp_path, caplog):
    from bimanual_vla.learning.train_data import StackedFrames, build_cache

    a, b = bags
    only_a = build_cache([a], tmp_path, **CACHE_ARGS)
    only_b = build_cache([b], tmp_path / 'elsewhere', **CACHE_ARGS)
    stamp = (only_a.directory / 'arrays.npz').stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger='bimanual_vla.learning.train_data'):
        both = build_cache([a, b], tmp_path, **CACHE_ARGS)
    assert any('reusing sample cache' in r.getMessage() and str(a) in r.getMessage() for r in caplog.records)
    assert not any('reusing' in r.getMessage() and str(b) in r.getMessage() for r in caplog.records)
    assert (only_a.directory / 'arrays.npz').stat().st_mtime_ns == stamp  # a was not decoded again
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != 'elsewhere') == sorted(
        [only_a.directory.name, only_b.directory.name]  # one cache per bag, same key wherever it lives
    )

    n_a = len(only_a)
    assert len(both) == n_a + len(only_b) and both.info['samples'] == len(both)
    assert both.info['episodes'] == 2 and both.info['bags'] == [str(a), str(b)]
    np.testing.assert_array_equal(both.state, np.concatenate([only_a.state, only_b.state]))
    np.testing.assert_array_equal(both.actions[n_a:], only_b.actions)
    # episodes stay apart: the join's ids are distinct per bag and in bag order
    assert set(both.episode[:n_a]) == {0} and set(both.episode[n_a:]) == {1}
    # the same task and subtask strings, through the merged tables
    assert [both.subtasks[i] for i in both.subtask_id[n_a:]] == [only_b.subtasks[i] for i in only_b.subtask_id]
    assert [both.tasks[i] for i in both.task_id] == [only_a.tasks[0]] * len(both)
    # images of a sample from the second bag are that bag's own frames
    assert isinstance(both.frames['top'], StackedFrames)
    assert both.frames['top'].shape == (len(only_a.frames['top']) + len(only_b.frames['top']), 32, 32, 3)
    for i in (n_a, n_a + 7, len(both) - 1):
        np.testing.assert_array_equal(both.images(np.array([i])), only_b.images(np.array([i - n_a])))
    np.testing.assert_array_equal(both.images(np.array([3])), only_a.images(np.array([3])))
    with pytest.raises(IndexError, match='out of range'):
        both.frames['top'][both.frames['top'].shape[0]]


def test_bags_that_disagree_on_joints_or_rate_are_refused_by_name(bags, tmp_path):
    from bimanual_vla.learning.train_data import build_cache, join_caches

    a, b = bags
    first = build_cache([a], tmp_path, **CACHE_ARGS)
    second = build_cache([b], tmp_path, **CACHE_ARGS)
    faster = dataclasses.replace(second, info={**second.info, 'rate_hz': 100.0})
    with pytest.raises(ValueError, match=r'differ in rate_hz: 50(\.0)? against 100\.0; train on them apart') as err:
        join_caches([first, faster])
    assert str(a) in str(err.value) and str(b) in str(err.value)
    with pytest.raises(ValueError, match='no bags to decode'):
        build_cache([], tmp_path, **CACHE_ARGS)


def test_skipping_or_dropping_failed_episodes_decodes_nothing_again(bags, tmp_path, caplog):
    import json
    import shutil

    from bimanual_vla.learning.train_data import build_cache

    a, b = bags
    b_copy = tmp_path / 'b_copy'
    shutil.copytree(b, b_copy)
    everything = build_cache([a, b_copy], tmp_path / 'cache', **CACHE_ARGS)
    decoded = sorted(p.name for p in (tmp_path / 'cache').iterdir())
    assert len(decoded) == 2 and everything.info['episodes'] == 2
    # one episode skipped by label: the other bag's samples, nothing decoded again
    with caplog.at_level(logging.INFO, logger='bimanual_vla.learning.train_data'):
        only_b = build_cache([a, b_copy], tmp_path / 'cache', skip_episodes=['transfer_cube seed 3'], **CACHE_ARGS)
    assert sorted(p.name for p in (tmp_path / 'cache').iterdir()) == decoded
    assert sum('reusing sample cache' in r.getMessage() for r in caplog.records) == 2
    n_a = int((everything.episode == everything.episode[0]).sum())
    assert len(only_b) == len(everything) - n_a and only_b.info['episodes'] == 1
    assert only_b.info['episodes_left_out'] == ['transfer_cube seed 3']
    np.testing.assert_array_equal(only_b.state, everything.state[n_a:])
    np.testing.assert_array_equal(only_b.images(np.array([5])), everything.images(np.array([n_a + 5])))
    # collect.json decides which episodes failed; it is read on every run, so editing it changes what is
    # left out, without decoding anything again. Cut at 0.8 s (episode_s), neither succeeded, and neither
    # failed: partial demonstrations are kept
    args = {**CACHE_ARGS, 'keep_failed': False}
    assert not json.loads((a / 'collect.json').read_text())['episodes'][0]['success']
    assert json.loads((a / 'collect.json').read_text())['episode_s'] == pytest.approx(0.8)
    assert len(build_cache([a, b_copy], tmp_path / 'cache', **args)) == len(everything)
    for bag in (a, b_copy):  # as if they had run their whole length: then not succeeding is failing
        full = json.loads((bag / 'collect.json').read_text())
        full['episode_s'] = None
        (bag / 'collect.json').write_text(json.dumps(full))
    summary = json.loads((b_copy / 'collect.json').read_text())
    summary['episodes'][0]['success'] = True
    (b_copy / 'collect.json').write_text(json.dumps(summary))
    without_failed = build_cache([a, b_copy], tmp_path / 'cache', **args)
    assert len(without_failed) == len(everything) - n_a and without_failed.info['episodes'] == 1
    assert without_failed.info['episodes_left_out'] == ['transfer_cube seed 3']
    summary['episodes'][0]['success'] = False
    (b_copy / 'collect.json').write_text(json.dumps(summary))
    with pytest.raises(ValueError, match='no episodes left to train on'):
        build_cache([a, b_copy], tmp_path / 'cache', **args)
    assert len(build_cache([a, b_copy], tmp_path / 'cache', **CACHE_ARGS)) == len(everything)
    assert sorted(p.name for p in (tmp_path / 'cache').iterdir()) == decoded


def test_the_expert_approach_of_the_data_comes_from_collect_json(tmp_path):
    import json

    from bimanual_vla.learning.train_data import expert_approach

    def bag(name: str, summary: dict | None) -> str:
        (tmp_path / name).mkdir()
        if summary is not None:
            (tmp_path / name / 'collect.json').write_text(json.dumps(summary))
        return str(tmp_path / name)

    joint = bag('joint', {'expert_approach': 'joint', 'episodes': []})
    old = bag('old', {'episodes': []})  # before the key existed: the straight line
    rig = bag('rig', None)  # recorded on a rig: no scripted expert
    assert expert_approach([joint]) == 'joint' and expert_approach([joint, joint]) == 'joint'
    assert expert_approach([old]) == 'cartesian'
    assert expert_approach([joint, old]) is None  # mixed: no single motion to replay
    assert expert_approach([joint, rig]) is None


def test_episodes_a_collect_bag_should_not_hold_are_suspect():
    """A second collection on the same domain leaves markers of its own: unlisted or repeated labels."""
    from bimanual_vla.learning.train_data import suspect_episode_labels

    summary = {'episodes': [{'label': 'cube seed 36'}, {'label': 'cube seed 37'}, {'label': 'cube seed 7'}]}
    assert suspect_episode_labels(['cube seed 36', 'cube seed 37', 'cube seed 7'], summary) == {}
    suspect = suspect_episode_labels(['cube seed 36', 'cube seed 7', 'cube seed 37', 'cube seed 7', 'x'], summary)
    assert sorted(suspect) == ['cube seed 7', 'x']
    assert suspect['cube seed 7'].startswith('recorded 2 times') and suspect['x'].startswith('not in collect.json')


def test_an_episode_collect_json_does_not_list_is_left_out(bags, tmp_path):
    import json
    import shutil

    from bimanual_vla.learning.train_data import build_cache

    _, b = bags
    copy = tmp_path / 'b'
    shutil.copytree(b, copy)
    assert len(build_cache([copy], tmp_path / 'cache', **CACHE_ARGS)) > 0
    summary = json.loads((copy / 'collect.json').read_text())
    summary['episodes'][0]['label'] = 'transfer_cube seed 6'  # the bag's episode is 'seed 5'
    (copy / 'collect.json').write_text(json.dumps(summary))
    with pytest.raises(ValueError, match='no episodes left to train on'):
        build_cache([copy], tmp_path / 'cache', **CACHE_ARGS)  # even with keep_failed
