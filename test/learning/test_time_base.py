"""Every bag consumer reads a bag on the clock the bag says (or implies) unless the user names one.

A simulated recording run 4x faster than real time (as `collect` records it: stamps in sim time,
receive times squeezed) must give frames at the sim's timing: frame count = duration x fps, and
each frame's state is the joint state message stamped at the frame's time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.datasets import HEADER_OFFSET, MS, SEC, T0, BagSpec, state_value, write_bag

from bimanual_vla.bags.read import BagReader
from bimanual_vla.bags.time_base import TIME_BASE_KEY, mark_time_base, resolve_time_base
from bimanual_vla.learning.dataset import BagDataset

SPEED = 4.0
EPISODES = [('a', 0.0, 2.0), ('b', 2.5, 4.5)]  # sim seconds: 2 s each


def _sim_spec(**kw) -> BagSpec:
    return BagSpec(header_offset=HEADER_OFFSET, speed=SPEED, camera_gap=None, episodes=EPISODES, **kw)


@pytest.fixture(scope='module')
def sim_bag(tmp_path_factory) -> Path:
    return write_bag(tmp_path_factory.mktemp('tb') / 'sim', _sim_spec(time_base='header'))


@pytest.fixture(scope='module')
def old_sim_bag(tmp_path_factory) -> Path:
    """The same recording without the metadata key (recorded before collect wrote it)."""
    return write_bag(tmp_path_factory.mktemp('tb') / 'old_sim', _sim_spec())


def _state_stamped_at(stamp: int) -> np.ndarray:
    """The joint positions of the newest message stamped at or before `stamp` (sim clock)."""
    t = stamp - HEADER_OFFSET  # the nominal timeline the fixture stamps from
    return np.array([state_value(a, j, (t - T0 - (1 + a) * MS) // (20 * MS)) for a in range(2) for j in range(7)])


def test_time_base_comes_from_the_metadata_else_from_the_stamps(sim_bag, old_sim_bag, tmp_path) -> None:
    with BagReader(sim_bag) as bag:
        tb = resolve_time_base(bag)
        assert (tb.base, tb.source) == ('header', 'metadata')
        assert resolve_time_base(bag, 'receive').base == 'receive'  # the user overrides the bag
    with BagReader(old_sim_bag) as bag:
        tb = resolve_time_base(bag)
        assert (tb.base, tb.source) == ('header', 'inferred') and 'clock of their own' in tb.line(old_sim_bag)
    live = write_bag(tmp_path / 'live', BagSpec(end_s=1.0, camera_gap=None))
    with BagReader(live) as bag:
        tb = resolve_time_base(bag)
        assert (tb.base, tb.source) == ('receive', 'inferred')
        assert '\n' not in tb.line(live) and str(live) in tb.line(live)


def test_mark_time_base_writes_metadata_every_reader_sees(tmp_path) -> None:
    bag = write_bag(tmp_path / 'live', BagSpec(end_s=0.5, camera_gap=None))
    mark_time_base(bag, 'header')
    with BagReader(bag) as reader:
        assert reader.custom_data[TIME_BASE_KEY] == 'header' and not reader.problems
        assert resolve_time_base(reader).source == 'metadata'
        assert reader.message_count > 0  # still a bag rosbags opens
    with pytest.raises(ValueError, match='time base'):
        mark_time_base(bag, 'sim')


@pytest.mark.parametrize('which', ['sim_bag', 'old_sim_bag'])
def test_dataset_samples_a_sim_recording_on_its_own_clock(which, request) -> None:
    bag = request.getfixturevalue(which)
    ds = BagDataset(bag, rig='aloha_sim', chunk_size=1)
    assert ds.time_bases[0].header
    for e, (_, start, stop) in enumerate(EPISODES):
        rng = ds.episode_range(e)
        assert abs(len(rng) - (stop - start) * 50) <= 2, (e, len(rng))  # duration x rate, not squeezed 4x
        for i in (rng[0], rng[len(rng) // 2], rng[-1]):
            s = ds.sample(i, images=False)
            np.testing.assert_allclose(s['state'], _state_stamped_at(s['time_ns']), atol=1e-6)
    squeezed = BagDataset(bag, rig='aloha_sim', chunk_size=1, time_base='receive')  # the user's override
    assert not squeezed.time_bases[0].header and len(squeezed) < len(ds) / 3


def test_export_has_duration_times_fps_frames_each_with_the_state_stamped_at_its_time(sim_bag, tmp_path) -> None:
    from bimanual_vla.cli.main import main

    out = tmp_path / 'ds'
    assert main(['export-lerobot', str(sim_bag), '--out', str(out), '--fps', '25', '--rig', 'aloha_sim']) == 0
    data = pq.read_table(out / 'data/chunk-000/file-000.parquet').to_pydict()
    episodes = pq.read_table(out / 'meta/episodes/chunk-000/file-000.parquet').to_pydict()
    assert len(episodes['length']) == len(EPISODES)
    for e, (_, start, stop) in enumerate(EPISODES):
        length = episodes['length'][e]
        assert abs(length - (stop - start) * 25) <= 1, (e, length)  # 2 s at 25 fps: 50 frames, not ~12
        lo = episodes['dataset_from_index'][e]
        # the episode's first frame: the first time every input of the episode exists (camera at +4 ms)
        first_stamp = T0 + int(start * SEC) + 4 * MS + HEADER_OFFSET
        for k in (0, 1, length // 2, length - 1):
            assert data['timestamp'][lo + k] == pytest.approx(k / 25, abs=1e-6)
            stamp = first_stamp + round(k * SEC / 25)
            np.testing.assert_allclose(data['observation.state'][lo + k], _state_stamped_at(stamp), atol=1e-6)
    info = json.loads((out / 'meta/info.json').read_text())
    assert info['total_frames'] == sum(episodes['length'])


def test_every_bag_command_defaults_to_the_bags_time_base() -> None:
    from bimanual_vla.cli.main import build_parser

    parser = build_parser()
    for argv in (['export-lerobot', 'b', '--out', 'o'], ['eval', 'b', '--checkpoint', 'c', '--out', 'o'],
                 ['train', '--data', 'b', '--out', 'o'], ['replay', 'b']):  # fmt: skip
        assert parser.parse_args(argv).time_base == 'auto', argv[0]


@pytest.mark.parametrize(
    ('stamp', 'why'),
    [(lambda i, recv: 0, 'unset stamps'), (lambda i, recv: i * SEC, 'a counter in the seconds field')],
)
def test_stamps_that_are_no_timeline_are_not_taken_for_sim_time(tmp_path, stamp, why) -> None:
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from sensor_msgs.msg import JointState

    from bimanual_vla.bags.message_types import type_definition

    bag = tmp_path / 'odd_stamps'
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        msgdef, digest = type_definition('sensor_msgs/msg/JointState')
        conn = writer.add_connection('/joint_states', 'sensor_msgs/msg/JointState', msgdef=msgdef, rihs01=digest)
        for i in range(50):
            recv = T0 + i * 20 * MS
            msg = JointState(name=['j'], position=[0.0])
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp(i, recv), SEC)
            writer.write(conn, recv, serialize_message(msg))
    with BagReader(bag) as reader:
        assert resolve_time_base(reader).base == 'receive', why


def test_eval_of_a_policy_that_acts_on_sim_time_scores_zero_by_default(sim_bag) -> None:
    """A policy that issues exactly the recorded commands of the sim timeline scores 0 open loop by default;
    read on the squeezed receive times, the same policy looks wrong (the tenfold MAE the time base caused)."""
    from helpers.datasets import command_value

    from bimanual_vla.learning.evaluate import Prediction, evaluate

    H = 10

    def sim_time_policy(sample) -> Prediction:  # the expert's commands at the sample's sim time
        t = sample['time_ns'] - HEADER_OFFSET
        ticks = [(t + k * 20 * MS - T0 - 3 * MS) // (20 * MS) for k in range(H)]
        return Prediction(np.array([[command_value(a, j, i) for a in range(2) for j in range(7)] for i in ticks]))

    report, _ = evaluate(BagDataset(sim_bag, rig='aloha_sim', chunk_size=H), sim_time_policy, stride=5)
    assert report['samples_evaluated'] > 30 and report['mae'] < 1e-4  # held last command at the end
    squeezed, _ = evaluate(
        BagDataset(sim_bag, rig='aloha_sim', chunk_size=H, time_base='receive'),
        lambda s: sim_time_policy({**s, 'time_ns': s['time_ns'] + HEADER_OFFSET}),  # a receive-clock sample
        stride=5,
    )
    assert squeezed['mae'] > 100 * report['mae'], (squeezed['mae'], report['mae'])
