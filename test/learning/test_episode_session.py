"""The record-episodes state machine: countdown, episodes and resets by time; next, re-record, stop."""

from __future__ import annotations

import pytest

from bimanual_vla.learning.episode_session import DONE, EPISODE, RESET, EpisodeSession, Step


def _markers(steps):
    return [(s.kind, s.text) for s in steps if s.kind in ('start', 'end', 'discard', 'done')]


def test_episodes_and_resets_follow_the_clock():
    s = EpisodeSession(2, episode_s=5, reset_s=2, countdown_s=3)
    s.start(0.0)
    assert s.tick(2.9) == []
    assert _markers(s.tick(3.0)) == [('start', 'episode_000')] and s.phase == EPISODE
    assert s.time_left(4.0) == pytest.approx(4.0)
    assert _markers(s.tick(8.0)) == [('end', 'episode_000')] and s.phase == RESET
    assert _markers(s.tick(10.0)) == [('start', 'episode_001')]
    assert _markers(s.tick(15.0)) == [('end', 'episode_001'), ('done', '')]  # no reset after the last
    assert s.phase == DONE and s.kept == ['episode_000', 'episode_001']


def test_next_ends_early_and_skips_waiting():
    s = EpisodeSession(3, episode_s=60, reset_s=60, countdown_s=3)
    s.start(0.0)
    assert _markers(s.act('next', 0.5)) == [('start', 'episode_000')]
    assert _markers(s.act('next', 1.0)) == [('end', 'episode_000')] and s.phase == RESET
    assert _markers(s.act('next', 1.5)) == [('start', 'episode_001')]


def test_rerecord_during_and_after_an_episode_discards_it_and_records_a_new_take():
    s = EpisodeSession(2, episode_s=10, reset_s=1, countdown_s=0)
    s.start(0.0)
    s.tick(0.0)
    steps = s.act('rerecord', 2.0)  # during episode 1
    assert _markers(steps) == [('end', 'episode_000'), ('discard', 'episode_000')] and s.phase == RESET
    assert _markers(s.tick(3.0)) == [('start', 'episode_000_take2')]
    assert _markers(s.tick(13.0)) == [('end', 'episode_000_take2')]
    assert _markers(s.act('rerecord', 13.5)) == [('discard', 'episode_000_take2')]  # in the reset after it
    assert s.act('rerecord', 13.6) == []  # nothing left to discard until the next take
    assert _markers(s.tick(14.0)) == [('start', 'episode_000_take3')]
    assert _markers(s.act('next', 15.0)) == [('end', 'episode_000_take3')]
    assert _markers(s.act('next', 15.1)) == [('start', 'episode_001')]
    assert _markers(s.act('stop', 16.0, 'Esc')) == [('end', 'episode_001'), ('done', '')]
    assert s.kept == ['episode_000_take3', 'episode_001']
    assert s.discarded == ['episode_000', 'episode_000_take2']
    assert s.stopped_by == 'Esc'


def test_stop_between_episodes_and_bad_settings():
    s = EpisodeSession(5, episode_s=1, reset_s=1)
    s.start(0.0)
    assert s.act('stop', 0.1) == [Step('prompt', 'Stopped (stop): 0 episodes kept'), Step('done')]
    assert s.act('next', 0.2) == [] and s.tick(100.0) == []
    with pytest.raises(ValueError, match='--episode-s must be > 0 s, got 0'):
        EpisodeSession(1, episode_s=0, reset_s=1)
    with pytest.raises(ValueError, match='--episodes must be >= 1'):
        EpisodeSession(0, episode_s=1, reset_s=1)
    with pytest.raises(ValueError, match="unknown action 'jump'"):
        EpisodeSession(1, episode_s=1, reset_s=1).act('jump', 0.0)
