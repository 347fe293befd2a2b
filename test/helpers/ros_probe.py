"""A ROS probe run as a process of its own (inside a network namespace), driven line by line on stdin.

Each command prints one JSON line on stdout:

* ``count``: joint commands and trajectories received per arm so far, joint_states messages.
* ``trajectories``: per trajectory received since ``reset``: how late it arrived (arrival minus its start,
  on this node's clock: sim time with ``sim`` as the second argument) and the jump its splice makes in
  the goal (its value at arrival against the previous trajectory's there), with the joint positions.
* ``diag``: the latest ``/diagnostics`` values of the policy node's status.
* ``reset``: forget the trajectories and motion so far.
* ``episode SEED``: ``sim/reset_seed`` SEED (a new simulated episode); ``success``: the latest ``sim/success``.
* ``motion S``: how far the joints moved (max |change|, rad) over the next S seconds of joint_states.
* ``estop 1|0``: publish ``estop`` (latched, as estop_input does).
* ``enable 1|0``: call ``policy/enable``; its answer.
* ``quit``.

Used by test/remote/ and bench/remote_bench.py, where the robot half and the policy half of a rig run in
two namespaces and the probe looks at (or acts on) one of them.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np


def main() -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Int64
    from std_srvs.srv import SetBool
    from trajectory_msgs.msg import JointTrajectory

    from bimanual_vla import topics
    from bimanual_vla.ros_utils import stamp_to_sec

    arms = sys.argv[1].split(',')
    sim_time = len(sys.argv) > 2 and sys.argv[2] == 'sim'
    rclpy.init()
    node = Node('ros_probe', parameter_overrides=[Parameter('use_sim_time', value=sim_time)])
    lock = threading.Lock()
    counts = {a: 0 for a in arms}
    trajectories = {a: 0 for a in arms}
    states: dict[str, float] = {}
    state_msgs = [0]

    def on_command(arm: str):
        def cb(_msg) -> None:
            with lock:
                counts[arm] += 1

        return cb

    last: dict[str, tuple[float, float, np.ndarray] | None] = {a: None for a in arms}  # t0, dt, points
    received: list[dict] = []

    def value_at(traj: tuple[float, float, np.ndarray], t: float) -> np.ndarray:
        t0, dt, pts = traj
        x = min(max((t - t0) / dt, 0.0), len(pts) - 1.0)
        i = min(int(x), len(pts) - 1)
        return pts[i] if i == len(pts) - 1 else pts[i] + (x - i) * (pts[i + 1] - pts[i])

    def on_trajectory(arm: str):
        def cb(msg) -> None:
            now = node.get_clock().now().nanoseconds * 1e-9
            with lock:
                trajectories[arm] += 1
                if not msg.points:  # a stop
                    last[arm] = None
                    return
                t0 = stamp_to_sec(msg.header.stamp)
                times = [stamp_to_sec(pt.time_from_start) for pt in msg.points]
                dt = times[1] - times[0] if len(times) > 1 else 0.02
                traj = (t0 + times[0], dt, np.array([pt.positions for pt in msg.points]))
                jump = None
                if last[arm] is not None:
                    jump = float(np.max(np.abs(value_at(traj, now) - value_at(last[arm], now))))
                last[arm] = traj
                received.append({'arm': arm, 'late_s': now - t0, 'jump_rad': jump})

        return cb

    def on_states(msg: JointState) -> None:
        with lock:
            states.update(zip(msg.name, msg.position, strict=False))
            state_msgs[0] += 1

    for arm in arms:
        node.create_subscription(JointState, topics.arm_command(arm), on_command(arm), topics.COMMAND_INPUT_QOS)
        node.create_subscription(JointTrajectory, topics.arm_trajectory(arm), on_trajectory(arm), topics.TRAJECTORY_QOS)
    node.create_subscription(JointState, topics.JOINT_STATES, on_states, topics.SENSOR_QOS)
    diag: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(': policy'):
                with lock:
                    diag.clear()
                    diag.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diag, topics.DIAGNOSTICS_QOS)
    estop = node.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
    reset_seed = node.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
    success = [False]

    def on_success(msg: Bool) -> None:
        success[0] = bool(msg.data)

    node.create_subscription(Bool, topics.SIM_SUCCESS, on_success, topics.LATCHED_QOS)
    enable = node.create_client(SetBool, topics.POLICY_ENABLE)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    def reply(data: dict) -> None:
        print(json.dumps(data), flush=True)

    reply({'ready': True})
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == 'count':
            with lock:
                reply({'commands': dict(counts), 'trajectories': dict(trajectories), 'states': state_msgs[0]})
        elif cmd == 'motion':
            with lock:
                before = dict(states)
            time.sleep(float(args[0]))
            with lock:
                after = dict(states)
            common = [k for k in before if k in after]
            moved = max((abs(after[k] - before[k]) for k in common), default=float('nan'))
            reply({'moved_rad': float(moved), 'joints': len(common)})
        elif cmd == 'estop':
            estop.publish(Bool(data=args[0] == '1'))
            reply({'estop': args[0] == '1'})
        elif cmd == 'enable':
            if not enable.wait_for_service(timeout_sec=10):
                reply({'success': False, 'message': 'no policy/enable service'})
                continue
            future = enable.call_async(SetBool.Request(data=args[0] == '1'))
            deadline = time.monotonic() + 10
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            result = future.result() if future.done() else None
            reply({'success': bool(result and result.success), 'message': result.message if result else 'timeout'})
        elif cmd == 'trajectories':
            with lock:
                reply({'received': list(received)})
        elif cmd == 'diag':
            with lock:
                reply(dict(diag))
        elif cmd == 'reset':
            with lock:
                received.clear()
            reply({'reset': True})
        elif cmd == 'episode':
            success[0] = False
            reset_seed.publish(Int64(data=int(args[0])))
            reply({'episode': int(args[0])})
        elif cmd == 'success':
            reply({'success': success[0], 'sim_time': node.get_clock().now().nanoseconds * 1e-9})
        elif cmd == 'quit':
            break
    executor.shutdown(timeout_sec=2)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
