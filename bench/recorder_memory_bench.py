"""Resident memory of `bimanual-vla record` over a long recording, with the soak's traffic and nothing else.

The fault soak saw the recorder's resident memory grow (docs/experiments/2026-12-06-fault-soak.md).
This bench isolates it: one process publishes what the aloha_sim rig publishes (three 320x240 rgb8
cameras at 15 fps, joint_states and two arms' commands at 50 Hz), `bimanual-vla record --rig aloha_sim`
records it in a process of its own, split every `--split-s`, and the recorder's RSS, threads and fds
are sampled every `--sample-s`. `--env K=V` runs the recorder with extra environment (e.g. glibc
malloc tunables), `--tracemalloc N` makes the recorder print its N largest Python allocation sites
growth on exit (PYTHONTRACEMALLOC), so Python-level growth can be told from allocator retention.

    .venv/bin/python bench/recorder_memory_bench.py --minutes 10 [--env MALLOC_ARENA_MAX=2]

Prints one JSON object: rss after warm-up / last / max, fitted growth in MB per hour, threads, fds,
messages written, bag size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))

import numpy as np
from soak_bench import proc_sample, summarise_process


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--minutes', type=float, default=10.0)
    p.add_argument('--split-s', type=float, default=60.0, help='recorder --max-bag-duration')
    p.add_argument('--sample-s', type=float, default=5.0)
    p.add_argument('--warmup-s', type=float, default=90.0, help='samples before this are not fitted')
    p.add_argument('--env', action='append', default=[], metavar='K=V', help='extra recorder environment')
    p.add_argument('--dir', default='', help='where the bag goes (default: a temporary directory, removed)')
    p.add_argument('--prune', action='store_true', help='delete each closed split file as it appears (saves disk)')
    return p.parse_args(argv)


def publish_rig_traffic(stop: threading.Event) -> None:
    """Publish the aloha_sim rig's topics at its rates until `stop` is set."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState

    from bimanual_vla import topics as T
    from bimanual_vla.config import load_rig

    rig = load_rig('aloha_sim')
    rclpy.init()
    node = rclpy.create_node('recorder_memory_traffic')
    joints = node.create_publisher(JointState, T.JOINT_STATES, T.SENSOR_QOS)
    commands = {arm.name: node.create_publisher(JointState, T.arm_command(arm.name), 10) for arm in rig.arms}
    cameras = {cam.name: node.create_publisher(Image, T.camera_image(cam.name), T.SENSOR_QOS) for cam in rig.cameras}
    names = [f'{arm.name}_{j.name}' for arm in rig.arms for j in arm.joints]
    rng = np.random.default_rng(0)
    frames = {cam.name: rng.integers(0, 255, (cam.height, cam.width, 3), dtype=np.uint8) for cam in rig.cameras}
    tick = 0

    def on_tick() -> None:
        nonlocal tick
        tick += 1
        stamp = node.get_clock().now().to_msg()
        msg = JointState(name=names, position=list(np.sin(tick * 0.01 + np.arange(len(names)))))
        msg.header.stamp = stamp
        joints.publish(msg)
        for arm in rig.arms:
            command = JointState(name=[j.name for j in arm.joints], position=[0.1] * len(arm.joints))
            command.header.stamp = stamp
            commands[arm.name].publish(command)
        if tick % 3 == 0:  # 50 Hz / 3 ~ 15 fps (16.7)
            for cam in rig.cameras:
                image = Image(height=cam.height, width=cam.width, encoding='rgb8', step=cam.width * 3)
                image.header.stamp = stamp
                image.header.frame_id = cam.name
                frames[cam.name][0, 0, 0] = tick % 255
                image.data = frames[cam.name].tobytes()
                cameras[cam.name].publish(image)

    node.create_timer(0.02, on_tick)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix='recorder_memory_'))
    bag = work / 'bag'
    env = dict(os.environ)
    for item in args.env:
        key, _, value = item.partition('=')
        env[key] = value
    stop = threading.Event()
    traffic = threading.Thread(target=publish_rig_traffic, args=(stop,), daemon=True)
    traffic.start()
    cli = Path(sys.executable).with_name('bimanual-vla')
    command = [str(cli), 'record', str(bag), '--rig', 'aloha_sim', '--max-bag-duration', str(args.split_s)]
    log = open(work / 'recorder.log', 'w')
    recorder = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    times, rows = [], []
    try:
        while time.monotonic() - t0 < args.minutes * 60 and recorder.poll() is None:
            time.sleep(args.sample_s)
            times.append(time.monotonic() - t0)
            rows.append(proc_sample(recorder.pid))
            if args.prune and bag.exists():
                for closed in bag.glob('*.mcap'):  # closed splits are moved up next to metadata.yaml
                    closed.unlink()
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
        stop.set()
        traffic.join(timeout=10)
        log.close()
    size = sum(f.stat().st_size for f in bag.rglob('*') if f.is_file()) if bag.exists() else 0
    report = {
        'minutes': round((times[-1] if times else 0) / 60, 1),
        'split_s': args.split_s,
        'env': args.env,
        'recorder': summarise_process(np.array(times), rows, args.warmup_s),
        'rss_series_mb': [round(r[0], 1) for r in rows[:: max(1, len(rows) // 40)]],
        'bag_mb': round(size / 2**20, 1),
        'recorder_exit': recorder.returncode,
        'recorder_log_tail': (work / 'recorder.log').read_text().splitlines()[-3:],
    }
    print(json.dumps(report))
    if not args.dir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
