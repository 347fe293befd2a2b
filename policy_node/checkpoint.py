"""Checkpoint directories: layout, metadata schema, safe loading and saving.

A checkpoint is a plain directory that transformers can read on its own, plus one
file of ours::

    config.json             PI0Config (transformers)
    model.safetensors       weights (or model.safetensors.index.json + shards)
    tokenizer.json          `tokenizers` tokenizer (tokenizer_config.json may sit beside it)
    bimanual_vla.json       everything the weights do not say: joint order, cameras,
                            normalisation statistics, chunk timing, special tokens

Loading never touches the network and never executes code from the directory:
`local_files_only`, `use_safetensors=True`, no `trust_remote_code`, and a directory
holding any pickle-format file is refused outright, because a pickle can run
arbitrary code the moment something (a user's script, an old tool) unpickles it,
and its mere presence means the directory is not what we expect.

``bimanual_vla.json`` carries ``format_version`` (:data:`METADATA_FORMAT_VERSION`). A file
without the field is read as the oldest version, :data:`OLDEST_METADATA_FORMAT_VERSION`.
Version 1 is the only one so far: every field added to it since (``image_crops``, ``tasks``,
``subtasks``, ``action_time_offset_s``, ``expert_approach``, ...) has a default that means
what a file without it meant, so older version-1 files read unchanged. A change an older
reader would misread raises the version, and this reader refuses versions it does not know.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bimanual_vla.config import ConfigError
from bimanual_vla.policy_node.preprocess import crop_box_problem

METADATA_FILE = 'bimanual_vla.json'
TOKENIZER_FILE = 'tokenizer.json'
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
WEIGHTS_INDEX_FILE = 'model.safetensors.index.json'
METADATA_FORMAT_VERSION = 1
"""The format_version this code writes."""
OLDEST_METADATA_FORMAT_VERSION = 1
"""The format_version of a bimanual_vla.json that has no format_version field."""

#: File suffixes that are (or usually wrap) Python pickles. Refused anywhere in a checkpoint.
PICKLE_SUFFIXES: tuple[str, ...] = ('.bin', '.pt', '.pth', '.pkl', '.pickle', '.ckpt')


class CheckpointError(ConfigError):
    """A checkpoint directory is missing, incomplete, corrupt, unsafe or does not fit the rig.

    A ConfigError (a ValueError): a user's input, reported in one line naming the file, never a traceback.
    """


class FeatureStats(BaseModel):
    """Per-joint statistics of one feature (state or actions) in rig units.

    Both families are stored so a checkpoint can switch normalisation mode without
    recomputing statistics; `NormalizationConfig.mode` picks the one in use.
    """

    model_config = ConfigDict(extra='forbid', frozen=True)

    mean: list[float]
    std: list[float]
    q01: list[float]
    q99: list[float]

    @model_validator(mode='after')
    def _consistent(self) -> FeatureStats:
        n = len(self.mean)
        for name in ('std', 'q01', 'q99'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'{name} has {len(getattr(self, name))} values, mean has {n}')
        for name in ('mean', 'std', 'q01', 'q99'):
            if not all(math.isfinite(v) for v in getattr(self, name)):
                raise ValueError(f'{name} contains NaN or Inf')
        if any(s < 0 for s in self.std):
            raise ValueError('std must be >= 0')
        if any(lo > hi for lo, hi in zip(self.q01, self.q99, strict=True)):
            raise ValueError('q01 must be <= q99 for every joint')
        return self


class NormalizationConfig(BaseModel):
    model_config = ConfigDict(extra='forbid', frozen=True)

    mode: Literal['mean_std', 'quantile'] = 'mean_std'
    state: FeatureStats
    actions: FeatureStats


class SpecialTokens(BaseModel):
    """Token strings of the prompt layout (PaliGemma style: images, bos, task, newline)."""

    model_config = ConfigDict(extra='forbid', frozen=True)

    pad: str = '<pad>'
    bos: str = '<bos>'
    eos: str = '<eos>'
    image: str = '<image>'
    newline: str = '\n'
    subtask_end: str = Field(default='<eos>', description='token that ends a decoded subtask')


class CheckpointMetadata(BaseModel):
    """Contents of ``bimanual_vla.json``."""

    model_config = ConfigDict(extra='forbid', frozen=True)

    format_version: int = Field(
        default=METADATA_FORMAT_VERSION,
        description='layout of this file; read_metadata takes a file without it as the oldest version',
    )
    rig: str | None = Field(default=None, description='rig the checkpoint was made for (informative)')
    joint_names: list[str] = Field(min_length=1, description='qualified joint names, in training order')
    camera_names: list[str] = Field(min_length=1)
    chunk_size: int = Field(gt=0)
    control_rate_hz: float = Field(gt=0)
    image_size: tuple[int, int] = Field(description='model input (height, width) in pixels')
    image_crops: dict[str, tuple[int, int, int, int]] = Field(
        default_factory=dict, description='per camera: (x, y, width, height) cut out before resizing'
    )
    normalization: NormalizationConfig
    tokens: SpecialTokens = Field(default_factory=SpecialTokens)
    reasoning: bool = Field(default=True, description='trained to write a subtask before acting')
    max_task_tokens: int = Field(default=48, gt=0)
    tasks: list[str] = Field(default_factory=list, description='task prompts it was trained on (empty: not recorded)')
    subtasks: list[str] = Field(default_factory=list, description='subtask labels it was trained to write')
    action_time_offset_s: float = Field(
        default=0.0,
        ge=0,
        le=1.0,
        description=(
            'how long after they took effect the training data stamped its commands; the policy node '
            'starts each chunk this much earlier (sim bags whose collect.json has no command_stamps, its oldest '
            'format: one control tick)'
        ),
    )
    expert_approach: Literal['joint', 'cartesian'] | None = Field(
        default=None,
        description=(
            "how the sim's scripted expert reached above the cube in the training data (collect.json); "
            'eval-sim replays the same one. None: not recorded, data from a rig, or both kinds mixed'
        ),
    )

    @field_validator('joint_names', 'camera_names')
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f'duplicate names: {dups}')
        return names

    @field_validator('format_version')
    @classmethod
    def _version(cls, v: int) -> int:
        if not OLDEST_METADATA_FORMAT_VERSION <= v <= METADATA_FORMAT_VERSION:
            known = ', '.join(str(n) for n in range(OLDEST_METADATA_FORMAT_VERSION, METADATA_FORMAT_VERSION + 1))
            raise ValueError(f'unsupported format_version {v} (this code reads {known})')
        return v

    @model_validator(mode='after')
    def _crops_name_cameras(self) -> CheckpointMetadata:
        unknown = sorted(set(self.image_crops) - set(self.camera_names))
        if unknown:
            raise ValueError(f'image_crops names camera(s) {unknown} not in camera_names {self.camera_names}')
        for cam, box in self.image_crops.items():
            problem = crop_box_problem(box)
            if problem:
                raise ValueError(f'image_crops.{cam}: {problem}')
        return self

    @model_validator(mode='after')
    def _stats_match_joints(self) -> CheckpointMetadata:
        n = len(self.joint_names)
        for feature in ('state', 'actions'):
            got = len(getattr(self.normalization, feature).mean)
            if got != n:
                raise ValueError(f'normalization.{feature} has {got} values for {n} joints')
        return self


def find_pickle_files(directory: Path) -> list[Path]:
    """Every pickle-format file under `directory` (recursively), sorted."""
    return sorted(p for p in directory.rglob('*') if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def read_metadata(directory: str | Path) -> CheckpointMetadata:
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(f'{directory}: missing {METADATA_FILE} (joint order, cameras and normalisation stats)')
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f'{path}: not valid JSON: {exc}') from exc
    if isinstance(data, dict) and 'format_version' not in data:
        data['format_version'] = OLDEST_METADATA_FORMAT_VERSION
    try:
        return CheckpointMetadata.model_validate(data)
    except ValidationError as exc:
        problems = '; '.join(
            f'{".".join(str(p) for p in e["loc"]) or "<top level>"}: {e["msg"].removeprefix("Value error, ")}'
            for e in exc.errors()
        )
        raise CheckpointError(f'{path}: {problems}') from None


def write_metadata(directory: str | Path, metadata: CheckpointMetadata) -> Path:
    path = Path(directory) / METADATA_FILE
    path.write_text(json.dumps(metadata.model_dump(mode='json'), indent=2) + '\n')
    return path


def check_directory(directory: str | Path) -> Path:
    """Refuse anything that is not a complete, pickle-free checkpoint directory."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise CheckpointError(f'{d}: checkpoint directory not found')
    pickles = find_pickle_files(d)
    if pickles:
        names = ', '.join(str(p.relative_to(d)) for p in pickles[:5])
        raise CheckpointError(
            f'{d}: refusing a checkpoint that contains pickle-format files ({names}); pickles can execute code '
            'when loaded. Convert the weights to safetensors and remove the pickle files.'
        )
    missing = [f for f in (CONFIG_FILE, TOKENIZER_FILE, METADATA_FILE) if not (d / f).is_file()]
    if not (d / WEIGHTS_FILE).is_file() and not (d / WEIGHTS_INDEX_FILE).is_file():
        missing.append(WEIGHTS_FILE)
    if missing:
        raise CheckpointError(f'{d}: incomplete checkpoint, missing {", ".join(missing)}')
    return d


def check_config(directory: Path) -> dict[str, Any]:
    """config.json of a checkpoint: readable JSON, a pi0 model, no remote code (auto_map)."""
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f'{path}: not valid JSON: {exc}') from exc
    if not isinstance(config, dict) or config.get('model_type') != 'pi0':
        got = config.get('model_type') if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f'{path}: model_type is {got!r}, expected "pi0" (PI0ForConditionalGeneration)')
    if config.get('auto_map'):
        raise CheckpointError(f'{path}: declares auto_map (remote code), which this loader never runs')
    return config


def _check_safetensors(directory: Path) -> None:
    """Open every weights file's header so corruption fails here with the file's name."""
    from safetensors import safe_open

    files = [directory / WEIGHTS_FILE]
    index = directory / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            files = sorted({directory / f for f in json.loads(index.read_text())['weight_map'].values()})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f'{index}: not a valid safetensors index: {exc}') from exc
    for f in files:
        if not f.is_file():
            raise CheckpointError(f'{f}: weights file named in the index is missing')
        try:
            with safe_open(str(f), framework='pt') as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f'{f}: not a readable safetensors file: {exc}') from exc


def load_tokenizer(directory: Path):
    """The checkpoint's `tokenizers.Tokenizer` (no transformers tokenizer classes, no remote code)."""
    from tokenizers import Tokenizer

    path = directory / TOKENIZER_FILE
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a generic Exception on bad JSON
        raise CheckpointError(f'{path}: not a readable tokenizers file: {exc}') from exc


def load_pi0(directory: Path, *, device: str = 'cpu', dtype: Any = None):
    """Load PI0ForConditionalGeneration from safetensors only; refuse missing or unexpected weights."""
    import torch
    from transformers import PI0ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar per load would clutter node logs
    check_config(directory)
    _check_safetensors(directory)
    try:
        model, info = PI0ForConditionalGeneration.from_pretrained(
            str(directory),
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            dtype=dtype or torch.float32,
            output_loading_info=True,
        )
    except Exception as exc:  # transformers raises many types (OSError, ValueError, RuntimeError)
        raise CheckpointError(f'{directory}: transformers could not load the model: {exc}') from exc
    problems = {k: v for k, v in info.items() if k in ('missing_keys', 'mismatched_keys') and v}
    if problems:
        detail = '; '.join(f'{k}: {sorted(map(str, v))[:5]}' for k, v in problems.items())
        raise CheckpointError(f'{directory}: weights do not match config.json ({detail})')
    return model.to(device).eval()
