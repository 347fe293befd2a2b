"""What `run`, `eval-sim` and `demo` check before they start anything: `--set`, the policy file, its checkpoint.

Every problem is a ConfigError in one line naming the file or parameter (`--set policy_node.enabled:
must be true or false, got 'maybe'`), raised before a port is opened or a model is loaded. The
checkpoint is checked as far as is cheap without loading the model: a complete, pickle-free
directory, valid `bimanual_vla.json` and `config.json`, and joints and cameras that are the rig's.
Its weights are read by the policy node itself, whose errors reach the user as one line too
(bimanual_vla/bringup/node_process.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bimanual_vla.bringup.nodes import NodeSpec
from bimanual_vla.config import ConfigError, RigConfig, load_policy, resolve_policy_path, resolve_share_relative
from bimanual_vla.node_parameters import check_overrides

# How a user gets a checkpoint for a rig that has none: the one line `run` prints with the policy off.
HOW_TO_GET_A_CHECKPOINT = (
    'to drive this rig with a policy, record demonstrations (bimanual-vla record), train on them '
    '(bimanual-vla train --data BAG --out DIR), then pass --set policy_node.checkpoint=DIR'
)


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """`node.param=value` strings -> {node: {param: value}}, values typed as YAML types them."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition('=')
        node, dot, param = key.partition('.')
        if not sep or not dot or not node or not param:
            raise ConfigError(f'--set expects NODE.PARAM=VALUE, got {item!r}')
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text  # not YAML ("a: b: c"): the text itself, which only a string parameter takes
        out.setdefault(node, {})[param] = value
    return out


def apply_set(specs: list[NodeSpec], overrides: Mapping[str, Mapping[str, Any]]) -> list[NodeSpec]:
    """`specs` with the `--set` overrides merged in, each checked against what its node declares."""
    by_name = {spec.name: spec for spec in specs}
    unknown = [name for name in overrides if name not in by_name]
    if unknown:
        raise ConfigError(f'--set names unknown node {", ".join(unknown)}; nodes: {", ".join(by_name)}')
    out = []
    for spec in specs:
        params = check_overrides(spec.executable, overrides.get(spec.name, {}), f'--set {spec.name}.', convert=True)
        out.append(NodeSpec(spec.executable, spec.name, {**spec.parameters, **params}))
    return out


def check_checkpoint(rig: RigConfig, directory: str | Path) -> Path:
    """The checkpoint directory, checked for `rig` without loading its weights; CheckpointError naming the file."""
    from bimanual_vla.policy_node.checkpoint import CheckpointError, check_config, check_directory, read_metadata
    from bimanual_vla.policy_node.rig_fit import check_cameras, commanded_arms

    path = check_directory(directory)
    metadata = read_metadata(path)
    check_config(path)
    try:
        commanded_arms(rig, list(metadata.joint_names), lambda _message: None)
        check_cameras(rig, list(metadata.camera_names))
    except ConfigError as exc:
        raise CheckpointError(f'{path}: {exc}') from None
    return path


@dataclass(frozen=True)
class PolicyChoice:
    """The checkpoint a policy node will load, and where the user named it (for messages)."""

    checkpoint: Path
    named_by: str  # '--set policy_node.checkpoint', '<policy file>: checkpoint', '--checkpoint'


def choose_checkpoint(rig: RigConfig, policy: str, checkpoint: str | None, named_by: str) -> PolicyChoice:
    """Load the policy file and check the checkpoint it (or `checkpoint`, named by `named_by`) names.

    ConfigError for a bad policy file; ConfigError (CheckpointError) `<named_by>: <file>: <problem>`
    for a checkpoint that is missing, broken or made for other joints or cameras.
    """
    config = load_policy(policy)
    if not checkpoint:
        checkpoint, named_by = config.checkpoint, f'{resolve_policy_path(policy)}: checkpoint'
    path = resolve_share_relative(checkpoint)
    try:
        return PolicyChoice(check_checkpoint(rig, path), named_by)
    except ConfigError as exc:
        raise type(exc)(f'{named_by}: {exc}') from None


def policy_for_rig(
    rig: RigConfig,
    policy: str | None,
    overrides: Mapping[str, Any],
    note: Callable[[str], object],
    how_to: str = HOW_TO_GET_A_CHECKPOINT,
) -> str | None:
    """The policy file a rig's policy node gets, or None: no policy node (`policy` 'none').

    `policy` is what the user asked for (None: nothing, the shipped default); `overrides` are the
    policy node's checked `--set` values. A checkpoint the user named (`--policy FILE`, `--set
    policy_node.checkpoint=DIR`) that is missing, broken or made for another rig is an error
    (ConfigError, one line). The default policy's checkpoint in that case is not: a first run on a rig
    without a checkpoint of its own brings the drivers and cameras up with the policy off, and
    `note` gets the one line that says why and how to get a checkpoint (`how_to`: the launch files
    take a policy file where `run` takes `--set`).
    """
    from bimanual_vla.policy_node.checkpoint import CheckpointError

    if policy is not None and policy.lower() == 'none':
        return None
    named = policy is not None or 'policy' in overrides or 'checkpoint' in overrides
    policy = str(overrides.get('policy') or policy or 'default')
    try:
        choose_checkpoint(rig, policy, overrides.get('checkpoint'), '--set policy_node.checkpoint')
    except CheckpointError as exc:  # the policy file itself is fine (a bad one raised ConfigError)
        if named:
            raise
        note(f'policy off: {exc}; {how_to}')
        return None
    return policy
