"""Teleoperation latency: a leader's position read -> the follower's goal written, on emulated buses.

As a user runs it: the leader is `bimanual-vla emulate-bus --motion` in a process of its own (an
emulated STS3215 bus whose shoulder_pan ramps slowly, so every few reads give a new position), the
follower an emulated STS3215 bus in another process that logs each Goal_Position it receives, and this
process runs the `teleop` node (leader read at `--leader-rate` Hz) and the real `arm_driver` (at
`--follower-rate` Hz), each node spinning in a thread of its own (NodeThreads, as the bringup composes
them). Times are CLOCK_MONOTONIC, one clock for all three processes:

* read: the teleop node's leader sync read returned (LeaderReading.t);
* publish: its joint_command for that reading was published (the node's command log);
* goal: the follower's emulator received a Goal_Position with that value.

For every new follower goal value of shoulder_pan, the latency is from the first read that produced it
to the first goal write of it. Prints one JSON object per follower rate: read->goal, read->publish and
publish->goal (p50/p99/max ms), the leader's and the driver's cycle rates, and the machine's load.
The driver writes goals once per cycle, so at 100 Hz a command waits up to 10 ms for its write.

    ROS_DOMAIN_ID=78 .venv/bin/python bench/teleop_bench.py [--seconds 10] [--follower-rate 100 ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimanual_vla.rosenv import apply_pip_defaults  # noqa: E402

NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
K = 2 * math.pi / 4096


def stats_ms(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {'n': 0}
    arr = np.asarray(values) * 1000.0
    return {
        'n': len(values),
        'p50': round(float(np.percentile(arr, 50)), 2),
        'p99': round(float(np.percentile(arr, 99)), 2),
        'max': round(float(arr.max()), 2),
    }


FOLLOWER = """
import json, sys, time
from bimanual_vla.drivers.servo.emulator import ServoBusEmulator
goals = []
emu = ServoBusEmulator('feetech', range(1, 7), max_speed_ticks_per_s=4000)
emu.on_goal = lambda sid, ticks: goals.append((time.monotonic(), ticks)) if sid == 1 else None
print(emu.start(), flush=True)
sys.stdin.read()  # until the bench closes our stdin
emu.stop()
json.dump(goals, open(sys.argv[1], 'w'))
"""


def run(seconds: float, leader_rate: float, follower_rate: float) -> dict:
    import subprocess

    import rclpy

    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import NodeSpec
    from bimanual_vla.drivers.servo.emulated_motion import save_motion_csv

    tmp = Path(tempfile.mkdtemp(prefix='teleop_bench_'))
    # The leader: `bimanual-vla emulate-bus --motion`, shoulder_pan ramping up at 0.1 rad/s from -1.4 rad
    # (a new tick every ~1.5 reads at 100 Hz, and never the same value twice); 20 s covers start-up.
    duration = seconds + 20.0
    save_motion_csv(tmp / 'ramp.csv', [0.0, duration], ['1'], np.array([[-1.4], [-1.4 + 0.1 * duration]]))
    leader = subprocess.Popen(
        [str(Path(sys.executable).parent / 'bimanual-vla'), 'emulate-bus', '--protocol', 'feetech', '--ids', '1-6']
        + ['--motion', str(tmp / 'ramp.csv'), '--link', str(tmp / 'leader')],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    follower = subprocess.Popen(
        [sys.executable, '-c', FOLLOWER, str(tmp / 'goals.json')],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert leader.stdout is not None and follower.stdout is not None and follower.stdin is not None
    leader.stdout.readline()
    os.symlink(follower.stdout.readline().strip(), tmp / 'follower')
    rig = {
        'name': 'teleop_bench',
        'urdf': 'urdf/so101_bimanual.urdf',
        'arms': [
            {
                'name': 'left',
                'protocol': 'feetech',
                'port': str(tmp / 'follower'),
                'read_rate_hz': follower_rate,
                'joints': [{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in enumerate(NAMES, 1)],
            }
        ],
        'leaders': [
            {
                'name': 'left_leader',
                'protocol': 'feetech',
                'port': str(tmp / 'leader'),
                'follower': 'left',
                'read_rate_hz': leader_rate,
                'joints': [{'id': i, 'name': n} for i, n in enumerate(NAMES, 1)],
            }
        ],
    }
    rig_path = tmp / 'rig.yaml'
    rig_path.write_text(yaml.safe_dump(rig))
    rclpy.init()
    try:
        specs = [
            NodeSpec('arm_driver', 'arm_driver_left', {'rig': str(rig_path), 'arm': 'left'}),
            # The leader is already on its way when the nodes are up: the follower ramps to it, then follows.
            NodeSpec('teleop', 'teleop', {'rig': str(rig_path), 'ramp': True, 'ramp_velocity_rad_s': 1.0}),
        ]
        composition = compose(specs, own_process=())
        teleop = next(n for n in composition.nodes if n.get_name() == 'teleop')
        driver = next(n for n in composition.nodes if n.get_name() == 'arm_driver_left')
        channel = teleop.channels[0]
        try:
            deadline = time.monotonic() + 15
            while channel.engagement.state != 'engaged' and time.monotonic() < deadline:
                composition.spin(0.1)
            composition.spin(0.5)
            log: collections.deque = collections.deque()
            teleop.command_log = log
            t0 = time.monotonic()
            reads0, cycles0, overruns0 = (
                channel.reader.stats.complete_reads,
                driver.controller.stats.cycles,
                channel.overruns,
            )
            load0 = os.getloadavg()
            composition.spin(seconds)
            teleop.command_log = None
            elapsed = time.monotonic() - t0
            reads = channel.reader.stats.complete_reads - reads0
            cycles = driver.controller.stats.cycles - cycles0
            overruns = channel.overruns - overruns0
            state = channel.engagement.state
        finally:
            composition.shutdown()
    finally:
        if rclpy.ok():
            rclpy.shutdown()
        follower.stdin.close()
        follower.wait(timeout=30)
        leader.terminate()
        leader.wait(timeout=30)
    goals = json.loads((tmp / 'goals.json').read_text())
    first_read: dict[int, float] = {}
    first_pub: dict[int, float] = {}
    for _, t_read, t_pub, targets in log:
        g = round(2048 + targets[0] / K)  # the identity calibration the follower runs on
        first_read.setdefault(g, t_read)
        first_pub.setdefault(g, t_pub)
    first_goal: dict[int, float] = {}
    for t_goal, g in goals:
        if t_goal >= t0:
            first_goal.setdefault(g, t_goal)
    # Values first commanded in the window (not the one it opened on) whose goal was written.
    moving = [g for g in first_goal if g in first_read and first_read[g] > t0 + 0.05]
    unexplained = [g for g in first_goal if g not in first_read and first_goal[g] > t0 + 0.1]
    return {
        'seconds': round(elapsed, 2),
        'state': state,
        'leader_rate_hz': round(reads / elapsed, 1),
        'leader_rate_target_hz': leader_rate,
        'leader_overruns': overruns,
        'follower_driver_rate_hz': round(cycles / elapsed, 1),
        'follower_driver_rate_target_hz': follower_rate,
        'read_to_goal_ms': stats_ms([first_goal[g] - first_read[g] for g in moving]),
        'read_to_publish_ms': stats_ms([first_pub[g] - first_read[g] for g in moving]),
        'publish_to_goal_ms': stats_ms([first_goal[g] - first_pub[g] for g in moving]),
        'goal_values_not_commanded': len(unexplained),
        'target_p99_ms': 10.0,
        'loadavg_1m_at_start': round(load0[0], 2),
        'loadavg_1m_at_end': round(os.getloadavg()[0], 2),
        'cpus': os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--leader-rate', type=float, default=100.0, help='the leader read rate (Hz)')
    parser.add_argument(
        '--follower-rate', type=float, action='append', default=None, help='arm driver rate(s) (Hz; repeatable)'
    )
    args = parser.parse_args()
    apply_pip_defaults()
    results = {
        f'follower_{rate:g}hz': run(args.seconds, args.leader_rate, rate) for rate in args.follower_rate or [100.0]
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
