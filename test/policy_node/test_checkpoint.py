"""make-checkpoint -> load round trip, and every way a checkpoint directory is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.policy_node import copy_checkpoint

from bimanual_vla.cli.main import main as cli_main
from bimanual_vla.config import load_rig
from bimanual_vla.learning.tiny_checkpoint import stats_from_limits
from bimanual_vla.policy_node.checkpoint import (
    METADATA_FILE,
    METADATA_FORMAT_VERSION,
    OLDEST_METADATA_FORMAT_VERSION,
    CheckpointError,
    read_metadata,
)
from bimanual_vla.policy_node.model import VLAPolicy


def _limits(rig_name: str) -> tuple[list[float], list[float]]:
    rig = load_rig(rig_name)
    joints = [j for arm in rig.arms for j in arm.joints]
    return [j.lower for j in joints], [j.upper for j in joints]


def test_make_checkpoint_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'ck'
    argv = ['make-checkpoint', '--tiny', str(out), '--hidden', '48', '--layers', '1', '--expert-hidden', '24']
    argv += ['--chunk-size', '20', '--image-size', '24', '--normalization', 'quantile', '--rig', 'koch_bimanual']
    assert cli_main(argv) == 0
    assert 'wrote' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        'bimanual_vla.json',
        'config.json',
        'model.safetensors',
        'tokenizer.json',
    ]

    policy = VLAPolicy.load(out)
    cfg = policy.config
    assert cfg.vlm_config.text_config.hidden_size == 48
    assert cfg.vlm_config.text_config.num_hidden_layers == 1 == cfg.dit_config.num_hidden_layers
    assert cfg.dit_config.hidden_size == 24
    assert cfg.chunk_size == 20 == policy.chunk_size
    assert cfg.vlm_config.vision_config.image_size == 24 and policy.image_size == (24, 24)
    rig = load_rig('koch_bimanual')
    assert policy.joint_names == rig.all_joint_names()
    assert policy.camera_names == [c.name for c in rig.cameras]
    assert policy.control_rate_hz == rig.control_rate_hz
    assert policy.metadata.normalization.mode == 'quantile'
    assert policy.metadata.normalization.actions == stats_from_limits(*_limits('koch_bimanual'))
    # tokenizer: the prompt layout and the special ids the model relies on
    ids = policy.prompt_ids('Grasp the cube')
    n_image = policy.tokens_per_image * len(policy.camera_names)
    assert policy.tokens_per_image == (24 // 8) ** 2
    assert ids[:n_image] == [cfg.vlm_config.image_token_id] * n_image
    assert ids[n_image] == policy.tokenizer.token_to_id('<bos>')
    assert policy.tokenizer.decode(ids[n_image + 1 :], skip_special_tokens=True).split() == ['grasp', 'the', 'cube']
    assert ids[-1] == policy.tokenizer.token_to_id('\n')
    assert cfg.vlm_config.text_config.vocab_size == policy.tokenizer.get_vocab_size()

    # refuses to overwrite without --force, replaces with it
    assert cli_main(argv) == 2
    assert 'not empty' in capsys.readouterr().err
    assert cli_main([*argv, '--force']) == 0


def test_default_tiny_checkpoint_metadata(tiny_checkpoint: Path, tiny_policy) -> None:
    meta = read_metadata(tiny_checkpoint)
    assert meta.joint_names == load_rig('aloha_sim').all_joint_names()
    assert meta.camera_names == ['top', 'left_wrist', 'right_wrist']
    assert meta.chunk_size == 50 and meta.control_rate_hz == 50.0
    assert meta.tokens.subtask_end == '<eos>' and meta.reasoning
    assert tiny_policy.model.config.max_action_dim == 32


def _edit_metadata(directory: Path, **changes: object) -> None:
    path = directory / METADATA_FILE
    data = json.loads(path.read_text())
    for key, value in changes.items():
        target = data
        *parents, leaf = key.split('__')
        for p in parents:
            target = target[p]
        target[leaf] = value
    path.write_text(json.dumps(data))


def test_metadata_format_version(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Written explicitly; a file without it is the oldest version; an unknown version is refused."""
    assert METADATA_FORMAT_VERSION == 1 == OLDEST_METADATA_FORMAT_VERSION
    written = json.loads((tiny_checkpoint / METADATA_FILE).read_text())
    assert written['format_version'] == 1
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    path = ck / METADATA_FILE
    data = json.loads(path.read_text())
    del data['format_version']
    path.write_text(json.dumps(data))
    meta = read_metadata(ck)
    assert meta.format_version == 1
    assert meta.joint_names == written['joint_names']
    _edit_metadata(ck, format_version=2)
    with pytest.raises(CheckpointError, match=r'format_version: unsupported format_version 2 \(this code reads 1\)'):
        read_metadata(ck)


@pytest.mark.parametrize('name', ['pytorch_model.bin', 'extra/optimizer.pt', 'stats.pkl', 'last.ckpt', 'w.pth'])
def test_pickle_files_are_refused(tiny_checkpoint: Path, tmp_path: Path, name: str) -> None:
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    (ck / name).parent.mkdir(parents=True, exist_ok=True)
    (ck / name).write_bytes(b'\x80\x04K\x01.')  # a valid pickle of the int 1
    with pytest.raises(CheckpointError, match=rf'pickle-format files \({name}\)'):
        VLAPolicy.load(ck)


@pytest.mark.parametrize('missing', ['tokenizer.json', 'config.json', 'model.safetensors', 'bimanual_vla.json'])
def test_missing_files_are_named(tiny_checkpoint: Path, tmp_path: Path, missing: str) -> None:
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    (ck / missing).unlink()
    with pytest.raises(CheckpointError, match=rf'missing {missing}'):
        VLAPolicy.load(ck)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match='not found'):
        VLAPolicy.load(tmp_path / 'nope')


def test_corrupt_weights_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    data = (ck / 'model.safetensors').read_bytes()
    (ck / 'model.safetensors').write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match='model.safetensors'):
        VLAPolicy.load(ck)
    (ck / 'model.safetensors').write_bytes(b'garbage' * 10)
    with pytest.raises(CheckpointError, match='not a readable safetensors file'):
        VLAPolicy.load(ck)


def test_weights_missing_a_tensor_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    tensors = load_file(str(ck / 'model.safetensors'))
    dropped = next(k for k in tensors if 'action_out_proj' in k)
    del tensors[dropped]
    save_file(tensors, str(ck / 'model.safetensors'), metadata={'format': 'pt'})
    with pytest.raises(CheckpointError, match='weights do not match.*action_out_proj'):
        VLAPolicy.load(ck)


def test_corrupt_files_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    (ck / 'tokenizer.json').write_text('{not json')
    with pytest.raises(CheckpointError, match='tokenizer.json: not a readable tokenizers file'):
        VLAPolicy.load(ck)
    ck2 = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck2')
    (ck2 / 'bimanual_vla.json').write_text('[1, 2')
    with pytest.raises(CheckpointError, match='bimanual_vla.json: not valid JSON'):
        VLAPolicy.load(ck2)


def test_foreign_model_type_and_remote_code_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    config = json.loads((ck / 'config.json').read_text())
    (ck / 'config.json').write_text(json.dumps({**config, 'model_type': 'llama'}))
    with pytest.raises(CheckpointError, match="model_type is 'llama'"):
        VLAPolicy.load(ck)
    (ck / 'config.json').write_text(json.dumps({**config, 'auto_map': {'AutoModel': 'evil.Model'}}))
    with pytest.raises(CheckpointError, match='remote code'):
        VLAPolicy.load(ck)


def test_inconsistent_metadata_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck')
    _edit_metadata(ck, normalization__state__mean=[0.0] * 3)
    with pytest.raises(CheckpointError, match='normalization.state.*3 values for 14 joints|mean has 3'):
        VLAPolicy.load(ck)
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck2')
    _edit_metadata(ck, chunk_size=10)
    with pytest.raises(CheckpointError, match='chunk_size 10 != config.json 50'):
        VLAPolicy.load(ck)
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck3')
    _edit_metadata(ck, tokens__image='<pad>')
    with pytest.raises(CheckpointError, match='image_token_id'):
        VLAPolicy.load(ck)
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck5')
    _edit_metadata(ck, image_crops={'nose_cam': [0, 0, 10, 10]})
    with pytest.raises(CheckpointError, match=r"image_crops names camera\(s\) \['nose_cam'\]"):
        VLAPolicy.load(ck)
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck6')
    _edit_metadata(ck, image_crops={'top': [0, 0, 0, 10]})
    with pytest.raises(CheckpointError, match='image_crops.top: expected'):
        VLAPolicy.load(ck)
    ck = copy_checkpoint(tiny_checkpoint, tmp_path / 'ck4')
    _edit_metadata(ck, tokens__subtask_end='<not-a-token>')
    with pytest.raises(CheckpointError, match="subtask_end='<not-a-token>' is not in tokenizer.json"):
        VLAPolicy.load(ck)


def test_joint_mismatch_is_refused_and_order_is_free(tiny_checkpoint: Path) -> None:
    so101 = load_rig('so101_bimanual').all_joint_names()
    with pytest.raises(CheckpointError, match='joints do not match the rig.*left_waist.*left_shoulder_pan'):
        VLAPolicy.load(tiny_checkpoint, rig_joint_names=so101)
    aloha = load_rig('aloha_sim').all_joint_names()
    policy = VLAPolicy.load(tiny_checkpoint, rig_joint_names=list(reversed(aloha)))
    assert policy.joint_names == aloha  # the checkpoint's order is kept; the node maps by name
    with pytest.raises(CheckpointError, match=r"not the checkpoint: \['left_extra'\]"):
        policy.check_joints([*aloha, 'left_extra'])
