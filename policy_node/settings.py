"""The policy node's settings, without ROS: its parameters' values resolved against the policy file.

The node declares its parameters (``rig``, ``policy``, ``checkpoint``, ``enabled``, ``chunking``,
``markers_every_n_chunks``) and hands their values here; the policy file gives the defaults of
``enabled`` and ``chunking`` and the checkpoint when the parameter is empty. Kept apart from the
node so the resolution is checked by value without a ROS graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bimanual_vla.config import ConfigError, PolicyConfig, resolve_share_relative


@dataclass(frozen=True)
class NodeSettings:
    """What the node runs: the policy file, the checkpoint directory and the parameters' overrides."""

    policy: PolicyConfig
    checkpoint: Path
    enabled: bool  # commands sent from the start (else only after policy/enable)
    chunking: str  # rtc, naive or ensemble (the policy file's unless the parameter says otherwise)
    markers_every: int  # rviz markers for every n-th accepted chunk (at least 1)

    @classmethod
    def resolve(
        cls, policy: PolicyConfig, *, checkpoint: str, enabled: bool, chunking: str, markers_every_n_chunks: int
    ) -> NodeSettings:
        """The settings from the parameters' values; an empty ``checkpoint`` takes the policy file's.

        Raises ConfigError when the checkpoint is not a directory, before any model code is imported.
        """
        directory = resolve_share_relative(checkpoint or policy.checkpoint)
        if not Path(directory).is_dir():
            raise ConfigError(f'checkpoint {directory} is not a directory (set the "checkpoint" parameter)')
        return cls(policy, directory, enabled, chunking, max(1, int(markers_every_n_chunks)))

    def action_time_offset_s(self, checkpoint_offset_s: float) -> float:
        """How long after they took effect the training data stamped its commands: the checkpoint
        says (``checkpoint_offset_s``, from its metadata); the policy file may override it."""
        offset = self.policy.inference.action_time_offset_s
        return float(offset if offset is not None else checkpoint_offset_s)
