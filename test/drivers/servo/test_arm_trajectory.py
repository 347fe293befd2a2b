"""The arm_driver playing arms/<arm>/joint_trajectory on the emulated Feetech bus, over real Fast DDS.

Assertions read the goals the driver wrote to the emulated servos (``on_goal``, stamped when the
emulator took them), compared with the trajectory's value at that time.
"""

from __future__ import annotations

import pytest
from helpers.arm_driver import IDS, ArmHarness, K, ticks

from bimanual_vla import topics

pytestmark = pytest.mark.ros


def trajectory_msg(start: float, points: list[tuple[float, float]], joint: str = 'left_shoulder_pan'):
    """One joint's JointTrajectory: (time_from_start, position) points from ``start`` (ROS seconds)."""
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from bimanual_vla.ros_utils import sec_to_stamp

    msg = JointTrajectory(joint_names=[joint])
    msg.header.stamp = sec_to_stamp(start)
    for t, q in points:
        ns = round(t * 1e9)
        msg.points.append(
            JointTrajectoryPoint(positions=[q], time_from_start=Duration(sec=ns // 10**9, nanosec=ns % 10**9))
        )
    return msg


def ramp(q0: float, v: float, duration: float, dt: float = 0.02, t_offset: float = 0.0) -> list[tuple[float, float]]:
    n = round(duration / dt)
    return [(t_offset + i * dt, q0 + v * i * dt) for i in range(n + 1)]


@pytest.fixture
def arm(tmp_path, ros_context, spin):
    h = ArmHarness(tmp_path, ros_context, spin).start()
    h.timed: list[tuple[float, int]] = []  # (ROS time when the emulator took it, servo 1's goal ticks)

    def on_goal(sid: int, goal: int) -> None:
        if sid == 1:
            h.timed.append((ros_now(h), goal))

    h.emu.on_goal = on_goal
    from trajectory_msgs.msg import JointTrajectory

    h.traj_pub = h.peer.create_publisher(JointTrajectory, topics.arm_trajectory('left'), topics.TRAJECTORY_QOS)
    assert h.spin(lambda: h.traj_pub.get_subscription_count() == 1, 15), 'trajectory subscription not matched'
    yield h
    h.close()


def ros_now(h: ArmHarness) -> float:
    return h.node.get_clock().now().nanoseconds * 1e-9


def goal_rad(ticks_value: int) -> float:
    return (ticks_value - 2048) * K


@pytest.mark.slow
def test_trajectory_moves_goals_along_it_splices_without_a_jump_holds_and_estop_clears(arm) -> None:
    h = arm
    # 1. A 0.5 rad/s ramp from 0 to 0.4 rad, starting 0.2 s from now: the goals follow its times.
    start = ros_now(h) + 0.2
    h.traj_pub.publish(trajectory_msg(start, ramp(0.0, 0.5, 0.8)))
    assert h.spin(lambda: h.servo(1).goal_position == ticks(0.4), 5), h.timed[-3:]
    during = [(t, goal_rad(g)) for t, g in h.timed if start <= t <= start + 0.8]
    assert len(during) >= 20, f'{len(during)} goal writes while playing (100 Hz driver, 0.8 s)'
    for t, q in during:
        reference = 0.5 * (t - start)
        # Never ahead of the trajectory (a goal is its value at the cycle, written after), and behind it by at most
        # the time from the cycle's clock reading to the emulator taking the write (generous for a loaded machine).
        assert reference - 0.5 * 0.2 - K <= q <= reference + K, (t - start, q, reference)
    steps = [abs(b[1] - a[1]) for a, b in zip(during, during[1:], strict=False)]
    assert max(steps) <= 0.05 + K  # the driver's max step holds for trajectories too
    assert all(b[1] >= a[1] for a, b in zip(during, during[1:], strict=False))  # monotonic like the ramp

    # 2. Running out holds the last point, with no watchdog trip (0.5 s), and says so.
    d = h.fresh_diag(lambda d: d.get('trajectory') == 'holding')
    assert d['trajectory_finished'] == '1' and d['state'] == 'following'
    h.spin(lambda: False, 0.7)
    assert h.servo(1).goal_position == ticks(0.4) and h.fresh_diag(lambda d: True)['state'] == 'following'

    # 3. Splice: up 0.25 rad/s for 2 s; then a newer trajectory stamped 0.2 s in the past (a chunk that arrives
    # after its first actions) whose points before its arrival are 0.2 rad off (they must be dropped: the goal goes
    # from where the old one is to the first point after arrival), then goes back down. No jump.
    h.timed.clear()
    t1 = ros_now(h) + 0.1
    h.traj_pub.publish(trajectory_msg(t1, ramp(0.4, 0.25, 2.0)))
    assert h.spin(lambda: ros_now(h) > t1 + 0.5, 5)
    t2 = ros_now(h) - 0.2
    q2 = 0.4 + 0.25 * (t2 - t1)  # the old one's value at t2
    past = [(t, q + 0.2) for t, q in ramp(q2, 0.25, 0.18)]  # before the publish time: before any arrival
    agree = ramp(q2 + 0.25 * 0.3, 0.25, 0.1, t_offset=0.3)  # the first point after arrival (~0.2 s), 0.1 s later
    peak = q2 + 0.25 * 0.4
    down = [(0.4 + t, q) for t, q in ramp(peak, -0.25, 0.6)[1:]]
    h.traj_pub.publish(trajectory_msg(t2, past + agree + down))
    final = peak - 0.15
    assert h.spin(lambda: abs(goal_rad(h.servo(1).goal_position) - final) <= K, 5), (h.timed[-3:], final)
    h.spin(lambda: False, 0.2)
    # spliced twice: onto the held end of the first trajectory, then this one; nothing refused
    assert 'trajectory_rejected' not in h.fresh_diag(lambda d: d.get('trajectory_spliced') == '2')
    writes = [goal_rad(g) for _, g in h.timed]
    assert max(writes) <= peak + K  # turned where the new one turns; its dropped past points never showed
    steps = [abs(b - a) for a, b in zip(writes, writes[1:], strict=False)]
    # 0.25 rad/s: a few mrad per write; a jump shows as the driver's max step (0.05 rad) per write
    assert max(steps) < 0.03, max(steps)

    # 4. Beyond the joint limit (shoulder_pan: 1.0 rad), and faster than the driver allows: clamped and ramped.
    h.timed.clear()
    h.traj_pub.publish(trajectory_msg(ros_now(h), [(0.05, 1.6), (0.1, 1.6)]))
    assert h.spin(lambda: h.servo(1).goal_position == ticks(1.0), 5), h.timed[-3:]
    h.spin(lambda: False, 0.2)
    assert h.servo(1).goal_position == ticks(1.0)
    steps = [abs(b - a) * K for (_, a), (_, b) in zip(h.timed, h.timed[1:], strict=False)]
    assert steps and max(steps) <= 0.05 + K

    # 5. E-stop clears the trajectory: goals stop, nothing resumes after release; trajectories refused meanwhile.
    t3 = ros_now(h) + 0.05
    h.traj_pub.publish(trajectory_msg(t3, ramp(1.0, -0.5, 1.6)))
    assert h.spin(lambda: ros_now(h) > t3 + 0.3, 5)
    h.estop(True)
    assert h.spin(lambda: h.node.controller.filter.estopped, 5)
    h.spin(lambda: False, 0.3)  # a goal write already under way when the flag turned lands after it
    held = h.servo(1).goal_position
    assert held < ticks(1.0 - 0.05)  # it had started down
    d = h.fresh_diag(lambda d: d.get('estop') == 'True')
    assert d['trajectory'] == 'idle' and d['trajectory_cleared_estop'] == '1'
    h.traj_pub.publish(trajectory_msg(ros_now(h) + 0.05, ramp(0.0, 0.5, 0.4)))
    assert h.spin(lambda: h.node.controller.player.counters['rejected_estop'] == 1, 5)
    h.estop(False)
    assert h.spin(lambda: not h.node.controller.filter.estopped, 5)
    h.spin(lambda: False, 1.0)
    assert h.servo(1).goal_position == held  # the cleared trajectory did not resume

    # 6. The newest source wins: a joint command drops the trajectory in play.
    h.traj_pub.publish(trajectory_msg(ros_now(h) + 0.05, ramp(goal_rad(held), 0.2, 2.0)))
    assert h.spin(lambda: h.node.controller.player.state() == 'playing', 5)
    assert h.command_until(['left_shoulder_pan'], [0.0], lambda: h.servo(1).goal_position == ticks(0.0))
    assert h.node.controller.player.counters['cleared_command'] == 1
    assert [h.servo(i).goal_position for i in IDS[1:]] == [2048] * 5  # joints no trajectory named stayed put
