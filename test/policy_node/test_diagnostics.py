"""The policy node's diagnostics (policy_node/diagnostics.py): values, their order and level, the
start-up line and the untrained-task warning, checked by value without ROS."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bimanual_vla.config import PolicyConfig, load_rig
from bimanual_vla.policy_node import diagnostics
from bimanual_vla.policy_node.prompt import Prompt
from bimanual_vla.policy_node.safety import CommandGate
from bimanual_vla.policy_node.scheduler import Scheduler, Stats, Timing
from bimanual_vla.policy_node.settings import NodeSettings


def test_task_trained_is_unknown_without_a_recorded_task_list() -> None:
    assert diagnostics.task_trained('fold', None) == 'unknown'
    assert diagnostics.task_trained('fold', []) == 'unknown'
    assert diagnostics.task_trained('fold', ['fold', 'stack']) == 'yes'
    assert diagnostics.task_trained('fld', ['fold']) == 'no'


def test_status_values_keys_in_order_and_rendered_counters() -> None:
    gate = CommandGate(['a', 'b'], np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 0.1, enabled=True)
    gate.counters.blocked.update({'stale': 3, 'disabled': 2})
    gate.counters.nonfinite_rejected = 1
    stats = Stats()
    stats.nonfinite_chunks = 2
    values = diagnostics.status_values(
        gate, stats, chunking='rtc', task='fold', trained='yes', subtask='reach', override=None, stale=[]
    )
    assert list(values) == [
        'enabled', 'estop', 'chunking', 'task', 'task_trained', 'subtask', 'subtask_override', 'stale_inputs',
        'commands_sent', 'rejected_outputs', 'limit_clips', 'velocity_clamps', 'blocked_ticks',
    ]  # fmt: skip
    assert values['enabled'] is True and values['estop'] is False
    assert values['subtask_override'] == '' and values['stale_inputs'] == 'none'
    assert values['rejected_outputs'] == 3 and values['blocked_ticks'] == 'disabled=2, stale=3'
    values = diagnostics.status_values(
        gate, stats, chunking='rtc', task='', trained='unknown', subtask='', override='lift', stale=['a', 'b']
    )
    assert values['subtask_override'] == 'lift' and values['stale_inputs'] == 'a; b'


def test_status_level_most_severe_first() -> None:
    stats = Stats()
    base = {'estop': False, 'enabled': True, 'task': 'fold', 'task_trained': 'yes'}
    assert diagnostics.status_level(base, [], stats) == ('OK', 'running, 0 chunks')
    assert diagnostics.status_level({**base, 'enabled': False}, [], stats) == (
        'OK',
        'disabled (preview only: chunks and reasoning published, no commands)',
    )
    assert diagnostics.status_level({**base, 'task_trained': 'no'}, [], stats) == (
        'WARN',
        "task 'fold' is not among the checkpoint's training tasks",
    )
    stats.inference_errors, stats.last_error = 1, 'RuntimeError: boom'
    assert diagnostics.status_level(base, [], stats) == ('WARN', 'model output rejected or failed: RuntimeError: boom')
    assert diagnostics.status_level(base, ['camera top: no frame'], stats) == (
        'STALE',
        'stale inputs: camera top: no frame',
    )
    assert diagnostics.status_level({**base, 'estop': True}, ['x'], stats) == ('ERROR', 'e-stop engaged')


def test_untrained_task_warning_names_the_task_and_the_trained_ones() -> None:
    assert diagnostics.untrained_task_warning('fld', ['fold', 'stack']) == (
        "task 'fld' is not one this checkpoint was trained on: ['fold', 'stack']"
    )
    assert diagnostics.untrained_task_warning('fold', ['fold']) is None
    assert diagnostics.untrained_task_warning('fld', []) is None  # nothing recorded: no opinion
    assert diagnostics.untrained_task_warning('', ['fold']) is None  # no task yet


class CountingLock:
    """A lock that counts how often it is taken and checks it is released."""

    def __init__(self) -> None:
        self._lock, self.taken = threading.Lock(), 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.taken += 1

    def __exit__(self, *exc) -> None:
        self._lock.release()


def test_policy_values_in_their_published_order_from_gate_scheduler_and_prompt() -> None:
    gate = CommandGate(['l', 'r'], np.array([-1.0, -1.0]), np.array([1.0, 1.0]), 0.1, enabled=False)
    timing = Timing(dt=0.125, chunk_size=8, execution_horizon=4, chunk_start='arrival_compensated')
    scheduler: Scheduler[str] = Scheduler(timing, ['l', 'r'], ['top'], {'left': [0], 'right': [1]}, strategy='naive')
    scheduler.add_frame('top', 'frame', stamp=9.75, arrival=10.0)
    prompt = Prompt('fold')
    prompt.set_override('grasp')
    prompt.subtask = 'reach'
    lock = CountingLock()
    values = diagnostics.policy_values(gate, scheduler, prompt, ['fold'], lock)
    assert lock.taken == 1
    assert list(values) == [
        'enabled', 'estop', 'chunking', 'task', 'task_trained', 'subtask', 'subtask_override', 'stale_inputs',
        'commands_sent', 'rejected_outputs', 'limit_clips', 'velocity_clamps', 'blocked_ticks',
        'chunks', 'chunks_refused_late', 'time_jumps', 'inference_errors', 'inference_ms_p50', 'inference_ms_max',
        'rtc_delay_steps_planned', 'link_delay_ms', 'control_period_ms_p50', 'control_period_ms_p99',
        'control_period_ms_max', 'frame_to_command_ms_p50', 'frame_to_command_ms_p99', 'chunk_start',
        'chunk_start_before_snapshot_ms_p50',
        'input_delay_ms', 'camera_top_arrival_delay_ms_p50',
        'join_jump_max', 'join_jump_before_rtc_blend_max', 'rtc_joins_later_than_planned',
        'starved_ticks', 'bad_images', 'bad_joint_states', 'last_error',
    ]  # fmt: skip
    assert (values['enabled'], values['chunking'], values['task'], values['task_trained']) == (
        False, 'naive', 'fold', 'yes'
    )  # fmt: skip
    assert (values['subtask'], values['subtask_override'], values['stale_inputs']) == ('reach', 'grasp', 'no input yet')
    assert values['camera_top_arrival_delay_ms_p50'] == 250.0 and values['chunk_start'] == 'arrival_compensated'
    prompt.set_task('stack')
    assert diagnostics.policy_values(gate, scheduler, prompt, ['fold'], lock)['task_trained'] == 'no'
    assert diagnostics.policy_values(gate, scheduler, prompt, None, lock)['task_trained'] == 'unknown'


def test_startup_line_names_checkpoint_joints_cameras_timing_and_whether_enabled(tmp_path: Path) -> None:
    ckpt = tmp_path / 'tiny'
    ckpt.mkdir()
    cfg = PolicyConfig(checkpoint=str(ckpt), task='fold')
    settings = NodeSettings.resolve(cfg, checkpoint='', enabled=False, chunking='rtc', markers_every_n_chunks=1)
    model = SimpleNamespace(joint_names=['a', 'b', 'c'], camera_names=('top',), chunk_size=50, control_rate_hz=50.0)
    timing = Timing(dt=0.02, chunk_size=50, execution_horizon=5, action_time_offset_s=0.02)
    scheduler: Scheduler[str] = Scheduler(timing, ['a', 'b', 'c'], ['top'], {})
    line = diagnostics.startup_line(settings, model, scheduler, load_rig('aloha_sim'), 'paths')
    assert line == (
        "policy tiny: 3 joints, cameras ['top'], chunk 50 @ 50 Hz, chunking rtc, "
        'chunks start 20 ms before their snapshot, control 50 Hz, disabled (call policy/enable); markers: paths'
    )
