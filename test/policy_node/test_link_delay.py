"""Real-time chunking across a network link (policy_node/scheduler.py, chunking.py), without ROS.

With the policy on another computer, a chunk the node accepts at T reaches the robot at T + L (the
link's one-way delay), and the arm driver splices it in there. RTC must therefore freeze the
committed actions up to T + L, not T: the scheduler adds ``link_delay_s`` to the inference latency.
A late or lost chunk leaves the arms holding the last action; the next chunk must start there.

The "model" below disagrees with the executing chunk everywhere by 0.3 rad (the worst case for a
switch); only the guide's blending can make the switch continuous. Times are binary fractions.
"""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.policy_node.scheduler import Scheduler, Timing

DT = 1 / 32
JOINTS = ['left_a', 'right_a']
ARMS = {'left': np.array([0]), 'right': np.array([1])}
CAMS = ['top']
DISAGREE = 0.3


def make(chunk_size: int = 32, horizon: int = 8) -> Scheduler[str]:
    timing = Timing(dt=DT, chunk_size=chunk_size, execution_horizon=horizon, camera_max_age_s=0.5, joint_max_age_s=0.5)
    return Scheduler(timing, JOINTS, CAMS, ARMS, strategy='rtc', latency_margin=0.0)


def feed(s: Scheduler[str], t: float) -> None:
    s.add_frame('top', f'top@{t}', stamp=t, arrival=t)
    s.add_joints(t, JOINTS, [0.0, 0.0])


def ramp(t0: float, n: int, base: float = 0.0) -> np.ndarray:
    """A chunk moving 1 rad/s from ``base`` (both joints)."""
    return base + (np.arange(n)[:, None] * DT) * np.ones((1, len(JOINTS)))


def infer_and_accept(s: Scheduler[str], start: float, latency: float) -> tuple[object, object, float]:
    """An inference starting at ``start`` taking ``latency``: (inputs, outcome, arrival at the node)."""
    feed(s, start)
    inputs = s.plan_inference(start)
    assert inputs is not None
    current = s.executor.current
    new = np.stack([current.sample(inputs.t_obs + i * DT) for i in range(s.timing.chunk_size)]) + DISAGREE
    arrival = start + latency
    s.inference_finished(start, arrival, inputs.epoch)
    return inputs, s.accept_chunk(new, inputs, arrival), arrival


@pytest.mark.parametrize('link_s', [0.0, 3 / 32, 6 / 32])
def test_the_chunk_agrees_with_the_committed_actions_until_it_reaches_the_robot(link_s: float) -> None:
    s = make()
    feed(s, 10.0)
    first = s.plan_inference(10.0)
    assert s.accept_chunk(ramp(10.0, 32), first, 10.0).status == 'accepted'
    old = s.executor.current
    latency = 4 / 32
    s.latency.add(latency)
    s.link_delay_s = link_s
    inputs, outcome, arrival = infer_and_accept(s, 10.25, latency)
    assert outcome.status == 'accepted'
    # frozen steps cover inference and the link, rounded up, plus the step the switch interpolates to
    assert inputs.frozen_steps == round((latency + link_s) / DT) + 1
    at_robot = arrival + link_s  # where the arm driver splices the trajectory in
    for t in np.arange(arrival, at_robot + 1e-9, DT / 4):
        np.testing.assert_allclose(s.executor.sample(t).action, old.sample(t), atol=1e-12)


def test_without_the_link_in_the_estimate_the_robot_would_see_a_jump() -> None:
    """What the link term prevents: the same exchange planned for the node's switch only."""
    s = make()
    feed(s, 10.0)
    assert s.accept_chunk(ramp(10.0, 32), s.plan_inference(10.0), 10.0).status == 'accepted'
    old = s.executor.current
    s.latency.add(4 / 32)
    _, _, arrival = infer_and_accept(s, 10.25, 4 / 32)  # link_delay_s left at 0
    at_robot = arrival + 6 / 32
    jump = np.max(np.abs(s.executor.sample(at_robot).action - old.sample(at_robot)))
    assert jump > 0.05  # far above one control step of motion


def test_a_lost_chunk_holds_the_last_action_and_the_next_starts_there() -> None:
    s = make(chunk_size=16, horizon=8)
    feed(s, 10.0)
    assert s.accept_chunk(ramp(10.0, 16), s.plan_inference(10.0), 10.0).status == 'accepted'
    last = s.executor.current.actions[-1].copy()
    s.latency.add(2 / 32)
    s.link_delay_s = 2 / 32
    # The chunks planned at 10.25 and 10.5 were lost on the link. At 11.0 the arms hold the last action.
    t = 10.0
    while t < 11.0:
        t += DT
        feed(s, t)
        tick = s.tick(t)
        assert tick.action is not None
    np.testing.assert_allclose(tick.action, last)
    assert s.stats.starved_ticks > 0
    inputs, outcome, arrival = infer_and_accept(s, 11.0, 2 / 32)
    assert outcome.status == 'accepted' and inputs.plan is not None
    # the guide pinned the new chunk to the held action through its arrival at the robot
    np.testing.assert_allclose(inputs.plan.actions[: inputs.frozen_steps], np.tile(last, (inputs.frozen_steps, 1)))
    for u in np.arange(arrival, arrival + s.link_delay_s + 1e-9, DT / 4):
        np.testing.assert_allclose(s.executor.sample(u).action, last, atol=1e-12)
    # then it departs from the hold no faster than the model's own chunk
    steps = np.abs(np.diff(s.executor.current.actions, axis=0))
    assert steps.max() <= DISAGREE + 1e-9


@pytest.mark.parametrize('leads', [True, False])
def test_a_tick_sends_the_action_due_when_its_command_reaches_the_robot(leads: bool) -> None:
    """Tick mode across a link: the command sent at T acts at T + L, so the tick takes the chunk's action at
    T + L. Trajectory mode (``ticks_lead_by_link`` off) sends times the driver plays by: the action at T."""
    s = make()
    s.ticks_lead_by_link = leads
    feed(s, 10.0)
    assert s.accept_chunk(ramp(10.0, 32), s.plan_inference(10.0), 10.0).status == 'accepted'
    s.link_delay_s = 3 / 32
    t = 10.0 + 4 / 32
    feed(s, t)
    tick = s.tick(t)
    due = t + (s.link_delay_s if leads else 0.0)
    np.testing.assert_allclose(tick.action, s.executor.current.sample(due), atol=1e-12)
    np.testing.assert_allclose(tick.action, np.full(2, due - 10.0), atol=1e-12)  # the ramp: 1 rad/s from 0 at 10.0
