"""A ROS probe run as a process of its own (inside a network namespace), driven line by line on stdin.

Each command prints one JSON line on stdout:

* ``count``: joint commands and trajectories received per arm so far, joint_states messages.
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


def main() -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool
    from std_srvs.srv import SetBool
    from trajectory_msgs.msg import JointTrajectory

    from bimanual_vla import topics

    arms = sys.argv[1].split(',')
    rclpy.init()
    node = Node('ros_probe')
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

    def on_trajectory(arm: str):
        def cb(_msg) -> None:
            with lock:
                trajectories[arm] += 1

        return cb

    def on_states(msg: JointState) -> None:
        with lock:
            states.update(zip(msg.name, msg.position, strict=False))
            state_msgs[0] += 1

    for arm in arms:
        node.create_subscription(JointState, topics.arm_command(arm), on_command(arm), topics.COMMAND_INPUT_QOS)
        node.create_subscription(JointTrajectory, topics.arm_trajectory(arm), on_trajectory(arm), topics.TRAJECTORY_QOS)
    node.create_subscription(JointState, topics.JOINT_STATES, on_states, topics.SENSOR_QOS)
    estop = node.create_publisher(Bool, topics.ESTOP, topics.LATCHED_QOS)
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
        elif cmd == 'quit':
            break
    executor.shutdown(timeout_sec=2)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
