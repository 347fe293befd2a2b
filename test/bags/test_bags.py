"""Bag recording, replay and reading: real rclpy over Fast DDS, real MCAP files, damaged bags.

Live tests publish synthetic JointState / Image / String topics from a test node and
record them with our recorder; the bags are then checked with rosbags (an independent
reader) and decoded with rclpy. Damage tests cut and flip bytes of real bag files and
check that everything outside the damage is still read, with a problem naming it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.bags import SEC, entries_images, image_msg, record_live, spin_for, write_bag

from bimanual_vla import topics as T
from bimanual_vla.bags.read import BagDecodeError, BagError, BagReader, MissingTopicError


@pytest.fixture(scope='module')
def recorded_bag(tmp_path_factory) -> tuple[Path, dict]:
    """One live recording shared by the tests that only read it."""
    import rclpy
    from rclpy.context import Context

    def spin_until(executor, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            executor.spin_once(timeout_sec=0.05)
        return bool(predicate())

    out = tmp_path_factory.mktemp('bags') / 'live'
    context = Context()
    rclpy.init(context=context)
    try:
        info = record_live(context, spin_until, out)
    finally:
        rclpy.shutdown(context=context)
    return out, info


# --------------------------------------------------------------- live recorder


@pytest.mark.ros
def test_recorded_bag_opens_with_rosbags_and_decodes_with_rclpy(recorded_bag) -> None:
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import QosDurability, QosReliability
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    path, info = recorded_bag
    assert (path / 'metadata.yaml').is_file() and (path / 'live.mcap').is_file()
    with AnyReader([path]) as reader:
        conns = {c.topic: c for c in reader.connections}
        assert conns['/joint_states'].msgtype == 'sensor_msgs/msg/JointState'
        assert conns['/joint_states'].digest in info['joint_hashes']  # the hash the publisher announced
        assert conns['/cameras/base/image_raw'].msgtype == 'sensor_msgs/msg/Image'
        assert conns['/joint_states'].msgcount == info['n']
        assert conns['/cameras/base/image_raw'].msgcount == info['n'] // 4
        qos_js = conns['/joint_states'].ext.offered_qos_profiles[0]
        assert qos_js.reliability == QosReliability.BEST_EFFORT
        qos_task = conns['/policy/task'].ext.offered_qos_profiles[0]
        assert qos_task.durability == QosDurability.TRANSIENT_LOCAL
        assert 'float64[] position' in conns['/joint_states'].msgdef.data
        positions, frames, tasks = [], [], []
        for conn, _, raw in reader.messages(connections=reader.connections):
            if conn.topic == '/joint_states':
                positions.append(deserialize_message(bytes(raw), JointState).position[0])
            elif conn.topic == '/cameras/base/image_raw':
                img = deserialize_message(bytes(raw), Image)
                frames.append((img.header.stamp.sec, bytes(img.data)))
            elif conn.topic == '/policy/task':
                tasks.append(deserialize_message(bytes(raw), String).data)
    assert positions == pytest.approx([0.01 * i for i in range(info['n'])])
    assert frames == [(i, bytes(image_msg(i, 192).data)) for i in range(0, info['n'], 4)]
    assert tasks == ['transfer the cube']


@pytest.mark.ros
def test_recorded_episodes_are_labelled_in_metadata_and_markers(recorded_bag) -> None:
    path, _ = recorded_bag
    with BagReader(path) as bag:
        assert [(e.index, e.label) for e in bag.episodes] == [(0, 'episode_a'), (1, 'episode_b')]
        a, b = bag.episodes
        assert a.end_ns == b.start_ns and b.end_ns is not None and b.end_ns > b.start_ns
        js = [m.timestamp_ns for m in bag.messages(['/joint_states'])]
        in_b = [t for t in js if b.start_ns <= t < b.end_ns]
        assert 15 <= len(in_b) <= 25  # ~20 joint states were published during episode_b
        assert bag.problems == []
    # The markers alone (as the salvage path sees them) give the same episodes.
    from bimanual_vla.bags.read import episodes_from_markers

    with BagReader(path) as bag:
        markers = [(m.timestamp_ns, bag.decode(m).data) for m in bag.messages(['/record/episode'])]
        assert episodes_from_markers(markers) == bag.episodes


@pytest.mark.ros
@pytest.mark.slow
def test_record_replay_record_gives_same_messages(recorded_bag, tmp_path, ros_context, spin) -> None:
    """Replay (CLI, rate 1) while a second recorder runs: same messages, same relative timing."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from bimanual_vla.bags.record import BagRecorder

    first, _ = recorded_bag
    second = tmp_path / 'again'
    rec = BagRecorder(
        context=ros_context,
        parameter_overrides=[
            Parameter('output', value=str(second)),
            Parameter('topics', value=[T.JOINT_STATES, T.camera_image('base'), T.POLICY_TASK]),
            Parameter('discovery_period_s', value=0.1),
        ],
    )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(rec)
    player = subprocess.Popen(
        [sys.executable, '-m', 'bimanual_vla.cli.main', 'replay', str(first), '--wait-for-subscribers', '20',
         '--topics', '/joint_states', '/cameras/base/image_raw', '/policy/task', '/record/episode'],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        done = spin(executor, lambda: player.poll() is not None, 60.0)
        output = player.communicate(timeout=10)[0] if done else ''
        assert done and player.returncode == 0, output
        spin_for(executor, 0.3)
    finally:
        if player.poll() is None:
            player.kill()
    rec.close()
    executor.shutdown()
    rec.destroy_node()

    with BagReader(first) as a, BagReader(second) as b:
        for topic in ('/joint_states', '/cameras/base/image_raw', '/policy/task'):
            ma, mb = list(a.decoded([topic])), list(b.decoded([topic]))
            assert [m for _, m in ma] == [m for _, m in mb], topic  # rclpy message equality: content
            ta = [x.timestamp_ns - ma[0][0].timestamp_ns for x, _ in ma]
            tb = [x.timestamp_ns - mb[0][0].timestamp_ns for x, _ in mb]
            errors = sorted(abs(x - y) / 1e9 for x, y in zip(ta, tb, strict=True))
            assert errors[len(errors) // 2] < 0.05 and errors[-1] < 0.5, (topic, errors[-5:])
        assert [e.label for e in b.episodes] == [e.label for e in a.episodes]
        assert b.topics['/joint_states'].type == 'sensor_msgs/msg/JointState'


@pytest.mark.ros
@pytest.mark.slow
def test_record_cli_closes_bag_cleanly_on_sigint(tmp_path, ros_context, spin) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import String

    out = tmp_path / 'cli_bag'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'bimanual_vla.cli.main', 'record', str(out), '--topics', 'chatter'],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    node = Node('chatter_source', context=ros_context)
    pub = node.create_publisher(String, 'chatter', T.RELIABLE_QOS)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        assert spin(executor, lambda: pub.get_subscription_count() > 0 or proc.poll() is not None, 30.0)
        assert proc.poll() is None, proc.communicate()[0]
        for i in range(20):
            pub.publish(String(data=f'hello {i}'))
            spin_for(executor, 0.02)
        spin_for(executor, 0.5)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=20)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        executor.shutdown()
        node.destroy_node()
    assert proc.returncode == 0, output
    with BagReader(out) as bag:
        assert bag.problems == []
        assert [m.data for _, m in bag.decoded(['/chatter'])] == [f'hello {i}' for i in range(20)]


# ------------------------------------------------------------------- replay


@pytest.mark.ros
def test_replay_clock_drives_sim_time_timers(tmp_path, ros_context, spin) -> None:
    """At rate 2.0 a use_sim_time node's 0.5 s timer fires on bag time, twice per wall second."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    from bimanual_vla.bags.replay import BagPlayer

    t0 = 1000 * SEC
    entries = [('/chatter', 'std_msgs/msg/String', t0 + i * SEC // 2, serialize_message(String(data=str(i))))
               for i in range(9)]  # fmt: skip
    bag = tmp_path / 'clock_bag'
    write_bag(bag, entries)

    sim = Node('sim_time_node', context=ros_context, parameter_overrides=[Parameter('use_sim_time', value=True)])
    ticks: list[tuple[int, float]] = []
    sim.create_timer(0.5, lambda: ticks.append((sim.get_clock().now().nanoseconds, time.monotonic())))
    heard: list[str] = []
    sim.create_subscription(String, '/chatter', lambda m: heard.append(m.data), T.RELIABLE_QOS)
    player = BagPlayer(
        context=ros_context,
        parameter_overrides=[
            Parameter('bag', value=str(bag)),
            Parameter('rate', value=2.0),
            Parameter('clock_hz', value=50.0),
            Parameter('wait_for_subscribers_s', value=15.0),
            Parameter('autostart', value=False),
        ],
    )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(sim)
    executor.add_node(player)
    assert spin(executor, lambda: player.clock_pub.get_subscription_count() > 0, 15.0)
    player.start()
    assert spin(executor, lambda: player.finished.is_set(), 30.0)
    spin_for(executor, 0.3)
    player.stop()
    executor.shutdown()

    assert heard == [str(i) for i in range(9)]
    stamps = [ns for ns, _ in ticks]
    assert len(stamps) >= 5, stamps
    assert all(t0 <= ns <= t0 + 4 * SEC + SEC // 10 for ns in stamps), stamps  # bag time, not wall time
    gaps = [(b - a) / SEC for a, b in zip(stamps, stamps[1:], strict=False)]
    # The timer's period is in bag seconds; /clock ticks every rate/clock_hz = 0.04 bag s, hence the slack.
    assert all(0.4 <= g <= 0.6 for g in gaps) and sum(gaps) / len(gaps) == pytest.approx(0.5, abs=0.03), gaps
    bag_span = (stamps[-1] - stamps[0]) / SEC
    wall_span = ticks[-1][1] - ticks[0][1]
    assert bag_span > 1.4 * wall_span, (bag_span, wall_span)  # rate 2.0: bag time runs ~2x wall time


@pytest.mark.ros
def test_replay_skips_unknown_type_and_rejects_missing_topics(tmp_path, ros_context) -> None:
    from rclpy.parameter import Parameter

    from bimanual_vla.bags.replay import BagPlayer

    bag = tmp_path / 'unknown'
    _write_bag_with_unknown_type(bag)
    player = BagPlayer(
        context=ros_context, parameter_overrides=[Parameter('bag', value=str(bag)), Parameter('autostart', value=False)]
    )
    assert set(player.publishers_by_topic) == {'/chatter'}
    assert 'acme_msgs/msg/Widget' in player.skipped['/widget']
    player.stop()
    player.destroy_node()
    with pytest.raises(MissingTopicError, match='/cameras/top/image_raw'):
        BagPlayer(
            context=ros_context,
            parameter_overrides=[
                Parameter('bag', value=str(bag)),
                Parameter('topics', value=['cameras/top/image_raw']),
            ],
        )


# --------------------------------------------------------------- damaged bags


def _mcap(path: Path) -> Path:
    return next(path.glob('*.mcap'))


def _chunk_offsets(path: Path) -> list[int]:
    from rosbags.rosbag2.storage_mcap import McapReader

    reader = McapReader(_mcap(path))
    reader.open()
    offsets = [c.chunk_start_offset for c in reader.chunks]
    reader.close()
    return offsets


def test_truncated_bag_keeps_every_complete_chunk(tmp_path) -> None:
    bag = tmp_path / 'cut'
    entries = entries_images(40, 100_000)  # ~4 MB: several 1 MiB chunks
    write_bag(bag, entries)
    offsets = _chunk_offsets(bag)
    assert len(offsets) >= 3
    cut_at = offsets[2] + 1000  # inside the third chunk
    data = _mcap(bag).read_bytes()
    _mcap(bag).write_bytes(data[:cut_at])

    with BagReader(bag) as reader:
        assert any('salvag' in p for p in reader.problems), reader.problems
        assert any(str(cut_at) in p or 'past the end' in p for p in reader.problems), reader.problems
        got = list(reader.decoded(['/cameras/base/image_raw']))
        images = [m for _, m in got]
    assert 0 < len(images) < 40
    for k, img in enumerate(images):  # the first chunks, intact and in order
        assert bytes(img.data) == bytes(image_msg(k, 100_000).data)


def test_missing_metadata_is_salvaged_from_mcap(tmp_path) -> None:
    bag = tmp_path / 'nometa'
    write_bag(bag, entries_images(5, 30))
    (bag / 'metadata.yaml').unlink()
    with BagReader(bag) as reader:
        assert any('metadata.yaml is missing' in p for p in reader.problems)
        assert reader.topics['/joint_states'].count == 5
        assert [m.position[0] for _, m in reader.decoded(['/joint_states'])] == pytest.approx(
            [0.0, 0.01, 0.02, 0.03, 0.04]
        )


@pytest.mark.parametrize('damage', ['record', 'zstd', 'framing'])
def test_flipped_bytes_lose_only_the_damaged_chunk(tmp_path, damage) -> None:
    bag = tmp_path / 'flipped'
    n = 40
    write_bag(bag, entries_images(n, 100_000), compress=damage == 'zstd')
    offsets = _chunk_offsets(bag)
    raw = bytearray(_mcap(bag).read_bytes())
    victim = offsets[1]
    if damage == 'framing':  # the chunk record's own length is absurd and the summary is gone: resynchronise
        raw[victim + 1 : victim + 9] = (2**40).to_bytes(8, 'little')
        del raw[-200:]
    elif damage == 'zstd':  # chunk record: opcode, length, 3 x u64 + crc, 'zstd', payload length: the zstd frame at +53
        raw[victim + 53 : victim + 57] = b'\xde\xad\xbe\xef'  # frame magic gone: the chunk cannot decompress
    else:  # the first record inside the chunk (at +49) claims a length far past the chunk
        raw[victim + 50 : victim + 58] = (2**40).to_bytes(8, 'little')
    _mcap(bag).write_bytes(bytes(raw))

    with BagReader(bag) as reader:
        images = [m for _, m in reader.decoded(['/cameras/base/image_raw'])]
        problems = list(reader.problems)
    assert any(str(victim) in p for p in problems), problems
    expected = {bytes(image_msg(i, 100_000).data) for i in range(n)}
    got = [bytes(i.data) for i in images]
    assert all(g in expected for g in got)  # nothing garbled is returned
    assert len(expected) - 12 <= len(got) < len(expected)  # one ~1 MiB chunk (~10 images) lost, the rest kept
    assert bytes(image_msg(n - 1, 100_000).data) in got  # data after the damage survives


def test_missing_camera_topic_is_named(tmp_path) -> None:
    bag = tmp_path / 'nocam'
    write_bag(bag, [e for e in entries_images(3, 30) if e[0] == '/joint_states'])
    with BagReader(bag) as reader:
        with pytest.raises(MissingTopicError) as err:
            reader.require_topics(['cameras/base/image_raw', 'joint_states'])
        assert '/cameras/base/image_raw' in str(err.value) and 'the bag has: /joint_states' in str(err.value)
        assert len(list(reader.messages(['/joint_states']))) == 3  # what is there stays readable


def _write_bag_with_unknown_type(bag: Path, with_definition: bool = True) -> None:
    """A bag with acme_msgs/msg/Widget (not installed here) beside std_msgs/String."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from std_msgs.msg import String

    from bimanual_vla.bags.message_types import type_definition

    widget_def = 'string name\nfloat64[] values\nuint32 count\n'
    # CDR of Widget(name='w', values=[1.5, 2.5], count=7), plus 4 padding bytes as rclpy may append.
    body = b'\x00\x01\x00\x00' + (2).to_bytes(4, 'little') + b'w\x00' + b'\x00\x00'
    body += (2).to_bytes(4, 'little') + b'\x00\x00\x00\x00'  # align to 8 for float64
    import struct

    body += struct.pack('<dd', 1.5, 2.5) + (7).to_bytes(4, 'little') + b'\x00' * 4
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        widget = writer.add_connection(
            '/widget', 'acme_msgs/msg/Widget', msgdef=widget_def if with_definition else '', rihs01='RIHS01_' + '0' * 64
        )
        msgdef, digest = type_definition('std_msgs/msg/String')
        chatter = writer.add_connection('/chatter', 'std_msgs/msg/String', msgdef=msgdef, rihs01=digest)
        writer.write(widget, 5 * SEC, body)
        writer.write(chatter, 6 * SEC, serialize_message(String(data='still here')))


def test_unknown_type_decodes_from_bag_definition(tmp_path) -> None:
    bag = tmp_path / 'unknown'
    _write_bag_with_unknown_type(bag)
    with BagReader(bag) as reader:
        (widget_msg, widget), (chatter_msg, chatter) = list(reader.decoded())
    assert widget_msg.type == 'acme_msgs/msg/Widget'
    assert (widget.name, list(widget.values), widget.count) == ('w', [1.5, 2.5], 7)
    assert chatter.data == 'still here'


def test_unknown_type_without_definition_is_a_clear_error(tmp_path) -> None:
    bag = tmp_path / 'nodef'
    _write_bag_with_unknown_type(bag, with_definition=False)
    with BagReader(bag) as reader:
        msgs = list(reader.messages())
        with pytest.raises(BagDecodeError, match=r'acme_msgs/msg/Widget on /widget'):
            reader.decode(msgs[0])
        assert reader.decode(msgs[1]).data == 'still here'


def test_corrupt_message_bytes_raise_decode_error(tmp_path) -> None:
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    bag = tmp_path / 'badcdr'
    good = serialize_message(String(data='ok'))
    bad = good[:4] + (10**6).to_bytes(4, 'little') + good[8:]  # string length far past the buffer
    write_bag(bag, [('/chatter', 'std_msgs/msg/String', SEC, bad), ('/chatter', 'std_msgs/msg/String', 2 * SEC, good)])
    with BagReader(bag) as reader:
        first, second = list(reader.messages())
        with pytest.raises(BagDecodeError, match='/chatter at t=1000000000'):
            reader.decode(first)
        assert reader.decode(second).data == 'ok'


def test_not_a_bag_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(BagError, match='no such bag'):
        BagReader(tmp_path / 'nope')
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'junk.mcap').write_bytes(b'not an mcap file at all')
    with pytest.raises(BagError, match='not an MCAP file'):
        BagReader(tmp_path / 'junk')


@pytest.mark.ros
@pytest.mark.parametrize(('rig', 'expected'), [('aloha_sim', 'header'), ('so101_bimanual', None)])
def test_recorder_marks_a_simulated_rigs_bag_as_sim_time(rig, expected, tmp_path, ros_context) -> None:
    """A recording of a simulated rig says its stamps carry the timing (sim time); a real rig's says nothing."""
    from rclpy.parameter import Parameter

    from bimanual_vla.bags.record import BagRecorder
    from bimanual_vla.bags.time_base import TIME_BASE_KEY

    rec = BagRecorder(
        context=ros_context,
        parameter_overrides=[Parameter('output', value=str(tmp_path / 'bag')), Parameter('rig', value=rig)],
    )
    rec.close()
    rec.destroy_node()
    with BagReader(tmp_path / 'bag') as bag:
        assert bag.custom_data.get(TIME_BASE_KEY) == expected


@pytest.mark.ros
def test_a_stop_signal_while_the_recorder_is_built_still_closes_the_bag(tmp_path) -> None:
    """SIGINT and SIGTERM sent while the bag is being set up (after its "recording" line) close it cleanly."""
    script = (
        'import os, signal, sys, rclpy\n'
        'from rclpy.parameter import Parameter\n'
        'from bimanual_vla.bags.record import BagRecorder, StopSignals, rclpy_signal_options, spin_until_signal\n'
        'stop = StopSignals()\n'
        'rclpy.init(signal_handler_options=rclpy_signal_options())\n'
        'os.kill(os.getpid(), getattr(signal, sys.argv[2]))\n'
        "recorder = BagRecorder(parameter_overrides=[Parameter('output', value=sys.argv[1])])\n"
        'sys.exit(spin_until_signal(recorder, stop))\n'
    )
    for name in ('SIGINT', 'SIGTERM'):
        bag = tmp_path / name
        done = subprocess.run(
            [sys.executable, '-c', script, str(bag), name], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert (bag / 'metadata.yaml').is_file(), done.stderr[-2000:]
