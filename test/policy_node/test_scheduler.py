"""The policy node's timing decisions (policy_node/scheduler.py), driven with plain seconds and checked by value.

Times and steps are binary fractions (dt = 1/32 s), so every expected time below is exact.
"""

from __future__ import annotations

import math

import numpy as np

from bimanual_vla.policy_node.scheduler import TIME_JUMP_TOLERANCE_S, Scheduler, Timing

DT = 1 / 32
OFFSET = 0.0625  # action_time_offset_s
JOINTS = ['left_a', 'left_b', 'right_a', 'right_b', 'extra']
ARMS = {'left': np.array([0, 1]), 'right': np.array([2, 3])}
CAMS = ['top', 'wrist']


def make(
    chunk_start: str = 'snapshot', strategy: str = 'rtc', horizon: int = 4, chunk_size: int = 16
) -> tuple[Scheduler[str], list[float]]:
    """A scheduler (camera max age 0.5 s, joints 0.25 s, latency = the max of the last ones) and its time jumps."""
    jumps: list[float] = []
    timing = Timing(
        dt=DT,
        chunk_size=chunk_size,
        execution_horizon=horizon,
        chunk_start=chunk_start,  # type: ignore[arg-type]
        action_time_offset_s=OFFSET,
        camera_max_age_s=0.5,
        joint_max_age_s=0.25,
    )
    scheduler: Scheduler[str] = Scheduler(
        timing, JOINTS, CAMS, ARMS, strategy=strategy, latency_margin=0.0, on_time_jump=jumps.append
    )
    return scheduler, jumps


def feed(s: Scheduler[str], t: float, *, frame_delay: float = 0.0, joints: float = 1.0) -> None:
    """Every camera's frame stamped ``t - frame_delay`` arriving at ``t``, and every joint at ``joints``, stamped t."""
    for cam in CAMS:
        s.add_frame(cam, f'{cam}@{t - frame_delay}', stamp=t - frame_delay, arrival=t)
    s.add_joints(t, JOINTS, [joints] * len(JOINTS))


def actions(h: int, start: float = 0.0) -> np.ndarray:
    """Joint j at step i is start + i + 10 j."""
    return start + np.arange(h)[:, None] + 10.0 * np.arange(len(JOINTS))[None, :]


# ------------------------------------------------------------------ inputs


def test_stale_inputs_name_what_is_missing_or_too_old() -> None:
    s, _ = make()
    assert s.stale == ['no input yet']
    assert s.stale_inputs(10.0) == [
        'camera top: no frame',
        'camera wrist: no frame',
        'joints left: none yet',
        'joints right: none yet',
        "joints ['extra']: stale",
    ]
    feed(s, 10.0)
    assert s.stale_inputs(10.25) == []
    assert s.stale_inputs(10.5) == ['joints left: 0.50 s old', 'joints right: 0.50 s old', "joints ['extra']: stale"]
    assert s.stale_inputs(10.625) == [
        'camera top: 0.62 s old',
        'camera wrist: 0.62 s old',
        'joints left: 0.62 s old',
        'joints right: 0.62 s old',
        "joints ['extra']: stale",
    ]
    # stamped in the future beyond the max age counts too
    assert s.stale_inputs(9.375) == ['camera top: -0.62 s old', 'camera wrist: -0.62 s old', 'joints left: -0.62 s old',
                                     'joints right: -0.62 s old', "joints ['extra']: stale"]  # fmt: skip


def test_joint_states_outside_the_checkpoint_are_ignored_and_non_finite_ones_counted() -> None:
    s, _ = make()
    s.add_joints(10.0, ['left_a', 'other_arm_x', 'left_b'], [0.5, 9.0, math.nan])
    assert s.joint_pos[0] == 0.5 and math.isnan(s.joint_pos[1])
    assert s.joint_stamp.tolist() == [10.0, -math.inf, -math.inf, -math.inf, -math.inf]
    assert s.stats.bad_joint_states == 1


def test_a_joint_state_whose_names_and_positions_differ_in_number_is_counted_and_not_stored() -> None:
    s, _ = make()
    s.add_joints(10.0, ['left_a', 'left_b'], [0.5])
    assert s.stats.bad_joint_states == 1
    assert np.isnan(s.joint_pos).all() and np.isinf(s.joint_stamp).all()


def test_arrival_delays_per_camera_and_their_cap() -> None:
    s, _ = make()
    s.add_frame('top', 'a', stamp=9.875, arrival=9.9375)  # 62.5 ms late
    s.add_frame('wrist', 'b', stamp=9.8125, arrival=10.0)  # 187.5 ms late
    assert s.frame_arrival_delay_s() == 0.125  # the medians, averaged
    assert s.input_delay_s() == 0.1875  # the slowest camera's
    assert s.arrival_values() == {
        'input_delay_ms': 187.5,
        'camera_top_arrival_delay_ms_p50': 62.5,
        'camera_wrist_arrival_delay_ms_p50': 187.5,
    }
    s2, _ = make()
    assert s2.frame_arrival_delay_s() == 0.0 and s2.input_delay_s() == 0.0
    for cam in CAMS:
        s2.add_frame(cam, 'x', stamp=9.0, arrival=10.0)
    assert s2.frame_arrival_delay_s() == 0.5  # never further back than camera_max_age_s


# --------------------------------------------------------------- anchoring


def test_snapshot_chunks_start_at_the_snapshot_less_the_action_time_offset() -> None:
    s, _ = make('snapshot')
    feed(s, 10.0, frame_delay=0.125, joints=2.0)
    inputs = s.plan_inference(10.0)
    assert inputs is not None
    assert inputs.t_obs == 10.0 - OFFSET == 9.9375
    assert inputs.camera_stamps == {'top': 9.875, 'wrist': 9.875}
    assert inputs.frames == {'top': 'top@9.875', 'wrist': 'wrist@9.875'}
    assert inputs.state.tolist() == [2.0] * 5
    assert (inputs.plan, inputs.frozen_steps, inputs.epoch) == (None, 0, 0)  # nothing executing: unguided
    assert list(s.stats.chunk_lead_ms) == [62.5]


def test_arrival_compensated_chunks_start_earlier_by_the_frames_median_arrival_delay() -> None:
    s, _ = make('arrival_compensated')
    s.add_frame('top', 'a', stamp=9.875, arrival=9.9375)
    s.add_frame('wrist', 'b', stamp=9.8125, arrival=10.0)
    s.add_joints(10.0, JOINTS, [3.0] * 5)
    inputs = s.plan_inference(10.0)
    assert inputs is not None
    assert inputs.t_obs == 10.0 - OFFSET - 0.125 == 9.8125
    assert inputs.frames == {'top': 'a', 'wrist': 'b'}  # the latest inputs, not older ones
    assert inputs.state.tolist() == [3.0] * 5
    assert list(s.stats.chunk_lead_ms) == [187.5]


def test_oldest_input_chunks_start_at_the_oldest_stamp_without_the_offset() -> None:
    s, _ = make('oldest_input')
    s.add_frame('top', 'a', stamp=9.875, arrival=9.9375)
    s.add_frame('wrist', 'b', stamp=9.8125, arrival=10.0)
    s.add_joints(9.96875, ['left_a', 'left_b'], [1.0, 1.0])
    s.add_joints(10.0, ['right_a', 'right_b', 'extra'], [1.0, 1.0, 1.0])
    inputs = s.plan_inference(10.0)
    assert inputs is not None and inputs.t_obs == 9.8125
    s.add_frame('wrist', 'c', stamp=10.0, arrival=10.0)
    s.add_frame('top', 'd', stamp=10.0, arrival=10.0)
    inputs = s.plan_inference(10.0)
    assert inputs is not None and inputs.t_obs == 9.96875  # now the joints of the left arm are the oldest


def test_synchronized_chunks_observe_every_input_at_now_less_the_input_delay() -> None:
    s, _ = make('synchronized')
    s.add_frame('top', 'top1', stamp=9.75, arrival=9.8125)  # 62.5 ms late
    s.add_frame('top', 'top2', stamp=9.875, arrival=9.9375)
    s.add_frame('wrist', 'wrist1', stamp=9.6875, arrival=9.8125)  # 125 ms late
    s.add_frame('wrist', 'wrist2', stamp=9.8125, arrival=9.9375)
    for t, q in [(9.8125, 1.0), (9.875, 2.0), (9.9375, 3.0), (10.0, 4.0)]:
        s.add_joints(t, JOINTS, [q] * 5)
    inputs = s.plan_inference(10.0)
    assert inputs is not None
    # t_sync = 10 - 0.125 (the slowest camera's delay): the latest of each input at or before it
    assert inputs.t_obs == 9.875 - OFFSET == 9.8125
    assert inputs.frames == {'top': 'top2', 'wrist': 'wrist2'}
    assert inputs.camera_stamps == {'top': 9.875, 'wrist': 9.8125}
    assert inputs.state.tolist() == [2.0] * 5  # the joints at t_sync, not the latest (4.0)
    assert list(s.stats.chunk_lead_ms) == [187.5]


def test_synchronized_skips_an_inference_until_every_input_has_something_that_old() -> None:
    s, _ = make('synchronized')
    s.add_frame('top', 'a', stamp=9.9375, arrival=10.0)
    s.add_frame('wrist', 'b', stamp=9.875, arrival=10.0)
    s.add_joints(10.0, JOINTS, [1.0] * 5)
    assert s.input_delay_s() == 0.125
    assert s.plan_inference(10.0) is None  # top has no frame at or before 9.875
    assert list(s.stats.chunk_lead_ms) == []


def test_stale_inputs_plan_no_inference() -> None:
    s, _ = make()
    feed(s, 10.0)
    assert s.plan_inference(10.5) is None


# ------------------------------------------------------------------ RTC plan


def test_rtc_freezes_the_steps_executed_before_the_expected_arrival() -> None:
    s, _ = make('snapshot', chunk_size=16)
    feed(s, 10.0)
    first = s.plan_inference(10.0)
    assert first is not None
    s.inference_finished(started=10.0, now=10.09375, epoch=first.epoch)  # 3 steps of latency
    assert s.rtc_delay_steps_planned() == 4  # ceil(latency / dt) + 1
    assert s.accept_chunk(actions(16), first, now=10.0).status == 'accepted'
    feed(s, 10.0625)
    second = s.plan_inference(10.0625)
    assert second is not None and second.t_obs == 10.0
    # expected arrival (10.0625 + 0.09375 - 10.0) / dt = step 5, so steps 0..5 are committed: d = 6
    assert second.frozen_steps == 6
    assert second.plan is not None
    # overlap with the executing chunk (t0 9.9375, last step 10.40625): 14 steps from 10.0
    assert second.plan.weights.shape == (14,)
    assert second.plan.weights[:6].tolist() == [1.0] * 6 and second.plan.weights[-1] > 0
    assert second.plan.actions[:, 0].tolist() == [float(i) for i in range(2, 16)]  # what the first chunk commands
    assert second.plan.t0 == 10.0


def test_an_inference_across_a_time_jump_measures_no_latency() -> None:
    s, _ = make()
    s.note_time(10.0)
    s.note_time(2.0)
    s.inference_finished(started=9.9, now=2.0, epoch=0)
    assert s.latency.estimate_s is None
    s.inference_finished(started=2.0, now=2.0625, epoch=1)
    assert s.latency.estimate_s == 0.0625


# --------------------------------------------------------- chunks arriving


def test_a_chunk_entirely_in_the_past_is_refused() -> None:
    s, _ = make()
    feed(s, 10.0)
    inputs = s.plan_inference(10.0)  # t_obs 9.9375
    assert inputs is not None
    outcome = s.accept_chunk(actions(4), inputs, now=10.0625)  # last step at 10.03125
    assert outcome.status == 'refused'
    assert s.stats.chunks_refused == 1 and s.stats.chunks == 0
    assert s.stats.last_error == 'chunk refused (late): inference slower than the chunk'
    assert s.executor.current is None and s.take_pending_frames() is None
    # its last step exactly now: still accepted
    assert s.accept_chunk(actions(4), inputs, now=10.03125).status == 'accepted'


def test_a_chunk_older_than_the_executing_one_is_refused() -> None:
    s, _ = make()
    feed(s, 10.0)
    older = s.plan_inference(10.0)
    newer = s.plan_inference(10.03125)
    assert older is not None and newer is not None
    assert s.accept_chunk(actions(16), newer, now=10.0625).status == 'accepted'
    assert s.accept_chunk(actions(16), older, now=10.0625).status == 'refused'
    assert s.stats.last_error == 'chunk refused (stale): inference slower than the chunk'
    assert (s.stats.chunks, s.stats.chunks_refused) == (1, 1)


def test_accepted_chunks_count_joins_and_hand_their_frame_stamps_to_the_first_command() -> None:
    s, _ = make(strategy='naive')
    feed(s, 10.0, frame_delay=0.03125)
    first = s.plan_inference(10.0)
    assert first is not None
    outcome = s.accept_chunk(actions(16), first, now=10.0)
    assert outcome.status == 'accepted' and outcome.chunk is not None
    assert (outcome.chunk.t0, outcome.chunk.seq) == (9.9375, 0)
    second = s.plan_inference(10.0625)
    assert second is not None
    assert s.accept_chunk(actions(16, start=0.5), second, now=10.0625).chunk.seq == 1  # type: ignore[union-attr]
    assert s.stats.chunks == 2
    # joined at the new chunk's step 2 (10.0625), where the old one commands 4.0 and the new one 2.5
    assert list(s.stats.join_jumps) == [1.5]
    assert list(s.stats.joins) == [(1.5, 1.5, 2.0, 0)]
    assert s.take_pending_frames() == {'top': 10.0 - 0.03125, 'wrist': 10.0 - 0.03125}
    assert s.take_pending_frames() is None


def test_a_non_finite_chunk_is_invalid_and_never_executed() -> None:
    s, _ = make()
    feed(s, 10.0)
    inputs = s.plan_inference(10.0)
    assert inputs is not None
    bad = actions(16)
    bad[3, 1] = math.nan
    outcome = s.accept_chunk(bad, inputs, now=10.0)
    assert (outcome.status, outcome.chunk) == ('invalid', None)
    assert s.stats.nonfinite_chunks == 1 and s.stats.chunks == 0
    assert s.stats.last_error == 'chunk rejected: chunk contains NaN/Inf actions; refusing to execute it'
    assert s.executor.current is None


# ------------------------------------------------------------ control ticks


def test_ticks_command_the_action_at_now_and_hold_the_last_one_when_starved() -> None:
    s, _ = make(strategy='naive')
    feed(s, 10.0)
    inputs = s.plan_inference(10.0 + OFFSET)  # t_obs 10.0
    assert inputs is not None
    assert s.accept_chunk(actions(4), inputs, now=10.0625).status == 'accepted'  # steps at 10.0 .. 10.09375
    tick = s.tick(10.078125)  # half-way between steps 2 and 3
    assert tick.action is not None and tick.action.tolist() == [2.5, 12.5, 22.5, 32.5, 42.5]
    assert tick.stale == [] and tick.was_stale == ['no input yet']
    assert tick.measured.tolist() == [1.0] * 5
    assert s.tick(10.09375).action.tolist() == [3.0, 13.0, 23.0, 33.0, 43.0]  # type: ignore[union-attr]
    assert s.stats.starved_ticks == 0
    held = s.tick(10.125)  # past the last step: hold it
    assert held.action is not None and held.action.tolist() == [3.0, 13.0, 23.0, 33.0, 43.0]
    assert s.stats.starved_ticks == 1
    s.tick(10.15625)
    assert s.stats.starved_ticks == 2


def test_a_tick_with_stale_inputs_proposes_nothing_and_drops_the_executing_chunk() -> None:
    s, _ = make()
    feed(s, 10.0)
    inputs = s.plan_inference(10.0)
    assert inputs is not None
    s.accept_chunk(actions(16), inputs, now=10.0)
    assert s.tick(10.125).action is not None
    tick = s.tick(10.375)  # joints 0.375 s old
    assert tick.action is None
    assert tick.stale == ['joints left: 0.38 s old', 'joints right: 0.38 s old', "joints ['extra']: stale"]
    assert tick.was_stale == []
    assert s.executor.current is None
    assert s.stats.starved_ticks == 0


def test_no_chunk_yet_proposes_nothing_without_counting_a_starved_tick() -> None:
    s, _ = make()
    feed(s, 10.0)
    tick = s.tick(10.0)
    assert tick.action is None and tick.stale == []
    assert s.stats.starved_ticks == 0


def test_control_periods_and_frame_to_command_delays_are_recorded_for_diagnostics() -> None:
    s, _ = make()
    s.note_tick_wall(100.0)
    assert list(s.stats.tick_periods_ms) == []  # the first tick has no period
    s.note_tick_wall(100.03125)
    s.note_tick_wall(100.0625)
    assert list(s.stats.tick_periods_ms) == [31.25, 31.25]
    s.note_commanded(None, 10.0)
    assert list(s.stats.frame_to_command_ms) == []
    s.note_commanded({'top': 9.9375, 'wrist': 9.875}, 10.0)
    assert list(s.stats.frame_to_command_ms) == [62.5, 125.0]


# ------------------------------------------------------------------- pacing


def test_inference_is_paced_every_execution_horizon_while_a_chunk_executes() -> None:
    s, _ = make(horizon=4)
    assert s.timing.pacing_s == 0.125
    assert s.inference_due(10.0)  # nothing run yet
    feed(s, 10.0)
    s.pace(started=10.0, epoch=0)
    assert s.inference_due(10.0625)  # nothing executing: at once
    inputs = s.plan_inference(10.0)
    assert inputs is not None
    s.accept_chunk(actions(16), inputs, now=10.0)
    assert not s.inference_due(10.0625)
    assert not s.inference_due(10.124)
    assert s.inference_due(10.125)


def test_pacing_never_waits_longer_than_a_chunk() -> None:
    s, _ = make(horizon=50, chunk_size=16)
    assert s.timing.pacing_s == 0.5  # 16 steps, not 50


# --------------------------------------------------------------- time jumps


def test_time_going_back_starts_a_new_timeline() -> None:
    s, jumps = make()
    feed(s, 10.0)
    inputs = s.plan_inference(10.0)
    assert inputs is not None
    s.accept_chunk(actions(16), inputs, now=10.0)
    s.pace(started=10.0, epoch=0)
    assert not s.inference_due(10.0625)
    s.note_time(10.0 - TIME_JUMP_TOLERANCE_S)  # the two threads reading the clock a moment apart
    assert (jumps, s.epoch, s.stats.time_jumps) == ([], 0, 0)
    s.add_frame('top', 'reset-frame', stamp=2.0, arrival=2.0)  # the new episode's first frame, before the jump
    tick = s.tick(2.0)
    assert jumps == [8.0] and s.epoch == 1 and s.stats.time_jumps == 1
    assert s.executor.current is None and tick.action is None
    assert s.take_pending_frames() is None
    # inputs stamped in the new timeline's future are forgotten; the new episode's own are kept
    assert s.frames == {'top': (2.0, 'reset-frame')}
    assert s.joint_stamp.tolist() == [-math.inf] * 5
    assert tick.stale[:2] == ['camera wrist: no frame', 'joints left: none yet']
    assert s.inference_due(2.0)  # re-paced from now
    # the chunk observed on the old timeline is dropped when it arrives, without counting as refused
    outcome = s.accept_chunk(actions(16), inputs, now=2.03125)
    assert outcome.status == 'old_timeline'
    assert (s.stats.chunks, s.stats.chunks_refused, s.executor.current) == (1, 0, None)
    s.note_time(2.0)
    assert s.stats.time_jumps == 1  # time going forward again is no jump


def test_chunk_start_text_for_the_start_up_log() -> None:
    assert make('snapshot')[0].chunk_start_text() == 'chunks start 62.5 ms before their snapshot'
    assert make('oldest_input')[0].chunk_start_text() == 'chunks start at their oldest input'
    assert make('synchronized')[0].chunk_start_text() == (
        'chunks start 62.5 ms before the time every input has arrived for'
    )
    assert make('arrival_compensated')[0].chunk_start_text() == (
        "chunks start 62.5 ms before their snapshot, and earlier by the frames' arrival delay"
    )
