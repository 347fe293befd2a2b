"""What a reliable `joint_states` publisher costs the thread that publishes (the arm driver's I/O loop).

The arm driver publishes `joint_states` from its serial I/O thread at `read_rate_hz` (100 Hz by
default), so a publish() that blocks delays the next goal write. This benchmark publishes a
12-joint JointState at `--rate` Hz from a plain thread, as the driver does, for each QoS and each
kind of subscriber, and prints one JSON object with the duration of the publish() calls (median,
99th percentile, max, in ms), the late ticks (a tick starting more than one period late) and, for a
live subscriber in another process, how many messages it received:

* ``none``: no subscriber;
* ``live``: a subscriber process asking for what the publisher offers (reliable: what
  ``create_subscription(..., 10)`` asks for);
* ``stopped``: the same subscriber process SIGSTOPped once matched, for the whole run (a hung
  consumer: it never acknowledges, nor drains its shared-memory port);
* ``stopped+live``: one of each, the live one counting what it receives.

``--rounds N`` repeats the selected rows N times, alternating, so that reliable and best effort see
the same load on a shared machine (each row's key gets ``#k``).

Every process runs with the project's pip-path defaults (Fast DDS shared-memory profile, localhost
discovery) and the ROS_DOMAIN_ID of the environment.

    ROS_DOMAIN_ID=72 .venv/bin/python bench/qos_publish_bench.py [--rate 100] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bimanual_vla.rosenv import apply_pip_defaults  # noqa: E402

SUBSCRIBER = """
import sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
rclpy.init()
node = rclpy.create_node('bench_subscriber')
count = [0]
qos = QoSProfile(depth=10, reliability=ReliabilityPolicy[sys.argv[3]])
node.create_subscription(JointState, 'joint_states', lambda m: count.__setitem__(0, count[0] + 1), qos)
print('ready', flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.05)
open(sys.argv[2], 'w').write(str(count[0]))
"""


def subscriber(seconds: float, out: Path, reliability: str) -> subprocess.Popen:
    """A subscriber process asking for `reliability` (RELIABLE: a default create_subscription(..., 10))."""
    proc = subprocess.Popen(
        [sys.executable, '-c', SUBSCRIBER, str(seconds), str(out), reliability], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == 'ready'
    return proc


def publish_run(node, qos, rate: float, seconds: float, wait_for: int, matched_hook=lambda: None) -> dict:
    """Publish at `rate` from a thread for `seconds`; durations of publish() and late ticks.
    `matched_hook` runs once `wait_for` subscriptions have matched, before the first publish."""
    from sensor_msgs.msg import JointState

    pub = node.create_publisher(JointState, 'joint_states', qos)
    deadline = time.monotonic() + 10.0
    while pub.get_subscription_count() < wait_for and time.monotonic() < deadline:
        time.sleep(0.05)
    matched = pub.get_subscription_count()
    matched_hook()
    names = [f'arm_joint_{i}' for i in range(12)]
    durations: list[float] = []
    late = 0
    period = 1.0 / rate

    def loop() -> None:
        nonlocal late
        next_t = time.monotonic()
        end = next_t + seconds
        while next_t < end:
            msg = JointState(name=names, position=[0.1] * 12, velocity=[0.0] * 12, effort=[0.0] * 12)
            start = time.perf_counter()
            pub.publish(msg)
            durations.append(time.perf_counter() - start)
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:
                late += 1
            if delay > 0:
                time.sleep(delay)

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    node.destroy_publisher(pub)
    ms = sorted(d * 1e3 for d in durations)
    return {
        'matched': matched,
        'published': len(ms),
        'median_ms': round(statistics.median(ms), 4),
        'p99_ms': round(ms[int(0.99 * (len(ms) - 1))], 4),
        'max_ms': round(ms[-1], 4),
        'late_ticks': late,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rate', type=float, default=100.0)
    parser.add_argument('--seconds', type=float, default=5.0)
    parser.add_argument('--only', nargs='+', default=[], metavar='QOS/CASE', help='run only these rows')
    parser.add_argument('--rounds', type=int, default=1, help='repeat the rows, alternating')
    args = parser.parse_args()
    apply_pip_defaults()
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    profiles = {
        'reliable_depth10': QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        'reliable_depth1': QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE),
        'best_effort_depth5': QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT),
    }
    rclpy.init()
    node = rclpy.create_node('bench_publisher')
    results: dict = {
        'rate_hz': args.rate,
        'seconds': args.seconds,
        'cpus': os.cpu_count(),
        'publication_mode': os.environ.get('RMW_FASTRTPS_PUBLICATION_MODE', '(default)'),
    }
    rows = [
        (qos_name, qos, case)
        for qos_name, qos in profiles.items()
        for case in ('none', 'live', 'stopped', 'stopped+live')
        if not args.only or f'{qos_name}/{case}' in args.only
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for qos_name, qos, case in rows:
                procs: list[subprocess.Popen] = []
                live_out = Path(tmp) / f'{qos_name}-{case}.txt'
                life = args.seconds + 6.0
                reliability = qos.reliability.name  # subscribers asking for what the publisher offers
                if 'stopped' in case:
                    procs.append(subscriber(life, Path(tmp) / 'stopped.txt', reliability))
                if 'live' in case:
                    procs.append(subscriber(life, live_out, reliability))
                expected = len(procs)

                def stop(procs=procs, case=case) -> None:
                    if 'stopped' in case:  # matched first: a hung consumer the writer knows about
                        time.sleep(0.5)
                        os.kill(procs[0].pid, signal.SIGSTOP)

                row = publish_run(node, qos, args.rate, args.seconds, expected, stop)
                for proc in procs:
                    os.kill(proc.pid, signal.SIGCONT)
                for proc in procs:
                    proc.wait(timeout=life + 10)
                if 'live' in case:
                    row['live_received'] = int(live_out.read_text())
                results[f'{qos_name}/{case}' + (f'#{k}' if args.rounds > 1 else '')] = row
    node.destroy_node()
    rclpy.shutdown()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
