"""The policy node's diagnostics, without ROS: key/values and level from plain state.

The node wraps them into one DiagnosticStatus (``<node>: policy``) a second
(``messages.diagnostic_array``); levels are named here ('OK', 'WARN', 'ERROR', 'STALE').
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from bimanual_vla.config import RigConfig
from bimanual_vla.policy_node.prompt import Prompt
from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.scheduler import Scheduler, Stats
from bimanual_vla.policy_node.settings import NodeSettings


def startup_line(settings: NodeSettings, model: Any, scheduler: Scheduler, rig: RigConfig, markers: str) -> str:
    """The node's start-up log line: checkpoint, joints, cameras, chunking, timing, enabled, markers.

    ``model``: the loaded VLAPolicy (its joint and camera names, chunk size and rate are read).
    """
    enabled = 'ENABLED' if settings.enabled else 'disabled (call policy/enable)'
    return (
        f'policy {settings.checkpoint.name}: {len(model.joint_names)} joints, cameras {list(model.camera_names)}, '
        f'chunk {model.chunk_size} @ {model.control_rate_hz:g} Hz, chunking {settings.chunking}, '
        f'{scheduler.chunk_start_text()}, control {rig.control_rate_hz:g} Hz, {enabled}; markers: {markers}'
    )


def task_trained(task: str, trained: Sequence[str] | None) -> str:
    """'yes' / 'no' if the checkpoint records the prompts it was trained on, else 'unknown'."""
    if not trained:
        return 'unknown'
    return 'yes' if task in trained else 'no'


def untrained_task_warning(task: str, trained: Sequence[str] | None) -> str | None:
    """The warning for a prompt the checkpoint did not learn (None if it did, or nothing is recorded):
    a small VLA trained on a few prompts acts on an unseen one unpredictably, and a typo is the usual cause."""
    if task and task_trained(task, trained) == 'no':
        return f'task {task!r} is not one this checkpoint was trained on: {trained}'
    return None


def policy_values(
    gate: CommandGate,
    scheduler: Scheduler,
    prompt: Prompt,
    trained_tasks: Sequence[str] | None,
    lock: AbstractContextManager,
) -> dict[str, object]:
    """Every value the node publishes, in order: its own and the arrival delays read under ``lock``
    (the callbacks change them), then the scheduler's counters, which need no lock to be read."""
    with lock:
        values = status_values(
            gate,
            scheduler.stats,
            chunking=scheduler.executor.strategy,
            task=prompt.task,
            trained=task_trained(prompt.task, trained_tasks),
            subtask=prompt.subtask,
            override=prompt.override,
            stale=scheduler.stale,
        )
        arrival = scheduler.arrival_values()
    values.update(scheduler.stats_values(arrival))
    return values


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
