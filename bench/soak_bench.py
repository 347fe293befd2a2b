"""Soak benchmark: the simulated rig + policy node running for minutes, watched for leaks and drift.

An eight-hour run on a real rig fails slowly: memory that grows a few MB an hour, threads or file
descriptors that pile up with every reconnect or episode reset, a command rate that decays. This
runs the node set `bimanual-vla run --rig aloha_sim` runs (sim_rig in this process, policy_node
enabled in a process of its own, or both here with `--composed`), with the shipped checkpoint (or
`--checkpoint`, or `--tiny` for a tiny random one), resets the episode every `--reset-every`
seconds, and samples every process every few seconds. Prints one JSON object:

* ``processes``: per process (``sim``: this one; ``policy``: the policy node's child), resident
  memory after warm-up / last / max and the fitted growth in MB per hour, threads and file
  descriptors first and last (they must not grow with resets);
* ``commands_per_s``: per-window rate of `arms/left/joint_command` (min / median / max);
* ``policy``: the policy node's own diagnostics at the end, as published on `/diagnostics`
  (inference latency, rejected outputs, starved ticks...);
* with ``--record DIR``: `bimanual-vla record` runs beside them in a process of its own (as
  `record:=` in the launch files), split every ``--record-split-mb``; at the end it is stopped
  with SIGINT and the bag read back: files, GB, messages per topic and per second, dropped
  messages, problems. Its memory is sampled with the others (``recorder``).

    .venv/bin/python bench/soak_bench.py [--minutes 5] [--reset-every 20] [--composed] [--tiny]
        [--record DIR [--record-split-mb 1024] [--record-compress]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimanual_vla.rosenv import apply_pip_defaults  # noqa: E402

apply_pip_defaults()
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))

import numpy as np  # noqa: E402


def proc_sample(pid: int) -> tuple[float, int, int]:
    """Resident memory (MB), threads and open file descriptors of process `pid`."""
    rss, threads = float('nan'), 0
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            rss = int(line.split()[1]) / 1024.0
        elif line.startswith('Threads:'):
            threads = int(line.split()[1])
    return rss, threads, len(os.listdir(f'/proc/{pid}/fd'))


def summarise_process(t: np.ndarray, rows: list[tuple[float, int, int]], warmup: float) -> dict:
    """Memory, threads and fds of one process: values after warm-up, and two growth fits.

    `growth_mb_per_hour` is fitted from the end of the warm-up on; `steady_growth_mb_per_hour` over
    the second half of the series only. A process that steps up once and then stays flat (glibc
    raising its mmap threshold once large buffers are freed, caches filling) has a large first fit
    over a short series and a near-zero second one; a leak has both
    (docs/experiments/2026-12-07-recorder-memory.md). The soak's verdict uses the steady fit.
    """
    rss = np.array([r[0] for r in rows])
    steady = t >= warmup
    slope = float(np.polyfit(t[steady], rss[steady], 1)[0] * 3600) if steady.sum() >= 3 else float('nan')
    late = t >= max(warmup, float(t[-1]) / 2) if len(t) else steady
    late_slope = float(np.polyfit(t[late], rss[late], 1)[0] * 3600) if late.sum() >= 3 else float('nan')
    return {
        'rss_mb': {
            'after_warmup': round(float(rss[steady][0]), 1) if steady.any() else None,
            'last': round(float(rss[-1]), 1),
            'max': round(float(rss.max()), 1),
            'growth_mb_per_hour': round(slope, 1),
            'steady_growth_mb_per_hour': round(late_slope, 1),
        },
        'threads': {'first': rows[0][1], 'last': rows[-1][1], 'max': max(r[1] for r in rows)},
        'fds': {'first': rows[0][2], 'last': rows[-1][2], 'max': max(r[2] for r in rows)},
    }


def read_back(bag: Path) -> dict:
    """What the soak's recording holds, read back as a user would: files, size, counts, drops, problems."""
    from bimanual_vla.bags.read import BagReader

    files = sorted(bag.glob('*.mcap'))
    with BagReader(bag) as reader:
        duration = reader.duration_s
        counts = {name: info.count for name, info in reader.topics.items()}
        return {
            'files': len(files),
            'gb': round(sum(f.stat().st_size for f in files) / 1e9, 2),
            'largest_file_mb': round(max(f.stat().st_size for f in files) / 1e6, 1) if files else None,
            'unfinished_dirs': [d.name for d in bag.iterdir() if d.is_dir()],
            'duration_s': round(duration, 1),
            'messages': reader.message_count,
            'per_s': {name: round(n / duration, 2) for name, n in sorted(counts.items()) if duration > 0},
            'dropped': reader.custom_data.get('bimanual_vla.dropped_messages'),
            'problems': reader.problems,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--minutes', type=float, default=5.0)
    parser.add_argument('--reset-every', type=float, default=20.0, help='seconds between episode resets')
    parser.add_argument('--sample-every', type=float, default=5.0)
    parser.add_argument('--warmup', type=float, default=30.0, help='seconds excluded from the growth fit')
    parser.add_argument('--checkpoint', type=Path, help='checkpoint to run (default: the shipped one)')
    parser.add_argument('--tiny', action='store_true', help='a tiny random checkpoint instead')
    parser.add_argument('--composed', action='store_true', help='the policy node in this process too')
    parser.add_argument('--record', type=Path, help='also record the rig to this new bag directory')
    parser.add_argument('--record-split-mb', type=float, default=1024.0, help='split the bag every so many MB')
    parser.add_argument('--record-compress', action='store_true', help='zstd-compress the recording')
    args = parser.parse_args()

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Int64, String

    from bimanual_vla import topics
    from bimanual_vla.bringup.compose import OWN_PROCESS, compose
    from bimanual_vla.bringup.nodes import rig_nodes
    from bimanual_vla.config import load_policy
    from bimanual_vla.learning.demo import trained_checkpoint
    from bimanual_vla.learning.tiny_checkpoint import make_tiny_checkpoint

    if args.tiny:
        checkpoint = make_tiny_checkpoint(Path(tempfile.mkdtemp(prefix='soak_')) / 'tiny', rig='aloha_sim', seed=0)
    else:
        checkpoint = args.checkpoint or trained_checkpoint()
        if checkpoint is None:
            parser.error('no shipped checkpoint installed: pass --checkpoint DIR or --tiny')
    specs = rig_nodes('aloha_sim', policy='default', policy_overrides={'checkpoint': str(checkpoint), 'enabled': True})
    rclpy.init()
    probe = Node('soak_probe')
    commands = [0]
    probe.create_subscription(
        JointState, topics.arm_command('left'), lambda _m: commands.__setitem__(0, commands[0] + 1), topics.COMMAND_QOS
    )
    policy_values: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if 'policy_node' in status.name:
                policy_values.update({kv.key: kv.value for kv in status.values})

    probe.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, on_diagnostics, topics.DIAGNOSTICS_QOS)
    task = probe.create_publisher(String, topics.POLICY_TASK, topics.LATCHED_QOS)
    task.publish(String(data=load_policy('default').task))
    reset = probe.create_publisher(Int64, topics.SIM_RESET_SEED, topics.RELIABLE_QOS)
    composition = compose(specs, rig='aloha_sim', extra_nodes=[probe], own_process=() if args.composed else OWN_PROCESS)
    pids = {'sim': os.getpid()}
    if composition.children:
        pids['policy'] = composition.children[0].process.pid
    recorder = None
    if args.record:
        import subprocess

        cli = Path(sys.executable).with_name('bimanual-vla')
        split = ['--max-bag-size', str(args.record_split_mb)] + (['--compress'] if args.record_compress else [])
        log = open(f'{args.record}.log', 'w')  # the recorder's log, open for its lifetime
        command = [str(cli), 'record', str(args.record), '--rig', 'aloha_sim', *split]
        recorder = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        pids['recorder'] = recorder.pid

    samples: dict[str, list[tuple[float, int, int]]] = {name: [] for name in pids}
    times: list[float] = []
    rates: list[float] = []
    start = time.monotonic()
    next_sample = start
    next_reset = start + args.reset_every
    first_seed = seed = 1000  # held-out seeds: the shipped checkpoint never trained on them
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
                times.append(now - start)
                for name, pid in pids.items():
                    samples[name].append(proc_sample(pid))
                if now > last_t:
                    rates.append((commands[0] - last_commands) / (now - last_t))
                last_commands, last_t = commands[0], now
                next_sample += args.sample_every
        composition.spin(duration_s=2.0)  # one more diagnostics period
    finally:
        if recorder is not None:
            import signal

            recorder.send_signal(signal.SIGINT)  # closes the open file and metadata.yaml
            recorder.wait(120)
            log.close()
        composition.shutdown()
        rclpy.try_shutdown()

    t = np.array(times)
    steady_rates = [r for r, ts in zip(rates[1:], t[1:], strict=False) if ts >= args.warmup]
    keys = ('chunks', 'inference_ms_p50', 'inference_ms_max', 'rejected_outputs', 'inference_errors',
            'starved_ticks', 'chunks_refused_late', 'time_jumps', 'control_period_ms_p50',
            'control_period_ms_p99', 'join_jump_max', 'stale_inputs', 'last_error')  # fmt: skip
    print(
        json.dumps(
            {
                'minutes': args.minutes,
                'checkpoint': str(checkpoint),
                'policy_in_own_process': not args.composed,
                'episode_resets': seed - first_seed,
                'processes': {name: summarise_process(t, rows, args.warmup) for name, rows in samples.items()},
                'commands_per_s': {
                    'min': round(min(steady_rates), 1) if steady_rates else None,
                    'median': round(float(np.median(steady_rates)), 1) if steady_rates else None,
                    'max': round(max(steady_rates), 1) if steady_rates else None,
                },
                'policy': {k: policy_values.get(k) for k in keys},
                'recording': read_back(args.record) if args.record else None,
            },
            default=str,
        )
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
