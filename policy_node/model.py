"""The VLA policy: PI0 (transformers) + pi0.5-style subtask reasoning + guided flow sampling.

One inference, for one observation:

1. preprocess: images resized with padding to the model size and scaled to [-1, 1]
   (`bimanual_vla.policy_node.preprocess`), state normalised and zero-padded to pi0's 32 dims,
   prompt laid out as PI0Processor does: ``<image> x tokens_per_image x cameras,
   <bos>, task, "\\n"``.
2. prefix: SigLIP + the PaliGemma backbone run once over images + task and leave a
   KV cache (bidirectional attention inside the prefix, as pi0 trains it).
3. reasoning: the backbone greedily decodes a subtask on that cache with its tied
   LM head (logits = hidden @ embed_tokens.weight.T) until the end marker or the
   token budget; each token extends the cache, so the subtask is causal while the
   prefix stays bidirectional. Decoding drafts and verifies (`SubtaskDrafts`): a
   subtask the model wrote before that continues the tokens so far is fed in one
   forward pass and kept up to the first token greedy decoding would not have
   chosen, so the text is exactly greedy's at a fraction of the passes (a robot
   names the same few subtasks again and again). A coaching override is tokenized
   and appended instead; a cached subtask is re-appended without decoding.
4. flow: the action expert attends to prefix + subtask and integrates the
   flow-matching ODE with Euler steps from noise (t=1) to actions (t=0). The cache
   is computed once and cropped back after every step, never recomputed.
   With a `ChunkGuide` every step adds real-time-chunking guidance (Black et al.
   2025): the new chunk is inpainted to agree with actions already committed.
5. actions are sliced to the rig's joints, un-normalised, checked to be finite.

With no subtask tokens, steps 2 and 4 perform exactly the operations of
`PI0ForConditionalGeneration.sample_actions`, which a test checks numerically.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bimanual_vla.policy_node.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    check_directory,
    load_pi0,
    load_tokenizer,
)
from bimanual_vla.policy_node.checkpoint import read_metadata as _read_metadata
from bimanual_vla.policy_node.normalize import Normalizer, pad_last
from bimanual_vla.policy_node.preprocess import ObservationError, images_to_model

log = logging.getLogger(__name__)

__all__ = [
    'ChunkGuide',
    'InferenceResult',
    'NonFiniteActionError',
    'Observation',
    'ObservationError',
    'SubtaskDrafts',
    'VLAPolicy',
    'rtc_guidance_weight',
]


class NonFiniteActionError(RuntimeError):
    """The model produced NaN or Inf actions; they are never returned."""


@dataclass
class Observation:
    images: dict[str, np.ndarray]  # camera name -> HxWx3 uint8 RGB, any size
    state: np.ndarray  # (n_joints,) rig units, in VLAPolicy.joint_names order
    task: str
    stamp: float = 0.0  # seconds (ROS time the chunk's first action belongs to), carried through


RTC_JACOBIANS = ('exact', 'identity')


@dataclass
class ChunkGuide:
    """Real-time chunking: committed actions the new chunk must agree with, and their soft mask.

    actions[i] is the committed action for new-chunk step i (rig units, joint_names order);
    weights[i] in [0, 1]: 1 for the frozen steps, decaying over the rest of the overlap, 0 beyond
    (`bimanual_vla.policy_node.chunking.soft_mask` computes the paper's schedule).
    """

    actions: np.ndarray  # (k, n_joints)
    weights: np.ndarray  # (k,)
    max_guidance: float = 5.0  # beta: cap on the guidance weight
    # 'exact': the paper's vector-Jacobian product through the action expert (a backward pass per flow
    # step); 'identity': that Jacobian taken as the identity, a forward pass only (see VLAPolicy.sample)
    jacobian: str = 'exact'


@dataclass
class InferenceResult:
    actions: np.ndarray  # (chunk_size, n_joints) float64, rig units
    subtask: str  # the subtask text the action expert attended to ('' if none)
    subtask_source: str  # 'model' | 'override' | 'cached' | 'disabled'
    timings_ms: dict[str, float] = field(default_factory=dict)
    stamp: float = 0.0  # the observation's stamp
    subtask_token_ids: list[int] = field(default_factory=list)


def rtc_guidance_weight(tau: float, max_guidance: float) -> float:
    """min(beta, (1 - tau) / (tau * r_tau^2)) with r_tau^2 = (1-tau)^2 / (tau^2 + (1-tau)^2).

    tau is the paper's flow time (0 = noise, 1 = data); it is 1 - t in transformers' convention.
    The unclipped weight is infinite at tau = 0, hence the cap.
    """
    if tau <= 0.0:
        return float(max_guidance)
    if tau >= 1.0:
        return 0.0
    return float(min(max_guidance, (tau * tau + (1.0 - tau) ** 2) / (tau * (1.0 - tau))))


@dataclass
class _Prepared:
    input_ids: torch.Tensor  # (1, L) long
    attention_mask: torch.Tensor  # (1, L) long
    pixel_values: torch.Tensor  # (1, n_cam, 3, H, W)
    pixel_attention_mask: torch.Tensor  # (1, n_cam) bool
    state: torch.Tensor  # (1, max_state_dim)


class SubtaskDrafts:
    """The subtasks (token ids, end marker last) a policy has written, in order of last use, bounded.

    A robot doing a task names a handful of subtasks over and over, so the ids decoded so far
    almost always continue as one of them; `VLAPolicy.decode_subtask` feeds that continuation as
    a draft and keeps what greedy decoding confirms. Bounded (`capacity`, least recently used
    dropped) so an eight-hour run does not grow it.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._recent: dict[tuple[int, ...], None] = {}

    def __len__(self) -> int:
        return len(self._recent)

    def add(self, ids: list[int]) -> None:
        key = tuple(ids)
        self._recent.pop(key, None)
        self._recent[key] = None  # newest last
        while len(self._recent) > self.capacity:
            del self._recent[next(iter(self._recent))]

    def continuation(self, prefix: list[int], end: int) -> list[int]:
        """The rest of the most recent subtask that starts with `prefix` (end marker included), or []."""
        n = len(prefix)
        for ids in reversed(self._recent):
            if len(ids) > n and list(ids[:n]) == prefix and end not in ids[:n]:
                return list(ids[n:])
        return []


class VLAPolicy:
    """A loaded checkpoint, ready to turn observations into action chunks. Not thread-safe:
    call `infer` from one thread (the node's inference thread)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        metadata: CheckpointMetadata,
        *,
        device: str = 'cpu',
        num_steps: int = 10,
        max_subtask_tokens: int = 16,
        directory: Path | None = None,
    ) -> None:
        if num_steps < 1:
            raise ValueError(f'num_steps must be >= 1, got {num_steps}')
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.device = torch.device(device)
        self.num_steps = num_steps
        self.max_subtask_tokens = max_subtask_tokens
        self.directory = directory
        self.config = model.config
        self.dtype = next(model.parameters()).dtype
        self.joint_names: list[str] = list(metadata.joint_names)
        self.camera_names: list[str] = list(metadata.camera_names)
        self.chunk_size: int = metadata.chunk_size
        self.control_rate_hz: float = metadata.control_rate_hz
        self.image_size: tuple[int, int] = tuple(metadata.image_size)
        self.image_crops = dict(metadata.image_crops)
        self.reasoning_supported: bool = metadata.reasoning
        norm = metadata.normalization
        self.state_norm = Normalizer(norm.state, norm.mode)
        self.action_norm = Normalizer(norm.actions, norm.mode)
        self._check_consistency()
        self.tokens_per_image = (self.image_size[0] // self._vision.patch_size) * (
            self.image_size[1] // self._vision.patch_size
        )
        self._token_ids = self._resolve_tokens()
        self._prompt_cache: tuple[str, list[int]] | None = None
        self._cached_subtask: tuple[str, str, list[int]] | None = None  # (task, text, ids)
        self.drafts = SubtaskDrafts()
        self.last_decode_passes = 0  # forward passes the last decode_subtask took (diagnostics, tests)
        for text in metadata.subtasks:  # the labels it was trained on: drafts from the first decode
            self.drafts.add(self.subtask_ids(text))
        self._generator = torch.Generator(device='cpu')
        self._generator.seed()

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        checkpoint_dir: str | Path,
        *,
        device: str = 'cpu',
        num_steps: int = 10,
        max_subtask_tokens: int = 16,
        rig_joint_names: list[str] | None = None,
        dtype: str = 'float32',
    ) -> VLAPolicy:
        """Load a checkpoint directory offline from safetensors; see `bimanual_vla.policy_node.checkpoint`.

        With `rig_joint_names`, refuse a checkpoint trained on other joints. `dtype`
        ('float32' | 'bfloat16' | 'float16') is the compute precision; float32 on CPU.
        """
        if dtype not in ('float32', 'bfloat16', 'float16'):
            raise ValueError(f'dtype must be float32, bfloat16 or float16, got {dtype!r}')
        directory = check_directory(checkpoint_dir)
        metadata = _read_metadata(directory)
        if rig_joint_names is not None:
            check_joint_names(metadata.joint_names, rig_joint_names, directory)
        tokenizer = load_tokenizer(directory)
        model = load_pi0(directory, device=device, dtype=getattr(torch, dtype))
        model.requires_grad_(False)  # inference only; RTC differentiates w.r.t. the noisy actions alone
        return cls(
            model,
            tokenizer,
            metadata,
            device=device,
            num_steps=num_steps,
            max_subtask_tokens=max_subtask_tokens,
            directory=directory,
        )

    @property
    def _vision(self) -> Any:
        return self.config.vlm_config.vision_config

    def _check_consistency(self) -> None:
        where = self.directory or 'checkpoint'
        cfg = self.config
        if self.chunk_size != cfg.chunk_size:
            raise CheckpointError(
                f'{where}: bimanual_vla.json chunk_size {self.chunk_size} != config.json {cfg.chunk_size}'
            )
        n = len(self.joint_names)
        if n > cfg.max_action_dim or n > cfg.max_state_dim:
            raise CheckpointError(f'{where}: {n} joints exceed the model width {cfg.max_action_dim}')
        vs = self._vision.image_size
        if tuple(self.image_size) != (vs, vs):
            raise CheckpointError(f'{where}: image_size {list(self.image_size)} != vision config {vs}x{vs}')

    def _resolve_tokens(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        for role, text in self.metadata.tokens.model_dump().items():
            tid = self.tokenizer.token_to_id(text)
            if tid is None:
                raise CheckpointError(f'{self.directory}: token {role}={text!r} is not in tokenizer.json')
            ids[role] = tid
        image_id = self.config.vlm_config.image_token_id
        if ids['image'] != image_id:
            raise CheckpointError(
                f'{self.directory}: tokenizer maps {self.metadata.tokens.image!r} to {ids["image"]} but the model '
                f'expects image_token_id {image_id}'
            )
        return ids

    def check_joints(self, rig_joint_names: list[str]) -> None:
        check_joint_names(self.joint_names, rig_joint_names, self.directory)

    def clear_subtask(self) -> None:
        """Forget the last decoded subtask (the next `decode_subtask=False` call runs without one)."""
        self._cached_subtask = None

    def seed(self, seed: int) -> None:
        """Make the noise of subsequent `infer` calls reproducible."""
        self._generator.manual_seed(seed)

    # ------------------------------------------------------------- preprocess

    def prompt_ids(self, task: str) -> list[int]:
        """Token ids of ``<image>*n <bos> task \\n`` exactly as PI0Processor lays them out."""
        if self._prompt_cache is not None and self._prompt_cache[0] == task:
            return self._prompt_cache[1]
        t = self.metadata.tokens
        n_image = self.tokens_per_image * len(self.camera_names)
        ids = self.tokenizer.encode(f'{t.image * n_image}{t.bos}{task}{t.newline}', add_special_tokens=False).ids
        text_len = len(ids) - n_image
        if text_len > self.metadata.max_task_tokens:
            raise ObservationError(
                f'task text is {text_len} tokens, more than the checkpoint allows ({self.metadata.max_task_tokens})'
            )
        self._prompt_cache = (task, ids)
        return ids

    def prepare_state(self, state: np.ndarray) -> np.ndarray:
        """Rig-unit state -> normalised, padded float32 (max_state_dim,). Refuses bad values."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (len(self.joint_names),):
            raise ObservationError(
                f'state has shape {state.shape}, expected ({len(self.joint_names)},) in order {self.joint_names}'
            )
        if not np.all(np.isfinite(state)):
            bad = [n for n, v in zip(self.joint_names, state, strict=True) if not math.isfinite(v)]
            raise ObservationError(f'state is not finite for joints {bad}')
        return pad_last(self.state_norm.normalize(state), self.config.max_state_dim).astype(np.float32)

    def prepare(self, obs: Observation) -> _Prepared:
        pixels = images_to_model(obs.images, self.camera_names, self.image_size, self.image_crops)
        state = self.prepare_state(obs.state)
        if not isinstance(obs.task, str):
            raise ObservationError(f'task must be a string, got {type(obs.task).__name__}')
        ids = torch.tensor([self.prompt_ids(obs.task)], dtype=torch.long, device=self.device)
        return _Prepared(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=torch.from_numpy(pixels)[None].to(self.device, self.dtype),
            pixel_attention_mask=torch.ones((1, len(self.camera_names)), dtype=torch.bool, device=self.device),
            state=torch.from_numpy(state)[None].to(self.device, self.dtype),
        )

    # ------------------------------------------------------------------ model

    @torch.no_grad()
    def encode_prefix(self, prep: _Prepared) -> tuple[Any, torch.Tensor]:
        """Run SigLIP + backbone over images and task: (KV cache, hidden state of the last prefix token)."""
        mask = prep.attention_mask
        position_ids = mask.cumsum(-1) - 1
        embeds = self.model.model.embed_prefix(prep.input_ids, prep.pixel_values, prep.pixel_attention_mask)
        out = self.model.model.vlm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            token_type_ids=torch.zeros_like(embeds)[:, :, 0],
            use_cache=True,
        )
        return out.past_key_values, out.last_hidden_state[:, -1]

    @torch.no_grad()
    def _feed_tokens(self, cache: Any, mask: torch.Tensor, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Append text tokens to the cache in one pass: (mask, hidden state after each token).

        With a cache present PaliGemma masks new tokens causally (each sees the prefix and the
        tokens before it), so one pass over n tokens gives the hidden states n single-token passes
        would; a test checks it.
        """
        embed = self.model.model.vlm.get_input_embeddings()
        mask = torch.cat([mask, mask.new_ones((1, len(tokens)))], dim=1)
        positions = (mask.cumsum(-1) - 1)[:, -len(tokens) :]
        out = self.model.model.vlm(
            inputs_embeds=embed(torch.tensor([tokens], device=self.device)),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        return mask, out.last_hidden_state[0]

    def _next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.model.vlm.get_input_embeddings().weight
        logits = hidden @ weight.T
        for banned in ('image', 'pad', 'bos'):  # never valid inside generated text
            logits[..., self._token_ids[banned]] = -math.inf
        return logits

    @torch.no_grad()
    def decode_subtask(
        self, cache: Any, mask: torch.Tensor, last_hidden: torch.Tensor, max_tokens: int, *, draft: bool = True
    ) -> tuple[list[int], torch.Tensor]:
        """Greedy decoding on the prefix cache until the end marker or `max_tokens`.

        Returns the subtask ids (end marker last, appended if the budget ran out, so the
        expert always sees the layout it was trained on) and the extended attention mask.

        With `draft`, each new token is fed together with the rest of a subtask from `self.drafts`
        that continues the ids so far; the hidden states of that one pass say which drafted tokens
        greedy decoding would have chosen, those are kept and the rest cropped from the cache. The
        ids are the same as with `draft=False` (one token per pass), only fewer passes are run.
        """
        end = self._token_ids['subtask_end']
        ids: list[int] = []
        hidden = last_hidden
        passes = 0
        while len(ids) < max_tokens:
            token = int(self._next_token_logits(hidden).argmax(-1).item())
            ids.append(token)
            proposal = self.drafts.continuation(ids, end) if draft and token != end else []
            proposal = proposal[: max_tokens - len(ids)]
            mask, hiddens = self._feed_tokens(cache, mask, [token, *proposal])
            passes += 1
            accepted = 0
            if proposal:
                predicted = self._next_token_logits(hiddens[:-1]).argmax(-1).tolist()
                while accepted < len(proposal) and predicted[accepted] == proposal[accepted]:
                    accepted += 1
                rejected = len(proposal) - accepted
                if rejected:
                    cache.crop(-rejected)
                    mask = mask[:, :-rejected]
                ids.extend(proposal[:accepted])
            hidden = hiddens[accepted : accepted + 1]
            if ids[-1] == end:
                break
        else:
            ids.append(end)
            mask, _ = self._feed_tokens(cache, mask, [end])
            passes += 1
        self.last_decode_passes = passes
        if draft:
            self.drafts.add(ids)
        return ids, mask

    @torch.no_grad()
    def append_subtask(self, cache: Any, mask: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """Put given subtask ids (override or cached) after the prefix, causally, like decoded ones."""
        if ids:
            mask, _ = self._feed_tokens(cache, mask, ids)
        return mask

    def subtask_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [*ids, self._token_ids['subtask_end']]

    def subtask_text(self, ids: list[int]) -> str:
        end = self._token_ids['subtask_end']
        return self.tokenizer.decode([i for i in ids if i != end], skip_special_tokens=True).strip()

    def _velocity(self, state: torch.Tensor, x: torch.Tensor, t: float, mask: torch.Tensor, cache: Any) -> Any:
        time_tensor = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
        out = self.model(state=state, noise=x, timestep=time_tensor, attention_mask=mask, past_key_values=cache)
        return out.logits

    def sample(
        self,
        state: torch.Tensor,
        cache: Any,
        mask: torch.Tensor,
        noise: torch.Tensor,
        guide: tuple[torch.Tensor, torch.Tensor, float, str] | None = None,
        step_times_ms: list[float] | None = None,
    ) -> torch.Tensor:
        """Euler-integrate the flow from noise (t=1) to normalised actions (t=0) on a fixed cache.

        `guide` = (target actions, per-element weights, beta, jacobian) in model space, both (1, H, D).
        Guided steps follow RTC's pseudoinverse-guidance update: with the denoised estimate
        A1 = x_t - t * v (transformers' v points from data to noise), the correction is the
        vector-Jacobian product (dA1/dx_t)^T [W * (Y - A1)] taken through the expert, scaled by
        min(beta, (1-tau)/(tau r_tau^2)), tau = 1 - t, and subtracted from v.

        jacobian 'identity' takes dA1/dx_t as the identity, so the correction is W * (Y - A1) itself:
        no backward pass, the cost of an unguided step. On the frozen steps (W = 1) with beta * |dt| = 1
        this puts x exactly on the committed action's noisy path, which is what inpainting wants; the
        exact product also moves the free steps through the expert's attention, the identity does not.
        On 2 CPU cores the backward pass made a guided chunk 1.7x slower (70 against 41 ms, p90 112 ms).
        """
        context_length = cache.get_seq_length()
        dt = -1.0 / self.num_steps
        x = noise
        if guide is not None:
            target, weights, beta, jacobian = guide
        for step in range(self.num_steps):
            start = time.perf_counter()
            t = 1.0 + step * dt
            if guide is None:
                with torch.no_grad():
                    v = self._velocity(state, x, t, mask, cache)
            elif jacobian == 'identity':
                with torch.no_grad():
                    v_free = self._velocity(state, x, t, mask, cache)
                    correction = (target - (x - t * v_free)) * weights
                v = v_free - rtc_guidance_weight(1.0 - t, beta) * correction
            else:
                with torch.enable_grad():
                    x_in = x.detach().requires_grad_(True)
                    v_in = self._velocity(state, x_in, t, mask, cache)
                    estimate = x_in - t * v_in
                    error = (target - estimate) * weights
                    (correction,) = torch.autograd.grad(estimate, x_in, grad_outputs=error)
                v = v_in.detach() - rtc_guidance_weight(1.0 - t, beta) * correction
            _crop_cache(cache, cache.get_seq_length() - context_length)
            x = (x + dt * v).detach()
            if step_times_ms is not None:
                step_times_ms.append((time.perf_counter() - start) * 1e3)
        return x

    # ------------------------------------------------------------------ infer

    def _noise(self, noise: np.ndarray | None) -> torch.Tensor:
        shape = (self.chunk_size, self.config.max_action_dim)
        if noise is None:
            return torch.randn((1, *shape), generator=self._generator).to(self.device, self.dtype)
        arr = np.asarray(noise, dtype=np.float32)
        if arr.shape not in (shape, (1, *shape)):
            raise ValueError(f'noise has shape {arr.shape}, expected {shape} (chunk_size, max_action_dim)')
        if not np.all(np.isfinite(arr)):
            raise ValueError('noise contains NaN or Inf')
        return torch.from_numpy(arr.reshape(1, *shape)).to(self.device, self.dtype)

    def _guide_tensors(self, guide: ChunkGuide) -> tuple[torch.Tensor, torch.Tensor, float, str]:
        n = len(self.joint_names)
        actions = np.asarray(guide.actions, dtype=np.float64)
        weights = np.asarray(guide.weights, dtype=np.float64)
        k = weights.shape[0] if weights.ndim == 1 else -1
        if weights.ndim != 1 or actions.shape != (k, n) or k > self.chunk_size:
            raise ValueError(
                f'guide: actions {actions.shape} and weights {weights.shape} must be (k, {n}) and (k,), '
                f'k <= {self.chunk_size}'
            )
        if not (np.all(np.isfinite(actions)) and np.all(np.isfinite(weights))):
            raise ValueError('guide contains NaN or Inf')
        if np.any(weights < 0) or np.any(weights > 1):
            raise ValueError('guide weights must lie in [0, 1]')
        if not (math.isfinite(guide.max_guidance) and guide.max_guidance >= 0):
            raise ValueError(f'guide max_guidance must be finite and >= 0, got {guide.max_guidance}')
        if guide.jacobian not in RTC_JACOBIANS:
            raise ValueError(f'guide jacobian must be one of {RTC_JACOBIANS}, got {guide.jacobian!r}')
        width = self.config.max_action_dim
        target = np.zeros((self.chunk_size, width), dtype=np.float32)
        target[:k] = pad_last(self.action_norm.normalize(actions), width)
        w = np.zeros((self.chunk_size, width), dtype=np.float32)
        w[:k, :n] = weights[:, None]  # padded dims carry no meaning: never guide them
        to = lambda a: torch.from_numpy(a)[None].to(self.device, self.dtype)  # noqa: E731
        return to(target), to(w), float(guide.max_guidance), guide.jacobian

    def infer(
        self,
        obs: Observation,
        *,
        decode_subtask: bool = True,
        subtask_override: str | None = None,
        guide: ChunkGuide | None = None,
        noise: np.ndarray | None = None,
        max_subtask_tokens: int | None = None,
        on_subtask: Callable[[str], None] | None = None,
    ) -> InferenceResult:
        """One action chunk for `obs`. See the module docstring for the steps.

        Subtask choice: a non-empty `subtask_override` wins; else decode a new one if
        `decode_subtask` and the checkpoint reasons; else reuse the last decoded one if it
        was decoded for the same task ('cached'); else none ('disabled'). Raises ObservationError for unusable input
        and NonFiniteActionError if the model's output is not finite.

        `on_subtask(text)` is called with a non-empty subtask as soon as it is chosen, before the
        flow steps: a caller can show the reasoning that much sooner (about half an inference).
        """
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        prep = self.prepare(obs)
        guide_t = self._guide_tensors(guide) if guide is not None else None
        x0 = self._noise(noise)
        t1 = time.perf_counter()
        times['preprocess'] = (t1 - t0) * 1e3

        cache, last_hidden = self.encode_prefix(prep)
        mask = prep.attention_mask
        t2 = time.perf_counter()
        times['prefix'] = (t2 - t1) * 1e3

        if subtask_override is not None and subtask_override.strip():
            ids, source = self.subtask_ids(subtask_override.strip()), 'override'
            mask = self.append_subtask(cache, mask, ids)
        elif decode_subtask and self.reasoning_supported:
            budget = self.max_subtask_tokens if max_subtask_tokens is None else max_subtask_tokens
            ids, mask = self.decode_subtask(cache, mask, last_hidden, max(1, budget))
            source = 'model'
            self._cached_subtask = (obs.task, self.subtask_text(ids), ids)
        elif self._cached_subtask is not None and self._cached_subtask[0] == obs.task:
            ids, source = self._cached_subtask[2], 'cached'
            mask = self.append_subtask(cache, mask, ids)
        else:
            ids, source = [], 'disabled'
        t3 = time.perf_counter()
        times['reasoning'] = (t3 - t2) * 1e3
        if on_subtask is not None and ids:
            on_subtask(self.subtask_text(ids))

        steps: list[float] = []
        x = self.sample(prep.state, cache, mask, x0, guide=guide_t, step_times_ms=steps)
        t4 = time.perf_counter()
        times['flow'] = (t4 - t3) * 1e3
        times['flow_step'] = float(np.median(steps))

        normalized = x[0, :, : len(self.joint_names)].double().cpu().numpy()
        actions = self.action_norm.unnormalize(normalized)
        if not np.all(np.isfinite(actions)):
            raise NonFiniteActionError(
                f'model output has {int(np.sum(~np.isfinite(actions)))} non-finite values in a '
                f'{actions.shape} chunk; refusing to return it'
            )
        times['total'] = (time.perf_counter() - t0) * 1e3
        return InferenceResult(
            actions=actions,
            subtask=self.subtask_text(ids) if ids else '',
            subtask_source=source,
            timings_ms=times,
            stamp=obs.stamp,
            subtask_token_ids=list(ids),
        )


def _crop_cache(cache: Any, tokens_to_remove: int) -> None:
    """Drop the expert's keys/values appended during one flow step, and any autograd history."""
    if tokens_to_remove > 0:
        cache.crop(-tokens_to_remove)
    for layer in getattr(cache, 'layers', ()):
        keys, values = getattr(layer, 'keys', None), getattr(layer, 'values', None)
        if isinstance(keys, torch.Tensor) and keys.requires_grad:
            layer.keys = keys.detach()
        if isinstance(values, torch.Tensor) and values.requires_grad:
            layer.values = values.detach()


def check_joint_names(checkpoint_joints: list[str], rig_joints: list[str], where: object = 'checkpoint') -> None:
    """Refuse a checkpoint whose joints are not exactly the rig's (order may differ)."""
    missing = [j for j in checkpoint_joints if j not in rig_joints]
    extra = [j for j in rig_joints if j not in checkpoint_joints]
    if missing or extra:
        raise CheckpointError(
            f'{where}: checkpoint joints do not match the rig: '
            f'in the checkpoint but not the rig: {missing}; in the rig but not the checkpoint: {extra}'
        )
