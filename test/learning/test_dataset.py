"""BagDataset: synchronised samples from synthetic bags whose every value is known in closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.datasets import (
    CAMERAS,
    HEADER_OFFSET,
    JOINT_NAMES,
    MS,
    SEC,
    T0,
    TASK,
    BagSpec,
    build_entries,
    command_value,
    frame_value,
    state_value,
    write_bag,
)

from bimanual_vla.bags.read import MissingTopicError
from bimanual_vla.learning.dataset import BagDataset, DatasetError

H = 10


@pytest.fixture(scope='module')
def bag(tmp_path_factory) -> Path:
    return write_bag(tmp_path_factory.mktemp('ds') / 'synthetic')


def _tick(t: int, offset_ms: int, period_ms: int = 20) -> int:
    return (t - T0 - offset_ms * MS) // (period_ms * MS)


def _expected_state(t: int) -> np.ndarray:
    return np.array([state_value(a, j, _tick(t, 1 + a)) for a in range(2) for j in range(7)])


def test_samples_hold_latest_frames_state_and_commanded_chunk(bag) -> None:
    ds = BagDataset(bag, rig='aloha_sim', chunk_size=H)
    assert ds.joint_names == JOINT_NAMES and ds.cameras == list(CAMERAS)
    assert len(ds) > 150
    for index in (0, 1, 37, len(ds) // 2, len(ds) - 1):
        s = ds.sample(index)
        t = s['time_ns']
        np.testing.assert_allclose(s['state'], _expected_state(t), atol=1e-6)
        for k in range(H):
            if s['actions_is_pad'][k]:
                continue
            last_tick = 99 if s['episode'] == 0 else 224  # a command is held ~1.5 periods after the last one
            tick = min(_tick(t + k * 20 * MS, 3), last_tick)
            expected = [command_value(a, j, tick) for a in range(2) for j in range(7)]
            np.testing.assert_allclose(s['actions'][k], expected, atol=1e-6, err_msg=f'sample {index} step {k}')
        for c, cam in enumerate(CAMERAS):
            n = _tick(t, 4, 100)
            assert s['images'][cam].shape == (6, 8, 3)
            assert np.all(s['images'][cam] == frame_value(c, n)), (index, cam)
        assert s['task'] == TASK
    # torch view: channel-first uint8, float32 vectors
    item = ds[3]
    assert tuple(item['images']['top'].shape) == (3, 6, 8) and str(item['images']['top'].dtype) == 'torch.uint8'
    assert tuple(item['actions'].shape) == (H, 14) and str(item['state'].dtype) == 'torch.float32'


def test_episodes_never_cross_and_chunks_pad_at_the_end(bag) -> None:
    ds = BagDataset(bag, rig='aloha_sim', chunk_size=H)
    assert [e.label for e in ds.episodes] == ['a', 'b']
    for e, (lo, hi) in enumerate([(0.0, 2.0), (2.5, 4.5)]):
        rng = ds.episode_range(e)
        times = [ds.sample(i, images=False)['time_ns'] for i in rng]
        assert all(T0 + lo * SEC <= t < T0 + hi * SEC for t in times)
        assert times == sorted(times)
        last = ds.sample(rng[-1], images=False)
        pad = last['actions_is_pad']
        assert pad.any() and not pad[0] and np.all(pad[np.argmax(pad) :])  # padding is a suffix
        first_pad = int(np.argmax(pad))
        assert np.all(last['actions'][first_pad:] == last['actions'][first_pad - 1])  # last real action repeated
        last_tick = int(hi * 50) - 1  # the episode's last command tick: never an action from the next episode
        assert np.max(last['actions'][:, 0]) <= command_value(0, 0, last_tick) + 1e-6
        assert ds.sample(rng[0], images=False)['timestamp'] == 0.0
    assert ds.sample(0, images=False)['subtask'] == 'reach the cube'
    assert ds.sample(ds.episode_range(0)[-1], images=False)['subtask'] == 'grasp the cube'
    assert ds.sample(ds.episode_range(1)[-1], images=False)['subtask'] == 'lift it'


def test_stale_camera_samples_are_skipped_and_counted(bag) -> None:
    ds = BagDataset(bag, rig='aloha_sim', chunk_size=H)
    # right_wrist is silent in [3.0, 3.7) s: its last frame (2.904 s) is older than 0.5 s for t in (3.404, 3.704).
    assert ds.skipped['stale_camera_right_wrist'] == 14
    times = np.array([ds.sample(i, images=False)['time_ns'] for i in range(len(ds))])
    assert not np.any((times > T0 + 3404 * MS) & (times < T0 + 3704 * MS))
    strict = BagDataset(bag, rig='aloha_sim', chunk_size=H, camera_max_age_s=0.15)
    assert strict.skipped['stale_camera_right_wrist'] > 14 and len(strict) < len(ds)


def test_header_time_base_gives_the_same_samples_on_the_other_clock(tmp_path) -> None:
    bag = write_bag(tmp_path / 'other_clock', BagSpec(header_offset=HEADER_OFFSET))
    recv = BagDataset(bag, rig='aloha_sim', chunk_size=H, time_base='receive')
    head = BagDataset(bag, rig='aloha_sim', chunk_size=H, time_base='header')
    assert len(head) == len(recv)
    for i in (0, 50, len(recv) - 1):
        a, b = recv.sample(i), head.sample(i)
        assert b['time_ns'] == a['time_ns'] + HEADER_OFFSET
        np.testing.assert_array_equal(a['state'], b['state'])
        np.testing.assert_array_equal(a['actions'], b['actions'])
        assert (a['task'], a['subtask']) == (b['task'], b['subtask'])
        assert all(np.array_equal(a['images'][c], b['images'][c]) for c in CAMERAS)


def test_joint_state_actions_and_interpolated_state(bag) -> None:
    ds = BagDataset(bag, rig='aloha_sim', chunk_size=H, action_source='joint_states', state_mode='interpolate')
    for index in (5, 60):
        s = ds.sample(index, images=False)
        t = s['time_ns']

        def linear(arm: int, joint: int, at: int) -> float:  # the readings are linear in time
            return 0.1 * joint + 0.01 * arm + 0.002 * (at - T0 - (1 + arm) * MS) / (20 * MS)

        np.testing.assert_allclose(s['state'], [linear(a, j, t) for a in range(2) for j in range(7)], atol=1e-9)
        for k in range(H):
            at = t + k * 20 * MS
            np.testing.assert_allclose(
                s['actions'][k], [linear(a, j, at) for a in range(2) for j in range(7)], atol=1e-9
            )


def test_bag_without_markers_is_one_episode_and_bags_concatenate(tmp_path, bag) -> None:
    plain = write_bag(tmp_path / 'plain', BagSpec(markers=False, camera_gap=None, end_s=1.0))
    one = BagDataset(plain, rig='aloha_sim', chunk_size=H)
    assert [e.label for e in one.episodes] == ['plain'] and len(one.episodes) == 1
    both = BagDataset([bag, plain], rig='aloha_sim', chunk_size=H)
    two = BagDataset(bag, rig='aloha_sim', chunk_size=H)
    assert len(both) == len(two) + len(one)
    last = both.sample(len(both) - 1, images=False)
    assert last['episode'] == 2 and last['bag'] == str(plain)


def test_without_rig_cameras_joints_and_arms_come_from_the_bag(bag) -> None:
    ds = BagDataset(bag, chunk_size=H)
    assert sorted(ds.cameras) == sorted(CAMERAS) and ds.joint_names == JOINT_NAMES
    ref = BagDataset(bag, rig='aloha_sim', chunk_size=H)
    np.testing.assert_array_equal(ds.sample(10, images=False)['actions'], ref.sample(10, images=False)['actions'])


def _write_filtered(path: Path, keep) -> Path:
    from rosbags.rosbag2 import StoragePlugin, Writer

    from bimanual_vla.bags.message_types import type_definition

    conns = {}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, type_name, ts, data in build_entries(BagSpec()):
            if not keep(topic):
                continue
            if topic not in conns:
                msgdef, digest = type_definition(type_name)
                conns[topic] = writer.add_connection(topic, type_name, msgdef=msgdef, rihs01=digest)
            writer.write(conns[topic], ts, data)
    return path


def test_missing_camera_joint_states_or_commands_are_named(tmp_path) -> None:
    nocam = write_bag(tmp_path / 'nocam', BagSpec(cameras=('top', 'left_wrist')))
    with pytest.raises(MissingTopicError, match='/cameras/right_wrist/image_raw'):
        BagDataset(nocam, rig='aloha_sim')
    nocmd = write_bag(tmp_path / 'nocmd', BagSpec(commands=False))
    with pytest.raises(MissingTopicError, match=r'/arms/left/joint_command.*action_source'):
        BagDataset(nocmd, rig='aloha_sim')
    assert len(BagDataset(nocmd, rig='aloha_sim', action_source='joint_states')) > 100  # the way out works
    nojs = _write_filtered(tmp_path / 'nojs', lambda t: t != '/joint_states')
    with pytest.raises(MissingTopicError, match='no joint states'):
        BagDataset(nojs, rig='aloha_sim')
    with pytest.raises(ValueError, match='action_source'):
        BagDataset(nocmd, action_source='teleop')
    with pytest.raises(DatasetError, match='no usable samples'):
        BagDataset(nocmd, rig='aloha_sim', action_source='joint_states', joint_max_age_s=0.001)


def test_dataloader_workers_read_the_same_samples(bag) -> None:
    import torch
    from torch.utils.data import DataLoader

    ds = BagDataset(bag, rig='aloha_sim', chunk_size=H)
    assert isinstance(ds, torch.utils.data.Dataset)
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batch = next(iter(loader))
    assert tuple(batch['images']['top'].shape) == (8, 3, 6, 8)
    assert tuple(batch['actions'].shape) == (8, H, 14) and len(batch['task']) == 8
    for i in range(8):
        np.testing.assert_array_equal(batch['actions'][i].numpy(), ds.sample(i, images=False)['actions'])


def test_sequential_episode_reading_equals_random_access(bag) -> None:
    ds = BagDataset(bag, rig='aloha_sim', chunk_size=H)
    rng = ds.episode_range(1)
    seq = list(ds.iter_episode(1))
    assert len(seq) == len(rng)
    for i, s in zip(rng, seq, strict=True):
        if (i - rng[0]) % 7:
            continue
        ref = ds.sample(i)
        assert s['time_ns'] == ref['time_ns']
        assert all(np.array_equal(s['images'][c], ref['images'][c]) for c in CAMERAS)
