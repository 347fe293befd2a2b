"""The policy node's diagnostics, without ROS: key/values and level from plain state.

The node wraps them into one DiagnosticStatus (``<node>: policy``) a second; levels are named here
('OK', 'WARN', 'ERROR', 'STALE') and mapped to the message's bytes by the node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.scheduler import Stats


def task_trained(task: str, trained: Sequence[str] | None) -> str:
    """'yes' / 'no' if the checkpoint records the prompts it was trained on, else 'unknown'."""
    if not trained:
        return 'unknown'
    return 'yes' if task in trained else 'no'


def status_values(
    gate: CommandGate,
    stats: Stats,
    *,
    chunking: str,
    task: str,
    trained: str,
    subtask: str,
    override: str | None,
    stale: Sequence[str],
) -> dict[str, object]:
    """The node's own values, in their published order (the scheduler's timing values follow them)."""
    counters = gate.counters
    return {
        'enabled': gate.enabled,
        'estop': gate.estop,
        'chunking': chunking,
        'task': task,
        'task_trained': trained,
        'subtask': subtask,
        'subtask_override': override or '',
        'stale_inputs': '; '.join(stale) or 'none',
        'commands_sent': counters.commands,
        'rejected_outputs': stats.nonfinite_chunks + counters.nonfinite_rejected,
        'limit_clips': counters.limit_clips,
        'velocity_clamps': counters.velocity_clamps,
        'blocked_ticks': ', '.join(f'{k}={v}' for k, v in sorted(counters.blocked.items())) or 'none',
    }


def status_level(values: Mapping[str, object], stale: Sequence[str], stats: Stats) -> tuple[str, str]:
    """(level name, message) from ``status_values``' values, the most severe condition first."""
    if values['estop']:
        return 'ERROR', 'e-stop engaged'
    if stale:
        return 'STALE', 'stale inputs: ' + '; '.join(stale)
    if stats.inference_errors or stats.nonfinite_chunks:
        return 'WARN', f'model output rejected or failed: {stats.last_error}'
    if values['task_trained'] == 'no':
        return 'WARN', f"task {values['task']!r} is not among the checkpoint's training tasks"
    if not values['enabled']:
        return 'OK', 'disabled (preview only: chunks and reasoning published, no commands)'
    return 'OK', f'running, {stats.chunks} chunks'
