"""Small random PI0 checkpoints made locally, for tests, demos and benchmarks.

Everything a real checkpoint has is here, only smaller and untrained: a
PI0Config with a tiny SigLIP, a tiny Gemma backbone and a tiny Gemma action
expert; a word-level tokenizer built with `tokenizers` over the vocabulary of
bimanual tasks and subtasks (plus PaliGemma's special tokens); and normalisation
statistics derived from the rig's joint limits. Nothing is downloaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from bimanual_vla.policy_node.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    FeatureStats,
    NormalizationConfig,
    SpecialTokens,
    write_metadata,
)

if TYPE_CHECKING:
    from transformers import PI0Config, PI0ForConditionalGeneration

#: Words of the tasks and subtasks a bimanual rig is asked to do. Lower case; the tokenizer lowercases input.
VOCABULARY: tuple[str, ...] = tuple(
    """
    a above across after again align and arm arms at away back before behind block blue bottle bowl box
    cable center close closed cloth cube cup done down drawer drop each edge empty fold from gently grab
    grasp green gripper grippers hand hang handle hold in insert into it lay left lid lift lower move near
    of off on onto open opposite other over peg pick place plate pour press pull push put reach red
    release retract right rotate screw shirt side slide slot socket stack still table take the then to
    toward towel transfer turn twist under up upright wait wipe with yellow
    0 1 2 3 4 5 6 7 8 9 . , ; : ! ? - ' ( )
    bar both ends for level together
    """.split()  # the last line: the SO-101 twin's prompts and subtasks, appended so earlier ids stay
)


def build_tokenizer(tokens: SpecialTokens | None = None, words: tuple[str, ...] = VOCABULARY):
    """A WordLevel tokenizer: PaliGemma-style special ids first (pad 0, eos 1, bos 2), then words.

    The newline and the image token are added tokens, matched before pre-tokenisation,
    so the prompt layout ``<image>... <bos> task \\n`` tokenizes exactly as pi0 expects.
    """
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    tokens = tokens or SpecialTokens()
    specials = [tokens.pad, tokens.eos, tokens.bos, '<unk>']
    vocab: dict[str, int] = {}
    for tok in [*specials, *words]:
        vocab.setdefault(tok, len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token='<unk>'))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_tokens([AddedToken(tokens.newline, special=False, normalized=False)])
    tokenizer.add_special_tokens([AddedToken(tokens.image, special=True, normalized=False)])
    if tokens.subtask_end not in tokenizer.get_vocab():
        tokenizer.add_special_tokens([AddedToken(tokens.subtask_end, special=True, normalized=False)])
    return tokenizer


def tiny_pi0_config(
    *,
    vocab_size: int,
    image_token_id: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    expert_hidden: int = 32,
    vision_hidden: int = 32,
    vision_layers: int = 1,
    image_size: int = 32,
    patch_size: int = 8,
    chunk_size: int = 50,
):
    """A PI0Config with the real architecture's shape rules at toy size.

    The action expert reads the backbone's KV cache layer by layer, so it must have
    the same number of layers, KV heads and head_dim as the backbone.
    """
    from transformers import PI0Config

    if image_size % patch_size:
        raise ValueError(f'image size {image_size} is not a multiple of patch size {patch_size}')
    if expert_hidden % 2:
        raise ValueError('expert hidden size must be even (sinusoidal time embedding)')
    return PI0Config(
        vlm_config={
            'model_type': 'paligemma',
            'text_config': {
                'model_type': 'gemma',
                'hidden_size': hidden,
                'num_hidden_layers': layers,
                'intermediate_size': 2 * hidden,
                'num_attention_heads': heads,
                'num_key_value_heads': 1,
                'head_dim': head_dim,
                'vocab_size': vocab_size,
            },
            'vision_config': {
                'model_type': 'siglip_vision_model',
                'hidden_size': vision_hidden,
                'intermediate_size': 2 * vision_hidden,
                'num_hidden_layers': vision_layers,
                'num_attention_heads': 2,
                'patch_size': patch_size,
                'image_size': image_size,
                'vision_use_head': False,
            },
            'projection_dim': hidden,
            'image_token_id': image_token_id,
        },
        dit_config={
            'model_type': 'gemma',
            'hidden_size': expert_hidden,
            'num_hidden_layers': layers,
            'intermediate_size': 2 * expert_hidden,
            'num_attention_heads': heads,
            'num_key_value_heads': 1,
            'head_dim': head_dim,
        },
        chunk_size=chunk_size,
    )


def stats_from_limits(lower: list[float], upper: list[float]) -> FeatureStats:
    """Plausible statistics for an untrained model: centred in the joint range, quantiles at the limits."""
    return FeatureStats(
        mean=[(lo + hi) / 2 for lo, hi in zip(lower, upper, strict=True)],
        std=[(hi - lo) / 4 for lo, hi in zip(lower, upper, strict=True)],
        q01=list(lower),
        q99=list(upper),
    )


def make_tiny_checkpoint(
    out: str | Path,
    *,
    rig: str = 'aloha_sim',
    hidden: int = 64,
    layers: int = 2,
    expert_hidden: int = 32,
    vision_hidden: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    chunk_size: int = 50,
    normalization: str = 'mean_std',
    reasoning: bool = True,
    text_init_std: float = 0.3,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write a random checkpoint for `rig` to `out` and return the directory.

    `text_init_std` re-draws the backbone's projection weights (not its embeddings)
    with that standard deviation. At transformers' default (0.02) the scaled token
    embedding dominates the residual stream and an untrained Gemma just repeats its
    last input token; at ~0.3 it writes varied subtask text, so demos and tests
    exercise reasoning with something more than one repeated token. 0 keeps the default.

    The parameters are keyword-only, one per `make-checkpoint --tiny` option, each with the
    default tests and demos use; they stay separate arguments so a call names only what it changes.
    """
    from bimanual_vla.config import load_rig

    out = _empty_directory(Path(out).expanduser(), force)
    rig_cfg = load_rig(rig)
    if not rig_cfg.cameras:
        raise CheckpointError(f'rig {rig_cfg.name!r} has no cameras; a VLA checkpoint needs at least one')
    joints = [(f'{arm.name}_{j.name}', j.lower, j.upper) for arm in rig_cfg.arms for j in arm.joints]

    tokens = SpecialTokens()
    tokenizer = build_tokenizer(tokens)
    config = tiny_pi0_config(
        vocab_size=tokenizer.get_vocab_size(),
        image_token_id=tokenizer.token_to_id(tokens.image),
        hidden=hidden,
        layers=layers,
        expert_hidden=expert_hidden,
        vision_hidden=vision_hidden,
        image_size=image_size,
        patch_size=patch_size,
        chunk_size=chunk_size,
    )
    if len(joints) > config.max_action_dim:
        raise CheckpointError(f'rig has {len(joints)} joints; pi0 carries at most {config.max_action_dim}')
    model = _random_model(config, seed, text_init_std)

    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.save_pretrained(str(out))
    tokenizer.save(str(out / 'tokenizer.json'))
    stats = stats_from_limits([j[1] for j in joints], [j[2] for j in joints])
    write_metadata(
        out,
        CheckpointMetadata(
            rig=rig_cfg.name,
            joint_names=[j[0] for j in joints],
            camera_names=[c.name for c in rig_cfg.cameras],
            chunk_size=chunk_size,
            control_rate_hz=rig_cfg.control_rate_hz,
            image_size=(image_size, image_size),
            normalization=NormalizationConfig(mode=normalization, state=stats, actions=stats),
            tokens=tokens,
            reasoning=reasoning,
        ),
    )
    return out


def _empty_directory(out: Path, force: bool) -> Path:
    """`out`, refused if it holds anything, unless `force`: then emptied (removed; written again later)."""
    if out.exists() and any(out.iterdir()):
        if not force:
            raise CheckpointError(f'{out}: directory exists and is not empty (use --force to replace it)')
        shutil.rmtree(out)
    return out


def _random_model(config: PI0Config, seed: int, text_init_std: float) -> PI0ForConditionalGeneration:
    """A PI0 model with seeded random weights; see make_tiny_checkpoint for `text_init_std`."""
    import torch
    from transformers import PI0ForConditionalGeneration

    torch.manual_seed(seed)
    model = PI0ForConditionalGeneration(config).eval()
    if text_init_std > 0:
        with torch.no_grad():
            for name, param in model.model.vlm.language_model.named_parameters():
                if param.ndim == 2 and 'embed' not in name:
                    param.normal_(0.0, text_init_std)
    return model
