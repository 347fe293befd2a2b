"""Soak benchmark: the simulated rig + policy node running for minutes, watched for leaks and drift.

An eight-hour run on a real rig fails slowly: memory that grows a few MB an hour, threads or file
descriptors that pile up with every reconnect or episode reset, a command rate that decays. This
runs the same node set as `bimanual-vla run --rig aloha_sim` (sim_rig + policy_node with a tiny
random checkpoint, enabled), resets the episode every `--reset-every` seconds, and samples the
process every few seconds. Prints one JSON object:

* ``rss_mb``: first/last/max resident memory after warm-up, and the fitted growth in MB per hour;
* ``threads`` and ``fds``: first and last counts (they must not grow with resets);
* ``commands_per_s``: per-window rate of `arms/left/joint_command` (min / median / max);
* ``policy``: the policy node's own diagnostics at the end (inference latency, rejected outputs...).

    .venv/bin/python bench/soak_bench.py [--minutes 5] [--reset-every 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimanual_vla.rosenv import apply_pip_defaults  # noqa: E402

apply_pip_defaults()
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))

import numpy as np  # noqa: E402


def rss_mb() -> float:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    return float('nan')


def counts() -> tuple[int, int]:
    return threading.active_count(), len(os.listdir('/proc/self/fd'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--minutes', type=float, default=5.0)
    parser.add_argument('--reset-every', type=float, default=20.0, help='seconds between episode resets')
    parser.add_argument('--sample-every', type=float, default=5.0)
    parser.add_argument('--warmup', type=float, default=30.0, help='seconds excluded from the growth fit')
    args = parser.parse_args()

    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Int64, String

    from bimanual_vla import topics
    from bimanual_vla.bringup import rig_nodes
    from bimanual_vla.compose import compose
    from policy_node.tiny_checkpoint import make_tiny_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix='soak_'))
    checkpoint = make_tiny_checkpoint(tmp / 'tiny', rig='aloha_sim', seed=0)
    specs = rig_nodes('aloha_sim', policy='default', policy_overrides={'checkpoint': str(checkpoint), 'enabled': True})
    rclpy.init()
    probe = Node('soak_probe')
    commands = [0]
    probe.create_subscription(
        JointState, topics.arm_command('left'), lambda _m: commands.__setitem__(0, commands[0] + 1), topics.COMMAND_QOS
    )
    task = probe.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS)
    task.publish(String(data='transfer the cube to the left arm'))
    reset = probe.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
    composition = compose(specs, rig='aloha_sim', extra_nodes=[probe])
    policy_node = composition.node('policy_node')

    samples: list[tuple[float, float, int, int]] = []
    rates: list[float] = []
    start = time.monotonic()
    next_sample = start
    next_reset = start + args.reset_every
    seed = 0
    last_commands, last_t = 0, start
    try:
        while time.monotonic() - start < args.minutes * 60:
            composition.spin(duration_s=0.5)
            now = time.monotonic()
            if now >= next_reset:
                seed += 1
                reset.publish(Int64(data=seed))
                next_reset += args.reset_every
            if now >= next_sample:
                threads, fds = counts()
                samples.append((now - start, rss_mb(), threads, fds))
                if now > last_t:
                    rates.append((commands[0] - last_commands) / (now - last_t))
                last_commands, last_t = commands[0], now
                next_sample += args.sample_every
        diagnostics = policy_node.diagnostics_values()
    finally:
        composition.shutdown()
        rclpy.try_shutdown()

    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    steady = t >= args.warmup
    slope = float(np.polyfit(t[steady], rss[steady], 1)[0] * 3600) if steady.sum() >= 3 else float('nan')
    steady_rates = [r for r, ts in zip(rates[1:], t[1:], strict=False) if ts >= args.warmup]
    keys = ('chunks', 'inference_ms_p50', 'rejected_outputs', 'inference_errors', 'starved_ticks',
            'control_period_ms_p50', 'control_period_ms_p99', 'join_jump_max', 'stale_inputs')  # fmt: skip
    print(
        json.dumps(
            {
                'minutes': args.minutes,
                'episode_resets': seed,
                'rss_mb': {
                    'after_warmup': round(float(rss[steady][0]), 1) if steady.any() else None,
                    'last': round(float(rss[-1]), 1),
                    'max': round(float(rss.max()), 1),
                    'growth_mb_per_hour': round(slope, 1),
                },
                'threads': {'first': samples[0][2], 'last': samples[-1][2]},
                'fds': {'first': samples[0][3], 'last': samples[-1][3]},
                'commands_per_s': {
                    'min': round(min(steady_rates), 1) if steady_rates else None,
                    'median': round(float(np.median(steady_rates)), 1) if steady_rates else None,
                    'max': round(max(steady_rates), 1) if steady_rates else None,
                },
                'policy': {k: diagnostics[k] for k in keys},
            },
            default=str,
        )
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
