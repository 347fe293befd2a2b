"""bags.episodes: discard markers pick the take they follow; takeover markers become per-arm segments."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.bags.episodes import (
    Segment,
    discard_payload,
    in_interventions,
    intervention_payload,
    intervention_segments,
    kept_episodes,
    parse_intervention,
)

pytestmark = pytest.mark.ros
SEC = 1_000_000_000
ST = 'std_msgs/msg/String'


def _bag(path, strings):
    from helpers.bags import write_bag
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    entries = [(topic, ST, int(t * SEC), serialize_message(String(data=text))) for topic, t, text in strings]
    write_bag(path, sorted(entries, key=lambda e: e[2]))
    return path


def test_a_discard_names_the_latest_take_of_its_label_before_it(tmp_path):
    from bimanual_vla.bags.read import BagReader

    markers = [('/record/episode', t, label) for t, label in
               [(1, 'ep0'), (2, ''), (3, 'ep1'), (4, ''), (6, 'ep1'), (7, ''), (8, 'ep2'), (9, '')]]  # fmt: skip
    discards = [('/record/discard', 5, discard_payload('ep1')), ('/record/discard', 9.5, 'ep2')]
    with BagReader(_bag(tmp_path / 'b', markers + discards)) as bag:
        kept, gone = kept_episodes(bag)
    assert [(e.label, e.start_ns) for e in kept] == [('ep0', SEC), ('ep1', 6 * SEC)]
    assert [(e.label, e.start_ns) for e in gone] == [('ep1', 3 * SEC), ('ep2', 8 * SEC)]


def test_a_discard_naming_no_earlier_episode_is_reported_not_applied(tmp_path):
    from bimanual_vla.bags.read import BagReader

    strings = [('/record/discard', 0.5, discard_payload('ep0')), ('/record/episode', 1, 'ep0'),
               ('/record/episode', 2, '')]  # fmt: skip
    with BagReader(_bag(tmp_path / 'b', strings)) as bag:
        kept, gone = kept_episodes(bag)
        assert [e.label for e in kept] == ['ep0'] and gone == []
        assert any("names no earlier episode 'ep0'" in p for p in bag.problems)


def test_takeovers_become_segments_per_arm(tmp_path):
    from bimanual_vla.bags.read import BagReader

    strings = [
        ('/teleop/intervention', 1, intervention_payload([])),
        ('/teleop/intervention', 2, intervention_payload(['left'], 'start', 'left')),
        ('/teleop/intervention', 3, intervention_payload(['left', 'right'], 'start', 'right')),
        ('/teleop/intervention', 4, intervention_payload(['right'], 'end', 'left')),
        ('/teleop/intervention', 5, 'left'),  # the plain form ros2 topic pub users type
    ]
    with BagReader(_bag(tmp_path / 'b', strings)) as bag:
        segments = intervention_segments(bag)
    assert segments == [Segment('left', 2 * SEC, 4 * SEC), Segment('right', 3 * SEC, 5 * SEC),
                        Segment('left', 5 * SEC, None)]  # fmt: skip
    inside = in_interventions(np.array([1, 2, 3.9, 4, 4.5, 5, 100]) * SEC, segments[:1])
    assert inside.tolist() == [False, True, True, False, False, False, False]
    assert in_interventions([100 * SEC], segments).tolist() == [True]  # open at the end: to the bag's end


def test_intervention_messages_parse_or_refuse():
    assert parse_intervention(intervention_payload(['right', 'left'], 'start', 'left')) == {'left', 'right'}
    assert parse_intervention('') == frozenset() and parse_intervention(' left , right ') == {'left', 'right'}
    with pytest.raises(ValueError, match='"arms" must be a list'):
        parse_intervention('{"arms": "left"}')


def test_a_split_on_request_closes_the_file_written_so_far(tmp_path):
    """record-episodes splits at every episode end: a kill afterwards loses nothing of that episode."""
    from helpers.bags import entries_images

    from bimanual_vla.bags.message_types import type_definition
    from bimanual_vla.bags.read import BagReader
    from bimanual_vla.bags.split import SplitBagWriter

    bag = tmp_path / 'eps'
    writer = SplitBagWriter(bag, split_on_request=True)
    entries = entries_images(10, 300)
    for topic, type_name in {(e[0], e[1]) for e in entries}:
        msgdef, digest = type_definition(type_name)
        writer.add_connection(topic, type_name, msgdef=msgdef, rihs01=digest, offered=[])
    for topic, _, ts, data in entries[:8]:
        writer.write(topic, ts, data)
    writer.split()
    writer.split()  # nothing written since: no empty file
    assert writer.files == ['eps_0.mcap']
    with BagReader(bag) as first:  # what a kill now would leave: the closed file, listed
        assert first.message_count == 8 and not first.problems
    for topic, _, ts, data in entries[8:]:
        writer.write(topic, ts, data)
    writer.close()
    assert writer.files == ['eps_0.mcap', 'eps_1.mcap']
    with BagReader(bag) as both:
        assert both.message_count == len(entries)
