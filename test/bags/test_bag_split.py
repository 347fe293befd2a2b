"""Split bags: a long recording in several MCAP files that rosbags and BagReader read as one bag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.bags import SEC, entries_images, image_msg, record_live

from bimanual_vla.bags.message_types import type_definition
from bimanual_vla.bags.read import EPISODES_CUSTOM_DATA_KEY, BagReader, Episode
from bimanual_vla.bags.split import SplitBagWriter


def _write(path: Path, entries: list, **limits) -> SplitBagWriter:
    writer = SplitBagWriter(path, **limits)
    declared = set()
    for topic, type_name, ts, data in entries:
        if topic not in declared:
            msgdef, digest = type_definition(type_name)
            writer.add_connection(topic, type_name, msgdef=msgdef, rihs01=digest, offered=[])
            declared.add(topic)
        writer.write(topic, ts, data)
    return writer


def test_a_size_limit_splits_into_files_read_back_as_one_bag(tmp_path) -> None:
    from rosbags.rosbag2 import Reader

    entries = entries_images(60, 3000)  # 60 images of 3 kB + 60 joint states, 0.1 s apart
    bag = tmp_path / 'long'
    writer = _write(bag, entries, max_bytes=20_000)
    episodes = json.dumps([Episode(0, 'a', 100 * SEC, 103 * SEC).__dict__])
    writer.set_custom_data(EPISODES_CUSTOM_DATA_KEY, episodes)
    writer.close()
    files = sorted(p.name for p in bag.iterdir())
    mcaps = [f for f in files if f.endswith('.mcap')]
    assert len(mcaps) >= 8  # ~185 kB of data in files of at most ~20 kB (+ the message that fills one)
    assert writer.files == [f'long_{k}.mcap' for k in range(len(mcaps))]  # rosbag2's split names, in order
    assert files == sorted(['metadata.yaml', *mcaps])  # no split directory left behind
    for f in writer.closed_files:
        assert f['message_count'] >= 1
    from ruamel.yaml import YAML

    info = YAML(typ='safe').load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert info['relative_file_paths'] == [f['path'] for f in info['files']] == writer.files
    assert info['message_count'] == len(entries)
    # rosbags reads the directory as one bag: every message, in order, byte for byte
    with Reader(bag) as reader:
        got = [(c.topic, t, bytes(d)) for c, t, d in reader.messages()]
        assert reader.message_count == len(entries)
    assert sorted(got, key=lambda x: x[1]) == [(t, ts, d) for t, _, ts, d in entries]
    # and so does BagReader, custom data (episodes) included
    with BagReader(bag) as reader:
        assert reader.problems == []
        assert reader.topics['/cameras/base/image_raw'].count == 60
        images = [m for _, m in reader.decoded(['/cameras/base/image_raw'])]
        assert [bytes(m.data) for m in images] == [bytes(image_msg(k, 3000).data) for k in range(60)]
        assert reader.custom_data[EPISODES_CUSTOM_DATA_KEY] == episodes
        assert reader.episodes == [Episode(0, 'a', 100 * SEC, 103 * SEC)]
        assert reader.start_ns == 100 * SEC and reader.end_ns == entries[-1][2]


def test_a_duration_limit_closes_a_file_every_so_many_seconds(tmp_path) -> None:
    entries = entries_images(50, 100)  # 5 s of messages, 0.1 s apart
    writer = _write(tmp_path / 'timed', entries, max_duration_s=1.0)
    writer.close()
    assert len(writer.files) == 5
    for f in writer.closed_files:
        assert f['duration']['nanoseconds'] < SEC
        assert f['message_count'] == 20


def test_files_closed_before_a_crash_stay_readable(tmp_path) -> None:
    """The recorder dies (no close): every closed file is listed in metadata.yaml and reads whole."""
    entries = entries_images(60, 3000)
    writer = _write(tmp_path / 'crash', entries, max_bytes=20_000)  # never closed
    closed = sum(f['message_count'] for f in writer.closed_files)
    assert closed > 0
    with BagReader(tmp_path / 'crash') as reader:
        got = [(m.topic, m.timestamp_ns) for m in reader.messages()]
    assert got == [(t, ts) for t, _, ts, _ in entries[:closed]]
    writer.close()  # the open file is finished on close
    with BagReader(tmp_path / 'crash') as reader:
        assert reader.message_count == len(entries)


def test_the_file_open_at_a_crash_is_salvaged_from_its_own_directory(tmp_path) -> None:
    """Its complete 1 MiB chunks read back (BagReader's salvage path), in order, byte for byte."""
    entries = [e for e in entries_images(40, 100_000) if e[0] == '/cameras/base/image_raw']
    writer = _write(tmp_path / 'big', entries, max_bytes=2_000_000)  # never closed: the second file is open
    assert writer.files == ['big_0.mcap']
    closed = writer.closed_files[0]['message_count']
    with BagReader(tmp_path / 'big' / 'big_1') as reader:
        assert any('salvag' in p for p in reader.problems), reader.problems
        images = [m for _, m in reader.decoded(['/cameras/base/image_raw'])]
    assert len(images) >= 10  # of the 40 - closed in the open file, all but the chunk being filled
    for k, img in enumerate(images):
        assert bytes(img.data) == bytes(image_msg(closed + k, 100_000).data)


def test_bad_limits_and_existing_directories_are_refused(tmp_path) -> None:
    for bad in ({'max_bytes': 0}, {'max_duration_s': -1.0}):
        with pytest.raises(ValueError, match='must be > 0'):
            SplitBagWriter(tmp_path / 'x', **bad)
    (tmp_path / 'exists').mkdir()
    with pytest.raises(FileExistsError, match='exists already'):
        SplitBagWriter(tmp_path / 'exists', max_bytes=10)


@pytest.mark.ros
def test_the_recorder_splits_a_live_recording(tmp_path, ros_context, spin) -> None:
    """BagRecorder with max_bag_size_mb: several files, every message and both episodes in the bag."""
    from rclpy.parameter import Parameter

    out = tmp_path / 'live_split'
    info = record_live(ros_context, spin, out, extra=[Parameter('max_bag_size_mb', value=0.002)])
    mcaps = sorted(out.glob('*.mcap'))
    assert len(mcaps) >= 3, mcaps
    with BagReader(out) as bag:
        assert bag.problems == []
        assert bag.topics['/joint_states'].count == info['n']
        assert [(e.index, e.label) for e in bag.episodes] == [(0, 'episode_a'), (1, 'episode_b')]
        positions = [m.position[0] for _, m in bag.decoded(['/joint_states'])]
    assert positions == pytest.approx([0.01 * i for i in range(info['n'])])
