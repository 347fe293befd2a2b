"""The policy node over real rclpy/Fast DDS with a tiny random checkpoint and synthetic sensors.

The checkpoint is made by `bimanual-vla make-checkpoint --tiny` (in process, to share torch's
import). Synthetic cameras and joint_states are published by a helper node; what the policy
node sends is received over DDS and checked by value.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.policy_node import MAX_STEP, RATE, RIG, SyntheticRig, copy_checkpoint, wait_for, write_policy

from bimanual_vla import topics

pytestmark = [pytest.mark.ros, pytest.mark.slow]

VOCAB_SUBTASK = 'grasp the cube with the left arm'


@pytest.fixture(scope='module')
def nan_checkpoint(node_checkpoint, tmp_path_factory) -> Path:
    """The same checkpoint with one weight of the action output projection set to NaN."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp('ckpt') / 'nan'
    shutil.copytree(node_checkpoint, out)
    tensors = load_file(str(out / 'model.safetensors'))
    keys = [k for k in tensors if 'action_out_proj' in k and k.endswith('weight')]
    assert keys, f'no action_out_proj weight in {sorted(tensors)[:10]}...'
    tensors[keys[0]] = tensors[keys[0]].copy()
    tensors[keys[0]][0, 0] = np.nan
    save_file(tensors, str(out / 'model.safetensors'), metadata={'format': 'pt'})
    return out


def call_enable(rig: SyntheticRig, value: bool) -> tuple[bool, str]:
    from std_srvs.srv import SetBool

    client = rig.node.create_client(SetBool, topics.POLICY_ENABLE)
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(SetBool.Request(data=value))
    assert wait_for(future.done, 10)
    return future.result().success, future.result().message


def max_step_ok(msgs: list) -> float:
    """Largest per-tick change between consecutive received commands, scaled by the ticks between their stamps."""
    worst = 0.0
    for (_, a), (_, b) in zip(msgs, msgs[1:], strict=False):
        ta = a.header.stamp.sec + a.header.stamp.nanosec * 1e-9
        tb = b.header.stamp.sec + b.header.stamp.nanosec * 1e-9
        ticks = max(1, round((tb - ta) * RATE))
        step = np.max(np.abs(np.array(b.position) - np.array(a.position))) / ticks
        worst = max(worst, step)
    return worst


def test_streams_commands_reasoning_chunks_markers_and_honours_override(
    policy_harness, node_checkpoint, tmp_path
) -> None:
    from std_msgs.msg import String
    from visualization_msgs.msg import Marker

    rig, start = policy_harness
    node = start(write_policy(tmp_path, node_checkpoint))
    # Disabled at start: chunks and reasoning flow (preview), commands do not.
    assert wait_for(lambda: rig.count(rig.chunks) >= 2, 60), node.diagnostics_values()
    assert rig.count(rig.commands['left']) == 0
    assert wait_for(lambda: rig.count(rig.reasoning) >= 1, 20)
    assert rig.snapshot(rig.reasoning)[-1][1].data.strip() != ''

    assert call_enable(rig, True) == (True, 'enabled')
    assert wait_for(lambda: rig.count(rig.commands['left']) >= 100, 30), node.diagnostics_values()
    for arm in ('left', 'right'):
        msgs = rig.snapshot(rig.commands[arm])
        expected = [f'{arm}_{j.name}' for j in rig.rig.arm(arm).joints]
        assert all(list(m.name) == expected for _, m in msgs)
        assert all(np.all(np.isfinite(m.position)) for _, m in msgs)
        lower = np.array([j.lower for j in rig.rig.arm(arm).joints])
        upper = np.array([j.upper for j in rig.rig.arm(arm).joints])
        assert all(
            np.all((np.array(m.position) >= lower - 1e-9) & (np.array(m.position) <= upper + 1e-9)) for _, m in msgs
        )
        assert max_step_ok(msgs) <= MAX_STEP + 1e-9
        # Control rate: the typical spacing of command stamps is one 50 Hz period (the median tolerates the
        # occasional late tick on a loaded machine; a loop at the wrong rate or blocked by inference fails).
        stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in msgs])
        median_ms = float(np.median(np.diff(stamps))) * 1e3
        assert 15.0 <= median_ms <= 25.0, (median_ms, node.diagnostics_values())

    # The chunk message: every joint, H points spaced 1/50 s, stamped with its first point's time.
    _, chunk = rig.snapshot(rig.chunks)[-1]
    assert list(chunk.joint_names) == rig.joint_names
    assert len(chunk.points) == 100
    assert chunk.points[1].time_from_start.nanosec == 20_000_000
    assert chunk.header.stamp.sec > 0

    # Markers: one LINE_STRIP per arm with a point per action, and the reasoning text.
    _, markers = rig.snapshot(rig.markers)[-1]
    strips = [m for m in markers.markers if m.type == Marker.LINE_STRIP]
    texts = [m for m in markers.markers if m.type == Marker.TEXT_VIEW_FACING]
    assert sorted(m.ns.split('/')[-1] for m in strips) == ['left', 'right']
    assert all(len(m.points) == 100 for m in strips)
    assert len(texts) == 1 and texts[0].text

    # Coaching: the override becomes the subtask, published on policy/reasoning, until cleared.
    rig.subtask_pub.publish(String(data=VOCAB_SUBTASK))
    assert wait_for(lambda: any(m.data == VOCAB_SUBTASK for _, m in rig.snapshot(rig.reasoning)), 30)
    assert wait_for(
        lambda: any(t.text == f'[coach] {VOCAB_SUBTASK}' for _, a in rig.snapshot(rig.markers) for t in a.markers), 30
    )
    n_before_clear = rig.count(rig.reasoning)
    rig.subtask_pub.publish(String(data=''))
    assert wait_for(lambda: rig.count(rig.reasoning) > n_before_clear, 30)
    assert rig.snapshot(rig.reasoning)[-1][1].data != VOCAB_SUBTASK

    # RTC switches: the executor's own output (before the gate's velocity clamp) moves by less than one
    # max step where chunks join, although this untrained model's chunks are noise (naive jumps ~1 rad).
    # RTC's premise is that the result arrives within the planned delay; a latency spike beyond the
    # estimate (counted in diagnostics) voids it, so those joins are not held to the bound.
    joins = list(node.stats.joins)
    assert all(frozen > 0 for *_, frozen in joins), joins  # every join after the first was guided
    on_time = [(jump, raw) for jump, raw, start, frozen in joins if start <= frozen - 1]
    assert len(on_time) >= 3, joins
    assert max(jump for jump, _ in on_time) <= MAX_STEP, joins

    values = node.diagnostics_values()
    assert values['rejected_outputs'] == 0 and values['chunks'] >= 3


@pytest.mark.parametrize('chunk_start', ['snapshot', 'oldest_input'])
def test_a_chunk_starts_when_its_inputs_were_gathered_not_at_the_oldest_frame(
    policy_harness, node_checkpoint, tmp_path, chunk_start
) -> None:
    """Frames 0.3 s old: by default a chunk starts at the snapshot, as training samples do (dataset.py).

    Anchoring it at the oldest frame instead would execute every chunk 0.3 s ahead of where the
    model put it; that stays available as `chunk_start: oldest_input`.
    """
    from bimanual_vla.ros_utils import stamp_to_sec

    rig, start = policy_harness
    rig.camera_delay_s = 0.3
    node = start(write_policy(tmp_path, node_checkpoint, inference={'chunk_start': chunk_start}))
    assert wait_for(lambda: rig.count(rig.chunks) >= 3, 60), node.diagnostics_values()
    received = rig.snapshot(rig.chunks)
    image_stamps = np.array(rig.snapshot(rig.image_stamps))
    node_now = node.get_clock().now().nanoseconds * 1e-9
    for _, chunk in received:
        t0 = stamp_to_sec(chunk.header.stamp)
        assert t0 <= node_now
        nearest_frame = float(np.min(np.abs(image_stamps - t0)))
        if chunk_start == 'snapshot':
            # not a frame's stamp, and the frames it used (fresh: at most 0.5 s old) were 0.3 s old or more
            assert nearest_frame > 1e-4, t0
            ages = t0 - image_stamps
            assert np.any((ages >= 0.3 - 1e-3) & (ages <= 0.5)), (t0, image_stamps[-5:])
        else:
            assert nearest_frame < 1e-6, t0  # exactly the oldest input's stamp: a frame, 0.3 s older
            assert node_now - t0 >= 0.3


def start_with_late_frames(policy_harness, node_checkpoint, tmp_path, chunk_start: str):
    """A node whose frames arrive 0.3 s after their stamps while the first joint moves at 0.05 rad/s; 3 chunks in."""
    rig, start = policy_harness
    rig.camera_delay_s = 0.3
    rig.ramp_rad_s = 0.05
    node = start(write_policy(tmp_path, node_checkpoint, inference={'chunk_start': chunk_start}))
    assert wait_for(lambda: rig.count(rig.chunks) >= 3, 60), node.diagnostics_values()
    return rig, node


def test_synchronized_chunks_observe_when_every_input_had_arrived_with_the_joints_of_that_moment(
    policy_harness, node_checkpoint, tmp_path
) -> None:
    """Frames arriving 0.3 s after their stamps, joints fresh and moving.

    `chunk_start: synchronized` measures that delay and observes 0.3 s back: the frames are the latest
    stamped at or before that time, and the joints are their positions at that time, not now. That is
    how `train` pairs a sample. The chunk starts at that time.
    """
    from bimanual_vla.ros_utils import stamp_to_sec

    rig, node = start_with_late_frames(policy_harness, node_checkpoint, tmp_path, 'synchronized')
    assert 0.29 <= node.scheduler.input_delay_s() <= 0.45, node.scheduler.input_delay_s()
    values = node.diagnostics_values()
    assert values['chunk_start'] == 'synchronized' and 290 <= values['camera_top_arrival_delay_ms_p50'] <= 450

    now = node.now_s()
    snap = node.worker.snapshot()  # what the inference thread does, under the node's lock
    assert snap is not None
    t_sync = snap.stamp + node.action_time_offset_s
    assert 0.29 <= now - t_sync <= 0.45, (now, t_sync)
    for cam, stamp in snap.camera_stamps.items():  # the latest frame at or before t_sync: at most one period older
        assert t_sync - 1 / 15 - 0.02 <= stamp <= t_sync, (cam, stamp, t_sync)
    # joints at 50 Hz: the state at t_sync, 0.3 s (15 mrad at 0.05 rad/s) behind the latest one
    assert abs(snap.state[0] - rig.position_at(t_sync)[0]) <= 0.05 * 0.025, (snap.state[0], rig.position_at(t_sync))
    assert rig.position_at(now)[0] - snap.state[0] >= 0.05 * 0.25
    for _, chunk in rig.snapshot(rig.chunks):
        assert now - stamp_to_sec(chunk.header.stamp) >= 0.29


def test_arrival_compensated_chunks_start_earlier_by_the_frames_arrival_delay_with_the_latest_inputs(
    policy_harness, node_checkpoint, tmp_path
) -> None:
    """Frames arriving 0.3 s after their stamps, joints fresh and moving.

    `chunk_start: arrival_compensated` keeps the snapshot's inputs (the latest frames and joints, unlike
    `synchronized`) but starts the chunk 0.3 s earlier: the frames in hand are that much older than those
    a training sample at the snapshot would hold, and the model reads the phase from them.
    """
    from bimanual_vla.ros_utils import stamp_to_sec

    rig, node = start_with_late_frames(policy_harness, node_checkpoint, tmp_path, 'arrival_compensated')
    assert 0.29 <= node.scheduler.frame_arrival_delay_s() <= 0.36, node.scheduler.frame_arrival_delay_s()

    now = node.now_s()
    snap = node.worker.snapshot()
    assert snap is not None
    lead = now - (snap.stamp + node.action_time_offset_s)
    assert 0.29 <= lead <= 0.36, lead
    for cam, stamp in snap.camera_stamps.items():  # the latest frame that has arrived: about 0.3 s old, not older
        assert now - 0.3 - 1 / 15 - 0.03 <= stamp <= now - 0.29, (cam, stamp, now)
    # the joints of the moment (at 50 Hz), not of the chunk's start 0.3 s back
    assert abs(snap.state[0] - rig.position_at(now)[0]) <= 0.05 * 0.05, (snap.state[0], rig.position_at(now))
    values = node.diagnostics_values()
    assert values['chunk_start'] == 'arrival_compensated'
    assert 290 <= values['chunk_start_before_snapshot_ms_p50'] <= 360, values
    for _, chunk in rig.snapshot(rig.chunks)[1:]:  # the first may precede the delay estimate's first frames
        t0 = stamp_to_sec(chunk.header.stamp)
        nearest_frame = float(np.min(np.abs(np.array(rig.snapshot(rig.image_stamps)) - t0)))
        assert now - t0 >= 0.29 and nearest_frame > 1e-4, (now, t0)  # not a frame's stamp: snapshot less the delay


@pytest.mark.parametrize(('in_checkpoint', 'in_policy', 'expected'), [(0.25, None, 0.25), (0.25, 0.1, 0.1)])
def test_a_checkpoint_trained_on_late_stamped_commands_starts_its_chunks_that_much_earlier(
    policy_harness, node_checkpoint, tmp_path, in_checkpoint, in_policy, expected
) -> None:
    """`action_time_offset_s` from the checkpoint's metadata (learning/train_data.py), or the policy file's."""
    ckpt = tmp_path / 'offset_ckpt'
    shutil.copytree(node_checkpoint, ckpt)
    meta = ckpt / 'bimanual_vla.json'
    meta.write_text(json.dumps({**json.loads(meta.read_text()), 'action_time_offset_s': in_checkpoint}))
    inference = {} if in_policy is None else {'action_time_offset_s': in_policy}
    rig, start = policy_harness
    node = start(write_policy(tmp_path, ckpt, inference=inference))
    assert node.action_time_offset_s == expected
    assert wait_for(lambda: rig.count(rig.chunks) >= 1, 60), node.diagnostics_values()
    before = node.now_s()
    snap = node.worker.snapshot()  # what the inference thread does, under the node's lock
    after = node.now_s()
    assert snap is not None
    assert before - expected - 1e-6 <= snap.stamp <= after - expected + 1e-6


def test_stale_camera_stops_commands_and_fresh_inputs_resume(policy_harness, node_checkpoint, tmp_path) -> None:
    rig, start = policy_harness
    policy = write_policy(tmp_path, node_checkpoint, safety={'enabled_at_start': True})
    node = start(policy)
    assert wait_for(lambda: rig.count(rig.commands['right']) >= 20, 60), node.diagnostics_values()

    rig.cameras_on.discard('top')
    time.sleep(0.5 + 0.3)  # the camera max age plus slack for delivery
    stopped_at = rig.count(rig.commands['right'])
    time.sleep(1.5)
    assert rig.count(rig.commands['right']) == stopped_at, 'commands continued with a stale camera'
    values = node.diagnostics_values()
    assert 'camera top' in values['stale_inputs'], values
    assert wait_for(
        lambda: any(
            'camera top' in s.message for _, d in rig.snapshot(rig.diagnostics) for s in d.status if s.level == b'\x03'
        ),
        5,
    )

    rig.cameras_on.add('top')
    assert wait_for(lambda: rig.count(rig.commands['right']) >= stopped_at + 20, 60), node.diagnostics_values()
    # Resuming starts from the measured position, within one max step of it.
    _, first = rig.snapshot(rig.commands['right'])[stopped_at]
    measured = rig.position[[rig.joint_names.index(n) for n in first.name]]
    assert np.max(np.abs(np.array(first.position) - measured)) <= MAX_STEP + 1e-9


def test_nan_model_output_never_reaches_a_driver(policy_harness, nan_checkpoint, tmp_path) -> None:
    rig, start = policy_harness
    policy = write_policy(tmp_path, nan_checkpoint, safety={'enabled_at_start': True})
    node = start(policy)
    assert wait_for(lambda: node.diagnostics_values()['rejected_outputs'] >= 2, 60), node.diagnostics_values()
    time.sleep(0.5)
    assert rig.count(rig.commands['left']) == 0 and rig.count(rig.commands['right']) == 0
    assert rig.count(rig.chunks) == 0
    values = node.diagnostics_values()
    assert 'non-finite' in values['last_error'] or 'rejected' in values['last_error'], values
    assert wait_for(
        lambda: any(
            s.level == b'\x01' and 'rejected' in s.message for _, d in rig.snapshot(rig.diagnostics) for s in d.status
        ),
        5,
    )


def test_estop_stops_commands_and_requires_re_enable(policy_harness, node_checkpoint, tmp_path) -> None:
    from rclpy.qos import QoSProfile
    from std_msgs.msg import Bool

    rig, start = policy_harness
    node = start(write_policy(tmp_path, node_checkpoint, safety={'enabled_at_start': True}))
    assert wait_for(lambda: rig.count(rig.commands['left']) >= 10, 60), node.diagnostics_values()
    estop = rig.node.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
    assert isinstance(topics.LATCHED_QOS, QoSProfile)
    estop.publish(Bool(data=True))
    assert wait_for(lambda: node.gate.estop, 10)
    time.sleep(0.2)
    count = rig.count(rig.commands['left'])
    time.sleep(0.6)
    assert rig.count(rig.commands['left']) == count
    ok, message = call_enable(rig, True)
    assert not ok and 'e-stop' in message
    estop.publish(Bool(data=False))
    assert wait_for(lambda: not node.gate.estop, 10)
    time.sleep(0.4)
    assert rig.count(rig.commands['left']) == count, 'released e-stop resumed motion without enable'
    assert call_enable(rig, True) == (True, 'enabled')
    assert wait_for(lambda: rig.count(rig.commands['left']) >= count + 10, 30)


def test_sim_time_jumping_back_drops_the_old_chunk_and_infers_on_the_new_timeline(
    policy_harness, node_checkpoint, tmp_path
) -> None:
    """A sim reset (or a looping bag) sends ROS time backwards: the node must keep acting on the new timeline."""
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock

    from bimanual_vla.ros_utils import sec_to_stamp, stamp_to_sec

    rig, start = policy_harness
    sim_now, jump_to = [100.0], [None]
    clock_pub = rig.node.create_publisher(Clock, topics.CLOCK, topics.CLOCK_QOS)
    running = threading.Event()
    running.set()

    def tick_clock() -> None:  # 1x real time, 100 Hz
        while running.is_set():
            target, jump_to[0] = jump_to[0], None
            sim_now[0] = sim_now[0] + 0.01 if target is None else target
            clock_pub.publish(Clock(clock=sec_to_stamp(sim_now[0])))
            time.sleep(0.01)

    ticker = threading.Thread(target=tick_clock, daemon=True)
    ticker.start()
    try:
        rig.node.set_parameters([Parameter('use_sim_time', value=True)])
        policy = write_policy(tmp_path, node_checkpoint, safety={'enabled_at_start': True})
        node = start(policy, use_sim_time=True)
        assert wait_for(lambda: rig.count(rig.commands['left']) >= 20, 60), node.diagnostics_values()
        assert all(stamp_to_sec(m.header.stamp) > 99 for _, m in rig.snapshot(rig.chunks))

        assert wait_for(lambda: rig.count(rig.reasoning) >= 1, 30)
        reasoning_before = rig.count(rig.reasoning)
        jump_to[0] = 1.0  # the reset (the clock thread is the only writer of sim_now)
        stale_seen: list[str] = []
        deadline = time.monotonic() + 10
        while node.stats.time_jumps < 1 and time.monotonic() < deadline:
            stale_seen += node.scheduler.stale
            time.sleep(0.001)
        assert node.stats.time_jumps >= 1, node.diagnostics_values()
        for _ in range(300):  # the ticks right after the jump, until the new timeline's inputs arrive
            stale_seen += node.scheduler.stale
            time.sleep(0.001)
        # inputs of the old timeline are forgotten at the jump, not reported as "-99 s old"
        assert not [s for s in stale_seen if ' -' in s], stale_seen
        jumped_at = rig.count(rig.chunks)  # + at most the one chunk that was already being published
        # the old episode's subtask is retracted, then the new timeline's first one is published
        # (this tiny model writes the same text on both: published again all the same)
        assert wait_for(lambda: rig.count(rig.reasoning) >= reasoning_before + 2, 30)
        after = [m.data for _, m in rig.snapshot(rig.reasoning)[reasoning_before:]]
        assert after[0] == '' and after[1], after

        def new_timeline(store) -> list:
            return [m for _, m in rig.snapshot(store) if stamp_to_sec(m.header.stamp) < 50]

        assert wait_for(lambda: len(new_timeline(rig.chunks)) >= 2, 30), node.diagnostics_values()
        assert wait_for(lambda: len(new_timeline(rig.commands['left'])) >= 20, 30), node.diagnostics_values()
        assert node.stats.time_jumps == 1
        # Nothing planned on the old timeline was published after the jump had been seen.
        late_old = [m for _, m in rig.snapshot(rig.chunks)[jumped_at + 1 :] if stamp_to_sec(m.header.stamp) > 50]
        assert late_old == []
    finally:
        running.clear()
        ticker.join(timeout=2)


def test_rtc_plans_with_latency_in_ros_time_when_the_sim_runs_slower_than_real_time(
    policy_harness, node_checkpoint, tmp_path
) -> None:
    """RTC freezes control steps of ROS time. With the sim clock at a quarter of real time, an inference
    that takes w wall seconds spans w / 4 of them, and the latency the node plans with must say so."""
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock

    from bimanual_vla.ros_utils import sec_to_stamp

    rig, start = policy_harness
    clock_pub = rig.node.create_publisher(Clock, topics.CLOCK, topics.CLOCK_QOS)
    running = threading.Event()
    running.set()

    def tick_clock() -> None:  # 0.25x real time, 200 Hz
        sim_now = 100.0
        while running.is_set():
            sim_now += 0.00125
            clock_pub.publish(Clock(clock=sec_to_stamp(sim_now)))
            time.sleep(0.005)

    ticker = threading.Thread(target=tick_clock, daemon=True)
    ticker.start()
    try:
        rig.node.set_parameters([Parameter('use_sim_time', value=True)])
        policy = write_policy(tmp_path, node_checkpoint, inference={'rtc_latency_margin': 0.0})
        node = start(policy, use_sim_time=True)
        assert wait_for(lambda: node.stats.chunks >= 8, 90), node.diagnostics_values()
        ros_s = np.array(list(node.latency._recent))
        wall_s = np.array(list(node.stats.inference_ms)) / 1e3
        assert len(ros_s) >= 5 and np.all(ros_s >= 0)
        # a quarter, give or take the clock's 1.25 ms steps and the work around the model call
        assert np.median(ros_s) < 0.5 * np.median(wall_s), (ros_s, wall_s)
        assert np.median(ros_s) > 0.1 * np.median(wall_s), (ros_s, wall_s)
    finally:
        running.clear()
        ticker.join(timeout=2)


def test_policy_node_in_a_process_of_its_own_drives_this_one_through_topics(
    policy_harness, node_checkpoint, tmp_path
) -> None:
    """`compose`'s default: the policy node in a child process (bimanual_vla/bringup/node_process.py), the rig here."""
    import os

    from bimanual_vla.bringup.node_process import NodeProcess
    from bimanual_vla.bringup.nodes import NodeSpec

    rig, _ = policy_harness
    spec = NodeSpec('policy_node', 'policy_node', {'rig': RIG, 'policy': str(write_policy(tmp_path, node_checkpoint))})
    with NodeProcess(spec) as child:
        assert child.alive() and child.process.pid != os.getpid()
        assert wait_for(lambda: rig.count(rig.reasoning) >= 1, 60)
        assert call_enable(rig, True) == (True, 'enabled')
        assert wait_for(lambda: rig.count(rig.commands['left']) >= 50, 60)
        for arm in ('left', 'right'):
            joints = rig.rig.arm(arm).joints
            lower, upper = np.array([j.lower for j in joints]), np.array([j.upper for j in joints])
            for _, msg in rig.snapshot(rig.commands[arm]):
                assert list(msg.name) == [f'{arm}_{j.name}' for j in joints]
                assert np.all(np.isfinite(msg.position))
                assert np.all(np.array(msg.position) >= lower - 1e-9) and np.all(np.array(msg.position) <= upper + 1e-9)
        policy_status = [s for _, d in rig.snapshot(rig.diagnostics) for s in d.status if 'policy_node' in s.name]
        assert policy_status, 'no diagnostics from the child process'
    assert not child.alive()
    assert child.process.exitcode == 0  # asked to stop, it finished cleanly (not terminated)
    sent = rig.count(rig.commands['left'])
    time.sleep(0.5)
    assert rig.count(rig.commands['left']) == sent  # and nothing is sent once it has stopped


def _running(pid: int) -> bool:
    """The process exists and has not exited (an orphan's zombie waits for init to reap it)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(')', 1)[1].split()[0] != 'Z'


def test_a_child_node_process_stops_when_its_parent_is_killed(node_checkpoint, tmp_path) -> None:
    """SIGKILL runs no exit handler in the parent: the child must notice by itself and stop."""
    import os
    import signal
    import subprocess
    import sys

    policy = write_policy(tmp_path, node_checkpoint)
    script = (
        'import sys, time\n'
        'from bimanual_vla.bringup.nodes import NodeSpec\n'
        'from bimanual_vla.bringup.node_process import NodeProcess\n'
        f"spec = NodeSpec('policy_node', 'policy_node', {{'rig': {RIG!r}, 'policy': {str(policy)!r}}})\n"
        'child = NodeProcess(spec, ready_timeout_s=90).start()\n'
        'print(child.process.pid, flush=True)\n'
        'time.sleep(600)\n'
    )
    parent = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f'the parent did not start its child: {line!r}'
        child_pid = int(line)
        assert _running(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not _running(child_pid):
                break
            time.sleep(0.1)
        else:
            os.kill(child_pid, signal.SIGKILL)
            raise AssertionError('the policy node outlived its killed parent by 20 s')
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_node_failing_in_its_own_process_raises_its_error_here(tmp_path) -> None:
    from bimanual_vla.bringup.node_process import NodeProcess
    from bimanual_vla.bringup.nodes import NodeSpec
    from bimanual_vla.config import ConfigError

    missing = tmp_path / 'no_such_checkpoint'
    spec = NodeSpec('policy_node', 'policy_node', {'rig': RIG, 'checkpoint': str(missing)})
    child = NodeProcess(spec, ready_timeout_s=60)
    with pytest.raises(ConfigError) as err:  # a user's error: the child's one line, naming the node
        child.start()
    assert str(err.value).startswith(f'policy_node: checkpoint {missing} ')  # the child's own message
    assert not child.alive()


def test_a_task_the_checkpoint_was_not_trained_on_is_flagged(policy_harness, node_checkpoint, tmp_path) -> None:
    """The checkpoint records its training prompts: another prompt (a typo, say) turns diagnostics WARN."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from std_msgs.msg import String

    rig, start = policy_harness
    ck = copy_checkpoint(node_checkpoint, tmp_path / 'ck')
    meta = json.loads((ck / 'bimanual_vla.json').read_text())
    (ck / 'bimanual_vla.json').write_text(json.dumps({**meta, 'tasks': ['transfer the cube to the left arm']}))
    node = start(write_policy(tmp_path, ck))  # the policy file's task is the trained one
    assert node.diagnostics_values()['task_trained'] == 'yes'
    rig.task_pub.publish(String(data='transfer the cube to the left hand'))
    assert wait_for(lambda: node.diagnostics_values()['task_trained'] == 'no', 10)

    def flagged() -> bool:
        return any(
            s.level == DiagnosticStatus.WARN and 'not among the checkpoint' in s.message
            for _, m in rig.snapshot(rig.diagnostics)
            for s in m.status
        )

    assert wait_for(flagged, 10), [s.message for _, m in rig.snapshot(rig.diagnostics) for s in m.status][-3:]
