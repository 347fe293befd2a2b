"""Train or fine-tune a PI0 checkpoint on recorded bags: flow matching on action chunks + subtask text.

One training step, for a batch of cached samples (`bimanual_vla.learning.train_data`):

1. Sequence per sample, laid out exactly as `VLAPolicy` does at run time:
   ``<image> x tokens x cameras, <bos>, task, "\\n"`` (the prefix) followed by the subtask
   tokens and the end marker, right-padded. ``token_type_ids`` are 0 on the prefix and 1 on the
   subtask, so PaliGemma's mask is block-causal: the prefix attends bidirectionally (as pi0 trains
   it), each subtask token only to the prefix and the subtask tokens before it. Without it,
   ``PI0Config``'s bidirectional backbone would let a token read the answer it must predict.
2. The backbone runs once over that sequence (SigLIP for the images) and leaves a KV cache.
   Cross-entropy on its tied LM head (logits = hidden @ embed_tokens.T) at the positions that
   predict the subtask tokens and the end marker (teacher forcing; nothing else is in the loss).
3. Flow matching as in pi0: time t ~ Beta(1.5, 1) scaled to [0.001, 1], noise e ~ N(0, I),
   x_t = t e + (1 - t) a, target velocity u = e - a (transformers' convention: t=1 is noise).
   The action expert attends to prefix + subtask through the cache (the same attention layout as
   inference) and predicts v; the loss is the mean of (v - u)^2 over the rig's joints and the chunk
   steps that are not padding (``actions_is_pad``).
4. loss = flow + subtask_weight * cross-entropy; AdamW, linear warm-up then cosine decay to
   ``min_lr_ratio`` of the peak, gradient-norm clipping.

Randomness is a pure function of (seed, step): the sample order is a per-epoch permutation seeded by
(seed, epoch), the flow noise and times come from a generator seeded by (seed, step). Resuming from a
saved step therefore replays exactly the steps an uninterrupted run would have taken (same losses,
bit for bit on the same machine and thread count).

Output directory layout (a checkpoint `VLAPolicy.load` reads directly):

    OUT/config.json, model.safetensors, tokenizer.json, bimanual_vla.json   the checkpoint
    OUT/train_state/optimizer.safetensors, state.json   AdamW moments + step, config, RNG seed
                                                        (safetensors + JSON: no pickle anywhere, so
                                                        the checkpoint loader's pickle refusal holds)
    OUT/training/log.csv, loss.png, run.json            loss curves and the run's settings
    OUT/training/demonstration_speed.json               how much of the data moves faster than the
                                                        policy node's gate (learning/demo_speed.py)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bimanual_vla.learning.tasks import phrasings_of
from bimanual_vla.learning.train_data import CachedSamples, action_time_offset_s, expert_approach
from bimanual_vla.learning.vocabulary import extend_tokenizer, grow_text_embeddings, missing_words, words_of
from bimanual_vla.policy_node.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    FeatureStats,
    NormalizationConfig,
    SpecialTokens,
    check_directory,
    load_pi0,
    load_tokenizer,
    read_metadata,
    write_metadata,
)
from bimanual_vla.policy_node.normalize import Normalizer

log = logging.getLogger(__name__)

TRAIN_STATE_DIR = 'train_state'
TRAINING_DIR = 'training'
STD_FLOOR = 1e-2  # a joint that never moves in the data must not blow up its normalised value


@dataclass
class ModelShape:
    """A small PI0 built from scratch (``--tiny-config``); see `tiny_checkpoint.tiny_pi0_config`."""

    hidden: int = 128
    layers: int = 3
    heads: int = 2
    head_dim: int = 32
    expert_hidden: int = 64
    vision_hidden: int = 64
    vision_layers: int = 2
    image_size: int = 96
    patch_size: int = 12


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    rig: str = 'aloha_sim'
    init: str | None = None  # an existing checkpoint to fine-tune; else a fresh model of `shape`
    shape: ModelShape = field(default_factory=ModelShape)
    cameras: list[str] | None = None  # default: the rig's cameras (or the init checkpoint's)
    chunk_size: int = 50
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    subtask_weight: float = 1.0
    subtask_lookahead_s: float = 0.0  # train the text on the label this far ahead (see subtask_targets)
    flow_samples: int = 1
    state_dropout: float = 0.0
    start_oversample_s: float = 0.0
    start_oversample_factor: int = 1
    action_source: str = 'commands'  # 'commands' (followers' joint_command) | 'leader' (leader/<arm>/joint_states)
    interventions_weight: float = 1.0  # how often an epoch visits a sample inside a human takeover
    paraphrase: bool = False  # each sample's task said in one of its phrasings (learning/tasks.py), drawn per step
    normalization: str = 'mean_std'
    renormalize: bool = False  # a fine-tune (init) normalises with this data's statistics, not the checkpoint's
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    threads: int = 2
    time_base: str = 'auto'  # each bag's own (bimanual_vla.bags.time_base) unless 'header' / 'receive'
    default_task: str = ''
    cache_dir: str | None = None
    skip_episodes: list[str] = field(default_factory=list)
    keep_failed: bool = False
    crops: dict[str, list[int]] = field(default_factory=dict)  # camera -> x, y, width, height (see preprocess)
    max_task_tokens: int = 48
    progress: bool = True


# --------------------------------------------------------------------------- model and tokenizer


def new_tokenizer(texts: list[str]):
    """The tiny word-level tokenizer, extended with every word of the data's tasks and subtasks."""
    from bimanual_vla.learning.tiny_checkpoint import VOCABULARY, build_tokenizer

    extra = tuple(w for w in words_of(texts) if w not in VOCABULARY)
    return build_tokenizer(SpecialTokens(), VOCABULARY + extra)


def check_tokenizer_covers(tokenizer: Any, texts: list[str], where: str) -> None:
    """Refuse to train text the tokenizer turns into <unk>: the model could never write it back."""
    unk = tokenizer.token_to_id('<unk>')
    if unk is None:
        return
    bad = sorted({t for t in texts if unk in tokenizer.encode(t, add_special_tokens=False).ids})
    if bad:
        raise CheckpointError(f'{where}: tokenizer.json has no token for words in {bad[:5]}')


def new_model(shape: ModelShape, tokenizer: Any, chunk_size: int, seed: int):
    from transformers import PI0ForConditionalGeneration

    from bimanual_vla.learning.tiny_checkpoint import tiny_pi0_config

    config = tiny_pi0_config(
        vocab_size=tokenizer.get_vocab_size(),
        image_token_id=tokenizer.token_to_id(SpecialTokens().image),
        hidden=shape.hidden,
        layers=shape.layers,
        heads=shape.heads,
        head_dim=shape.head_dim,
        expert_hidden=shape.expert_hidden,
        vision_hidden=shape.vision_hidden,
        vision_layers=shape.vision_layers,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        chunk_size=chunk_size,
    )
    torch.manual_seed(seed)
    return PI0ForConditionalGeneration(config)


def compute_stats(values: np.ndarray, mask: np.ndarray | None = None) -> FeatureStats:
    """Per-joint mean/std/q01/q99 over (..., J) values; `mask` (...,) true where a value counts."""
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    if mask is not None:
        flat = flat[~mask.reshape(-1)] if mask.dtype == bool and mask.shape == values.shape[:-1] else flat
    q01, q99 = np.quantile(flat, 0.01, axis=0), np.quantile(flat, 0.99, axis=0)
    std = np.maximum(flat.std(axis=0), STD_FLOOR)
    # quantile mode: keep the [q01, q99] span at least 2 * STD_FLOOR wide, for the same reason
    half = np.maximum((q99 - q01) / 2, STD_FLOOR)
    mid = (q99 + q01) / 2
    return FeatureStats(
        mean=flat.mean(axis=0).tolist(), std=std.tolist(), q01=(mid - half).tolist(), q99=(mid + half).tolist()
    )


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) prefix + subtask + end marker, right-padded
    attention_mask: torch.Tensor  # (B, L) 1 on real tokens
    token_type_ids: torch.Tensor  # (B, L) 0 prefix, 1 subtask (and padding)
    labels: torch.Tensor  # (B, L) next-token targets, -100 where no loss
    pixel_values: torch.Tensor  # (B, n_cam, 3, H, W) in [-1, 1]
    pixel_attention_mask: torch.Tensor  # (B, n_cam) bool
    state: torch.Tensor  # (B, max_state_dim) normalised, zero-padded
    actions: torch.Tensor  # (B, H, max_action_dim) normalised, zero-padded
    action_mask: torch.Tensor  # (B, H, max_action_dim) 1 where the flow loss counts


class BatchMaker:
    """Turns cached samples into model inputs with the checkpoint's layout and normalisation."""

    def __init__(
        self,
        samples: CachedSamples,
        tokenizer: Any,
        metadata: CheckpointMetadata,
        config: Any,
        subtask_lookahead_s: float = 0.0,
        paraphrase: bool = False,
    ) -> None:
        self.samples = samples
        self.subtask_target = subtask_targets(samples, subtask_lookahead_s)
        # the text is not trained where its target lies inside a coached move (an instruction, not a prediction);
        # the action expert still reads the label there, as it reads a coach's words at run time
        self.text_counts = ~coached_targets(samples, subtask_lookahead_s)
        self.metadata = metadata
        self.config = config
        t = metadata.tokens
        vision = config.vlm_config.vision_config
        tokens_per_image = (vision.image_size // vision.patch_size) ** 2
        n_image = tokens_per_image * len(metadata.camera_names)
        self.cam_index = [samples.cameras.index(c) for c in metadata.camera_names]
        self.end_id = tokenizer.token_to_id(t.subtask_end)
        self.pad_id = tokenizer.token_to_id(t.pad)
        self.prompts: list[list[list[int]]] = []  # per task id, the token ids of each way of saying it
        for task in samples.tasks:
            alternatives = []
            for text in task_phrasings(task, paraphrase):
                ids = tokenizer.encode(f'{t.image * n_image}{t.bos}{text}{t.newline}', add_special_tokens=False).ids
                if len(ids) - n_image > metadata.max_task_tokens:
                    raise ValueError(f'task {text!r} is longer than max_task_tokens ({metadata.max_task_tokens})')
                alternatives.append(ids)
            self.prompts.append(alternatives)
        self.subtask_ids = [
            [*tokenizer.encode(s, add_special_tokens=False).ids, self.end_id] if s else [] for s in samples.subtasks
        ]
        norm = metadata.normalization
        self.state_norm = Normalizer(norm.state, norm.mode)
        self.action_norm = Normalizer(norm.actions, norm.mode)
        order = [samples.joint_names.index(j) for j in metadata.joint_names]
        self.joint_order = np.asarray(order)

    def __call__(self, indices: np.ndarray, rng: np.random.Generator | None = None) -> Batch:
        """The batch of samples `indices`; `rng` draws each sample's phrasing of its task (None: the first)."""
        s = self.samples
        b = len(indices)
        seqs, types, label_rows = [], [], []
        for i in indices:
            alternatives = self.prompts[s.task_id[i]]
            prompt = alternatives[int(rng.integers(len(alternatives)))] if rng is not None else alternatives[0]
            sub = self.subtask_ids[self.subtask_target[i]] if self.metadata.reasoning else []
            seqs.append(prompt + sub)
            types.append([0] * len(prompt) + [1] * len(sub))
            # position p predicts token p+1: the last prompt token predicts the first subtask token
            targets = sub if self.text_counts[i] else [-100] * len(sub)
            label_rows.append([-100] * (len(prompt) - 1) + targets + [-100])
        length = max(len(q) for q in seqs)
        ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, length), dtype=torch.long)
        token_type = torch.ones((b, length), dtype=torch.long)
        labels = torch.full((b, length), -100, dtype=torch.long)
        for r, (q, ty, lab) in enumerate(zip(seqs, types, label_rows, strict=True)):
            ids[r, : len(q)] = torch.tensor(q)
            mask[r, : len(q)] = 1
            token_type[r, : len(ty)] = torch.tensor(ty)
            labels[r, : len(lab)] = torch.tensor(lab)
        images = s.images(indices)[:, self.cam_index]  # (B, n_cam, H, W, 3) uint8
        pixels = torch.from_numpy(images).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        width = self.config.max_action_dim
        n = len(self.joint_order)
        state = np.zeros((b, self.config.max_state_dim), dtype=np.float32)
        state[:, :n] = self.state_norm.normalize(s.state[indices][:, self.joint_order])
        actions = np.zeros((b, s.chunk_size, width), dtype=np.float32)
        actions[:, :, :n] = self.action_norm.normalize(s.actions[indices][:, :, self.joint_order])
        action_mask = np.zeros_like(actions)
        action_mask[:, :, :n] = (~s.actions_is_pad[indices])[:, :, None]
        return Batch(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=token_type,
            labels=labels,
            pixel_values=pixels,
            pixel_attention_mask=torch.ones((b, len(self.cam_index)), dtype=torch.bool),
            state=torch.from_numpy(state),
            actions=torch.from_numpy(actions),
            action_mask=torch.from_numpy(action_mask),
        )


def task_phrasings(task: str, paraphrase: bool) -> tuple[str, ...]:
    """The ways a sample's task is said in training: its training phrasings with `paraphrase`, else itself."""
    return phrasings_of(task) if paraphrase else (task,)


def _lookahead_index(samples: CachedSamples, lookahead_s: float) -> np.ndarray:
    """Per sample, the index `lookahead_s` later in the same episode (its last sample near the end)."""
    n = len(samples)
    if lookahead_s <= 0 or n == 0:
        return np.arange(n)
    shift = int(round(lookahead_s * float(samples.info.get('rate_hz', 50.0))))
    last = np.r_[samples.episode[1:] != samples.episode[:-1], True]
    ends = np.minimum.accumulate(np.where(last, np.arange(n), n)[::-1])[::-1]  # last index of each episode
    return np.minimum(np.arange(n) + shift, ends)


def coached_targets(samples: CachedSamples, lookahead_s: float) -> np.ndarray:
    """Per sample, whether the label its text is trained on (`subtask_targets`) is inside a coached move."""
    return samples.coached[_lookahead_index(samples, lookahead_s)]


def subtask_targets(samples: CachedSamples, lookahead_s: float) -> np.ndarray:
    """Per sample, the subtask id the text is trained on: the label `lookahead_s` later in the same episode.

    The policy writes its subtask once per chunk and the chunk then runs for the execution horizon,
    so the text is in force from (latency) to (latency + horizon) after its observation. Training on
    the label at about the middle of that window (e.g. 0.3 s for a 25-step horizon at 50 Hz) makes the
    text name what the chunk is about to do rather than what the observation shows being done.
    Near an episode's end the episode's last label is used.
    """
    return samples.subtask_id[_lookahead_index(samples, lookahead_s)]


# --------------------------------------------------------------------------- loss


def sample_time(config: Any, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """pi0's flow time: Beta(1.5, 1) scaled to [offset, offset + scale] (0.001..1 by default)."""
    alpha = torch.tensor(float(config.time_sampling_beta_alpha))
    beta = torch.tensor(float(config.time_sampling_beta_beta))
    # torch.distributions.Beta has no generator argument: draw it from two Gammas with ours.
    x = torch._standard_gamma(alpha.expand(batch_size).contiguous(), generator=generator)
    y = torch._standard_gamma(beta.expand(batch_size).contiguous(), generator=generator)
    return (x / (x + y) * config.time_sampling_scale + config.time_sampling_offset).float()


def compute_loss(
    model: Any, batch: Batch, generator: torch.Generator, subtask_weight: float = 1.0, flow_samples: int = 1
) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-matching loss on the action chunk + cross-entropy on the subtask tokens (see module doc).

    `flow_samples` > 1 draws several (time, noise) pairs per sample on the same prefix cache: the
    backbone (most of the cost) runs once, the cheap action expert once per draw.
    """
    vlm = model.model.vlm
    embeds = model.model.embed_prefix(batch.input_ids, batch.pixel_values, batch.pixel_attention_mask)
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = vlm(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        position_ids=position_ids,
        token_type_ids=batch.token_type_ids,
        use_cache=True,
    )
    metrics: dict[str, float] = {}
    ce = torch.zeros(())
    has_text = bool((batch.labels != -100).any())
    if has_text:
        rows, cols = torch.nonzero(batch.labels != -100, as_tuple=True)
        hidden = out.last_hidden_state[rows, cols]
        logits = hidden @ vlm.get_input_embeddings().weight.T
        targets = batch.labels[rows, cols]
        ce = F.cross_entropy(logits.float(), targets)
        metrics['subtask_ce'] = float(ce.detach())
        metrics['subtask_token_acc'] = float((logits.argmax(-1) == targets).float().mean())

    bsz = batch.state.shape[0]
    cache = out.past_key_values
    prefix_length = cache.get_seq_length()
    flows = []
    for _ in range(max(1, flow_samples)):
        t = sample_time(model.config, bsz, generator)
        noise = torch.randn(batch.actions.shape, generator=generator)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * batch.actions
        target = noise - batch.actions
        pred = model(
            state=batch.state, noise=x_t, timestep=t, attention_mask=batch.attention_mask, past_key_values=cache
        ).logits
        cache.crop(
            prefix_length - cache.get_seq_length()
        )  # drop the expert's keys/values: the next draw sees the prefix only
        sq = (pred.float() - target) ** 2 * batch.action_mask
        flows.append(sq.sum() / batch.action_mask.sum().clamp(min=1))
    flow = torch.stack(flows).mean()
    metrics['flow'] = float(flow.detach())
    loss = flow + subtask_weight * ce if has_text else flow
    metrics['loss'] = float(loss.detach())
    return loss, metrics


# --------------------------------------------------------------------------- schedule and state


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr` over `warmup` steps, then cosine decay to `min_lr_ratio * lr` at `steps`."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Samples of `step`: consecutive slices of per-epoch permutations (a pure function of step)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def sample_table(samples: CachedSamples, cfg: TrainConfig) -> np.ndarray:
    """Sample indices one epoch visits: each sample once, the first `start_oversample_s` seconds of
    every episode `start_oversample_factor` times (where the arms still rest, only the cameras say
    where the object is: those samples teach the model to look), and each sample inside a recorded
    human takeover `interventions_weight` times in expectation: the whole part of the weight every
    epoch, the fractional part for a share of them drawn with the run's seed (0 leaves them out).
    Visiting W times is weighting the loss by W, with the batches' statistics unchanged."""
    table = np.arange(len(samples), dtype=np.int64)
    weight = float(cfg.interventions_weight)
    if weight != 1.0 and samples.intervention is not None and samples.intervention.any():
        inside = np.flatnonzero(samples.intervention)
        whole, frac = int(weight), weight - int(weight)
        extra = np.random.default_rng([cfg.seed, 28]).random(len(inside)) < frac
        visits = np.full(len(samples), 1, dtype=np.int64)
        visits[inside] = whole + extra
        table = np.repeat(table, visits)
    if cfg.start_oversample_factor > 1 and cfg.start_oversample_s > 0:
        rate = float(samples.info.get('rate_hz', 50.0))
        first = np.r_[True, samples.episode[1:] != samples.episode[:-1]]
        starts = np.maximum.accumulate(np.where(first, np.arange(len(samples)), 0))
        early = np.flatnonzero(np.arange(len(samples)) - starts < cfg.start_oversample_s * rate)
        table = np.concatenate([table] + [early] * (cfg.start_oversample_factor - 1))
    return table


def step_generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) % (2**63))
    return g


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """AdamW state as safetensors (tensors) + JSON (hyper-parameters): no pickle."""
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors = {}
    for idx, st in sd['state'].items():
        for key, value in st.items():
            tensors[f'{idx}.{key}'] = (
                value.detach().clone().contiguous() if torch.is_tensor(value) else torch.tensor(value)
            )
    save_file(tensors, str(path / 'optimizer.safetensors'))
    (path / 'optimizer_groups.json').write_text(json.dumps(sd['param_groups'], indent=1) + '\n')


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path / 'optimizer.safetensors'))
    groups = json.loads((path / 'optimizer_groups.json').read_text())
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split('.', 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({'state': state, 'param_groups': groups})


def _atomic_dir_write(target: Path, write) -> None:
    tmp = target.with_name(target.name + '.tmp')
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(target.name + '.old')
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def save_checkpoint(out: Path, model: Any, tokenizer: Any, metadata: CheckpointMetadata) -> None:
    """The four files `VLAPolicy.load` reads, each written to a temporary name first."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    staging = out / '.saving'
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save(str(staging / 'tokenizer.json'))
    write_metadata(staging, metadata)
    for name in ('config.json', 'model.safetensors', 'tokenizer.json', 'bimanual_vla.json'):
        os.replace(staging / name, out / name)
    shutil.rmtree(staging)


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    out: str
    steps: int
    final_loss: float
    samples_per_s: float
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _ModelStart:
    """What the model a run starts from fixes: cameras, crops, tokens, and what it was trained on before."""

    cameras: list[str]
    crops: dict[str, tuple[int, ...]]
    tokens: SpecialTokens
    reasoning: bool
    prior_tasks: list[str] = field(default_factory=list)
    prior_subtasks: list[str] = field(default_factory=list)
    prior_approaches: list[str | None] = field(default_factory=list)
    normalization: NormalizationConfig | None = None  # the initial checkpoint's, in its joint order
    joint_names: list[str] = field(default_factory=list)  # the initial checkpoint's joint order


class Trainer:
    """Holds model, optimizer and data for a run; `run()` trains to `cfg.steps`, saving along the way."""

    def __init__(self, cfg: TrainConfig, samples: CachedSamples, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out).expanduser()
        self.samples = samples
        torch.set_num_threads(max(1, cfg.threads))
        self.step = 0
        self.new_words: list[str] = []  # words a fine-tune added to the initial checkpoint's vocabulary
        state_dir = self.out / TRAIN_STATE_DIR
        if resume:
            if not (state_dir / 'state.json').is_file():
                raise FileNotFoundError(f'{state_dir}: no training state to resume from')
            source = self.out
        else:
            source = Path(cfg.init).expanduser() if cfg.init else None
        start = self._load_or_create_model(source)
        missing = [c for c in start.cameras if c not in samples.cameras]
        if missing:
            raise ValueError(f'the data has no camera(s) {missing}; it has {samples.cameras}')
        if self.model.config.chunk_size != samples.chunk_size:
            raise ValueError(f'model chunk_size {self.model.config.chunk_size} != data chunk {samples.chunk_size}')
        self.metadata = read_metadata(self.out) if resume else self._new_metadata(start)
        self.model.train()
        self.model.requires_grad_(True)
        self.batches = BatchMaker(
            samples,
            self.tokenizer,
            self.metadata,
            self.model.config,
            subtask_lookahead_s=cfg.subtask_lookahead_s,
            paraphrase=cfg.paraphrase,
        )
        self.optimizer = self._new_optimizer()
        self.index_table = sample_table(samples, cfg)
        self.history: list[dict[str, float]] = []
        if resume:
            load_optimizer(self.optimizer, state_dir)
            state = json.loads((state_dir / 'state.json').read_text())
            self.step = int(state['step'])
            self.history = list(state.get('history', []))

    def _task_texts(self) -> list[str]:
        """Every prompt this run trains on: the data's tasks, and their phrasings with `paraphrase`."""
        return list(dict.fromkeys(t for task in self.samples.tasks for t in task_phrasings(task, self.cfg.paraphrase)))

    def _load_or_create_model(self, source: Path | None) -> _ModelStart:
        """Set self.model and self.tokenizer from checkpoint `source`, or new ones when it is None."""
        cfg, samples = self.cfg, self.samples
        texts = self._task_texts() + [s for s in samples.subtasks if s]
        if source is None:
            self.tokenizer = new_tokenizer(texts)
            self.model = new_model(cfg.shape, self.tokenizer, cfg.chunk_size, cfg.seed)
            return _ModelStart(
                cameras=list(cfg.cameras or samples.cameras),
                crops={c: tuple(b) for c, b in cfg.crops.items()},
                tokens=SpecialTokens(),
                reasoning=any(samples.subtasks),
            )
        directory = check_directory(source)
        self.tokenizer = load_tokenizer(directory)
        init_meta = read_metadata(directory)
        self.model = load_pi0(directory)
        new_words = missing_words(self.tokenizer, texts)
        if new_words:  # a second task, other phrasings: grow the vocabulary (every old id keeps its word)
            self.tokenizer = extend_tokenizer(self.tokenizer, new_words)
            grow_text_embeddings(self.model, self.tokenizer.get_vocab_size(with_added_tokens=True))
        self.new_words = new_words
        check_tokenizer_covers(self.tokenizer, texts, str(directory))
        crops = {c: tuple(b) for c, b in init_meta.image_crops.items()}
        if cfg.crops and {c: tuple(b) for c, b in cfg.crops.items()} != crops:
            raise ValueError(f'--crop {cfg.crops} differs from the crops {crops} {directory} was trained with')
        return _ModelStart(
            cameras=list(init_meta.camera_names),
            crops=crops,
            tokens=init_meta.tokens,
            reasoning=init_meta.reasoning or any(samples.subtasks),
            prior_tasks=list(init_meta.tasks),
            prior_subtasks=list(init_meta.subtasks),
            prior_approaches=[init_meta.expert_approach],
            normalization=init_meta.normalization,
            joint_names=list(init_meta.joint_names),
        )

    def _new_metadata(self, start: _ModelStart) -> CheckpointMetadata:
        """The metadata of a run that does not resume: this data's statistics, timing and labels."""
        cfg, samples = self.cfg, self.samples
        vs = self.model.config.vlm_config.vision_config.image_size
        # a fine-tune keeps a single approach only if its initial checkpoint learned the same one
        approach = expert_approach(cfg.data)
        approach = approach if all(p == approach for p in start.prior_approaches) else None
        new_tasks = [t for t in samples.tasks if t not in start.prior_tasks]
        reusable = start.normalization is not None and not cfg.renormalize and start.joint_names == samples.joint_names
        if reusable and not new_tasks:
            # A fine-tune on the tasks it knows keeps the statistics its weights were trained with: a few corrected
            # episodes give other means and spreads, and re-normalising with them moves every input and output the
            # model knows (on two takeover episodes the flow loss at step 10 was 1.38 against 0.91 with the
            # checkpoint's statistics: docs/experiments/2026-12-07-takeover-finetune-aloha.md). A new task moves the
            # arms elsewhere and its actions lie many spreads out under the old statistics (adding insertion to the
            # cube checkpoint: flow loss 22.7 at step 70 against 0.61 re-normalised,
            # docs/experiments/2026-12-08-multi-task-normalisation.md).
            norm = start.normalization
        else:
            if reusable:  # the new tasks alone make it recompute
                log.warning("normalising with this data's statistics: task(s) %s are new to %s", new_tasks, cfg.init)
            norm = NormalizationConfig(
                mode=cfg.normalization,
                state=compute_stats(samples.state),
                actions=compute_stats(samples.actions, samples.actions_is_pad),
            )
        rate_hz = float(samples.info.get('rate_hz', 50.0))
        return CheckpointMetadata(
            rig=cfg.rig,
            joint_names=list(samples.joint_names),
            camera_names=start.cameras,
            chunk_size=samples.chunk_size,
            control_rate_hz=rate_hz,
            image_size=(vs, vs),
            image_crops=start.crops,
            normalization=norm,
            tokens=start.tokens,
            reasoning=start.reasoning,
            max_task_tokens=cfg.max_task_tokens,
            # a fine-tune keeps what its initial checkpoint was trained on and adds this data's
            tasks=list(dict.fromkeys([*start.prior_tasks, *self._task_texts()])),
            subtasks=list(dict.fromkeys([*start.prior_subtasks, *(t for t in samples.subtasks if t)])),
            action_time_offset_s=action_time_offset_s(cfg.data, rate_hz),
            expert_approach=approach,
        )

    def _new_optimizer(self) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices only (not on norms, embeddings or biases)."""
        cfg = self.cfg
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or 'norm' in name or 'embed' in name else decay).append(p)
        return torch.optim.AdamW(
            [{'params': decay, 'weight_decay': cfg.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
            eps=1e-8,
        )

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        lr = learning_rate(self.step, cfg)
        for group in self.optimizer.param_groups:
            group['lr'] = lr
        picks = batch_indices(self.step, len(self.index_table), cfg.batch_size, cfg.seed)
        phrasing = np.random.default_rng([cfg.seed, self.step, 30]) if cfg.paraphrase else None
        batch = self.batches(self.index_table[picks], phrasing)
        generator = step_generator(cfg.seed, self.step)
        if cfg.state_dropout > 0:
            # Zero (= the data mean, after normalisation) the state of some samples, so the model must
            # read the scene from the cameras instead of extrapolating its own motion from proprioception.
            keep = torch.rand(batch.state.shape[0], generator=generator) >= cfg.state_dropout
            batch.state = batch.state * keep[:, None].float()
        loss, metrics = compute_loss(self.model, batch, generator, cfg.subtask_weight, cfg.flow_samples)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'step {self.step}: loss is {float(loss)}; lower --lr or check the data')
        self.optimizer.step()
        metrics.update(step=self.step, lr=lr, grad_norm=float(norm))
        self.step += 1
        return metrics

    def save(self) -> None:
        cfg = self.cfg
        self.model.eval()
        save_checkpoint(self.out, self.model, self.tokenizer, self.metadata)
        self.model.train()

        def write(tmp: Path) -> None:
            save_optimizer(self.optimizer, tmp)
            state = {
                'step': self.step,
                'config': _config_json(cfg),
                'cache': str(self.samples.directory),
                'history': self.history,
            }
            (tmp / 'state.json').write_text(json.dumps(state) + '\n')

        _atomic_dir_write(self.out / TRAIN_STATE_DIR, write)
        self.write_curves()

    def write_curves(self) -> None:
        if not self.history:
            return
        d = self.out / TRAINING_DIR
        d.mkdir(parents=True, exist_ok=True)
        keys = sorted({k for h in self.history for k in h})
        with open(d / 'log.csv', 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        plot_curves(self.history, d / 'loss.png')

    def run(self, on_log=None) -> TrainResult:
        cfg = self.cfg
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit='step', desc='train', dynamic_ncols=True)
        started = time.monotonic()
        first_step = self.step
        window: list[dict[str, float]] = []
        last = {}
        while self.step < cfg.steps:
            last = self.train_step()
            window.append(last)
            if len(window) >= cfg.log_every or self.step == cfg.steps:
                elapsed = time.monotonic() - started
                entry = {k: float(np.mean([m[k] for m in window if k in m])) for k in window[-1]}
                entry['step'] = self.step
                entry['samples_per_s'] = (self.step - first_step) * cfg.batch_size / max(elapsed, 1e-9)
                entry['wall_s'] = elapsed
                self.history.append(entry)
                window = []
                if bar is not None:
                    bar.set_postfix(
                        loss=f'{entry["loss"]:.4f}',
                        flow=f'{entry["flow"]:.4f}',
                        ce=f'{entry.get("subtask_ce", 0):.3f}',
                        sps=f'{entry["samples_per_s"]:.1f}',
                    )
                if on_log is not None:
                    on_log(entry)
            if bar is not None:
                bar.update(1)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
        if bar is not None:
            bar.close()
        self.save()
        wall = time.monotonic() - started
        return TrainResult(
            out=str(self.out),
            steps=self.step,
            final_loss=float(last.get('loss', float('nan'))),
            samples_per_s=(self.step - first_step) * cfg.batch_size / max(wall, 1e-9),
            wall_s=wall,
            history=self.history,
        )


def _config_json(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def config_from_json(data: dict[str, Any]) -> TrainConfig:
    data = dict(data)  # runs saved before a field existed take its default
    data['shape'] = ModelShape(**data.get('shape', {}))
    return TrainConfig(**data)


def plot_curves(history: list[dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    steps = [h['step'] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [h['loss'] for h in history], label='total')
    axes[0].plot(steps, [h['flow'] for h in history], label='flow matching')
    if any('subtask_ce' in h for h in history):
        axes[0].plot(steps, [h.get('subtask_ce', np.nan) for h in history], label='subtask cross-entropy')
    axes[0].set_yscale('log')
    axes[0].set_xlabel('step')
    axes[0].set_title('loss')
    axes[0].legend()
    if any('subtask_token_acc' in h for h in history):
        axes[1].plot(steps, [h.get('subtask_token_acc', np.nan) for h in history])
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title('subtask token accuracy (teacher forcing)')
    axes[1].set_xlabel('step')
    axes[2].plot(steps, [h['lr'] for h in history])
    axes[2].set_title('learning rate')
    axes[2].set_xlabel('step')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
