"""When a chunk's first action takes effect: how bags stamped their commands, read back for training."""

from __future__ import annotations

import json

import pytest

from bimanual_vla.learning.train_data import action_time_offset_s

RATE = 50.0


def bag(tmp_path, name: str, summary: dict | None):
    path = tmp_path / name
    path.mkdir()
    if summary is not None:
        (path / 'collect.json').write_text(json.dumps(summary))
    return path


def test_commands_stamped_when_issued_need_no_offset(tmp_path) -> None:
    collected = bag(tmp_path, 'collected', {'task': 'transfer_cube', 'command_stamps': 'issued'})
    recorded = bag(tmp_path, 'rig', None)  # a rig's recording: commands stamped when sent
    assert action_time_offset_s([collected, recorded], RATE) == 0.0


def test_bags_collected_before_the_fix_date_their_commands_one_tick_earlier(tmp_path) -> None:
    old = [bag(tmp_path, f'old{i}', {'task': 'transfer_cube', 'episodes': []}) for i in range(2)]
    assert action_time_offset_s(old, RATE) == pytest.approx(0.02)
    assert action_time_offset_s(old, 30.0) == pytest.approx(1 / 30, abs=1e-9)


def test_mixed_or_unknown_stamping_is_refused_by_name(tmp_path) -> None:
    old = bag(tmp_path, 'old', {'task': 'transfer_cube'})
    new = bag(tmp_path, 'new', {'task': 'transfer_cube', 'command_stamps': 'issued'})
    with pytest.raises(ValueError, match=r'no single action_time_offset_s fits both') as err:
        action_time_offset_s([old, new], RATE)
    assert str(old) in str(err.value) and str(new) in str(err.value)
    odd = bag(tmp_path, 'odd', {'command_stamps': 'applied'})
    with pytest.raises(ValueError, match=r"unknown command_stamps 'applied'"):
        action_time_offset_s([odd], RATE)
