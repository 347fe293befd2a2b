"""The policy node's parameters resolved against the policy file (policy_node/settings.py), by value."""

from __future__ import annotations

from pathlib import Path

import pytest

from bimanual_vla.config import ConfigError, PolicyConfig
from bimanual_vla.policy_node.settings import NodeSettings


def policy(checkpoint: Path, **inference) -> PolicyConfig:
    return PolicyConfig(checkpoint=str(checkpoint), task='fold', inference=inference)


def test_an_empty_checkpoint_parameter_takes_the_policy_files(tmp_path: Path) -> None:
    (tmp_path / 'from_file').mkdir()
    (tmp_path / 'from_param').mkdir()
    cfg = policy(tmp_path / 'from_file')
    s = NodeSettings.resolve(cfg, checkpoint='', enabled=False, chunking='rtc', markers_every_n_chunks=1)
    assert s.checkpoint == tmp_path / 'from_file'
    s = NodeSettings.resolve(
        cfg, checkpoint=str(tmp_path / 'from_param'), enabled=True, chunking='naive', markers_every_n_chunks=3
    )
    assert (s.checkpoint, s.enabled, s.chunking, s.markers_every) == (tmp_path / 'from_param', True, 'naive', 3)
    assert s.policy is cfg


def test_a_checkpoint_that_is_not_a_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        NodeSettings.resolve(
            policy(tmp_path / 'nowhere'), checkpoint='', enabled=False, chunking='rtc', markers_every_n_chunks=1
        )
    assert str(err.value) == f'checkpoint {tmp_path / "nowhere"} is not a directory (set the "checkpoint" parameter)'


@pytest.mark.parametrize(('given', 'kept'), [(0, 1), (-4, 1), (1, 1), (5, 5)])
def test_markers_are_published_for_every_chunk_at_most(tmp_path: Path, given: int, kept: int) -> None:
    s = NodeSettings.resolve(
        policy(tmp_path), checkpoint='', enabled=False, chunking='rtc', markers_every_n_chunks=given
    )
    assert s.markers_every == kept


def test_the_action_time_offset_is_the_checkpoints_unless_the_policy_file_sets_one(tmp_path: Path) -> None:
    from_checkpoint = NodeSettings.resolve(
        policy(tmp_path), checkpoint='', enabled=False, chunking='rtc', markers_every_n_chunks=1
    )
    assert from_checkpoint.action_time_offset_s(0.02) == 0.02
    overridden = NodeSettings.resolve(
        policy(tmp_path, action_time_offset_s=0.0),
        checkpoint='',
        enabled=False,
        chunking='rtc',
        markers_every_n_chunks=1,
    )
    assert overridden.action_time_offset_s(0.02) == 0.0
