#!/usr/bin/env python3
"""Bag benchmark: can the recorder keep up with a rig, and how fast are bags read back?

A publisher process sends three 640x480 rgb8 camera streams (30 fps, best effort) and
joint_states (50 Hz) for --duration seconds; the recorder (``bimanual-vla record``
equivalent, in this process) records them. Prints one JSON object: published vs recorded
counts per topic, drops, recorder CPU seconds per second, bytes written, and the read
throughput of BagReader (raw bytes, and rclpy-decoded Images).

    .venv/bin/python bench/bag_bench.py [--duration 10] [--fps 30] [--width 640 --height 480]

Discovery stays on localhost, with a domain id derived from this process's pid.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAMERAS = ('base', 'left_wrist', 'right_wrist')

PUBLISHER = r"""
import sys, time
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from bimanual_vla import topics as T
duration, fps, width, height = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rclpy.init()
node = Node('bench_source')
cams = {c: node.create_publisher(Image, T.camera_image(c), T.SENSOR_QOS) for c in CAMERAS_PLACEHOLDER}
js = node.create_publisher(JointState, T.JOINT_STATES, T.SENSOR_QOS)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not all(p.get_subscription_count() for p in [*cams.values(), js]):
    time.sleep(0.05)
img = Image(height=height, width=width, encoding='rgb8', step=3 * width)
img.data = bytes(range(256)) * (3 * width * height // 256) + bytes(3 * width * height % 256)
counts = dict.fromkeys([*cams, 'joint_states'], 0)
start = time.monotonic(); next_cam = next_js = start
while time.monotonic() - start < duration:
    now = time.monotonic()
    if now >= next_cam:
        for c, p in cams.items():
            img.header.stamp.sec = counts[c]; p.publish(img); counts[c] += 1
        next_cam += 1.0 / fps
    if now >= next_js:
        js.publish(JointState(name=['a', 'b'], position=[0.1, 0.2])); counts['joint_states'] += 1
        next_js += 0.02
    time.sleep(max(0.0, min(next_cam, next_js) - time.monotonic()))
print(counts)
""".replace('CAMERAS_PLACEHOLDER', repr(CAMERAS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=10.0)
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    args = parser.parse_args()

    from bimanual_vla.rosenv import apply_pip_defaults

    apply_pip_defaults()
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ['ROS_DOMAIN_ID'] = str(110 + os.getpid() % 100)

    import ast

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from bimanual_vla import topics as T
    from bimanual_vla.bags.read import BagReader
    from bimanual_vla.bags.record import BagRecorder

    workdir = Path(tempfile.mkdtemp(prefix='bag_bench_'))
    out = workdir / 'bench'
    rclpy.init()
    wanted = [T.camera_image(c) for c in CAMERAS] + [T.JOINT_STATES]
    rec = BagRecorder(parameter_overrides=[Parameter('output', value=str(out)), Parameter('topics', value=wanted)])
    executor = SingleThreadedExecutor()
    executor.add_node(rec)
    pub = subprocess.Popen(
        [sys.executable, '-c', PUBLISHER, str(args.duration), str(args.fps), str(args.width), str(args.height)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    while pub.poll() is None:
        executor.spin_once(timeout_sec=0.05)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    close_start = time.monotonic()
    rec.close()
    close_s = time.monotonic() - close_start
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    published = ast.literal_eval(pub.stdout.read().strip().splitlines()[-1])
    recorded = {name: s.count for name, s in rec.topic_states.items()}
    dropped = rec.dropped
    executor.shutdown()
    rec.destroy_node()
    rclpy.shutdown()

    size = sum(f.stat().st_size for f in out.iterdir())
    t = time.monotonic()
    with BagReader(out) as bag:
        raw_bytes = sum(len(m.data) for m in bag.messages())
    raw_read_s = time.monotonic() - t
    t = time.monotonic()
    with BagReader(out) as bag:
        decoded = sum(1 for _ in bag.decoded([T.camera_image(CAMERAS[0])]))
    decode_s = time.monotonic() - t
    shutil.rmtree(workdir)

    print(json.dumps({
        'duration_s': args.duration,
        'image': f'{args.width}x{args.height} rgb8 @ {args.fps:g} fps x {len(CAMERAS)}',
        'published': published,
        'recorded': recorded,
        'dropped_by_recorder_queue': dropped,
        'recorder_cpu_s_per_s': round(
            (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall, 3
        ),
        'close_s': round(close_s, 3),
        'bag_megabytes': round(size / 2**20, 1),
        'write_megabytes_per_s': round(size / 2**20 / args.duration, 1),
        'read_raw_megabytes_per_s': round(raw_bytes / 2**20 / raw_read_s, 1),
        'decode_images_per_s': round(decoded / decode_s, 1),
    }, indent=2))  # fmt: skip


if __name__ == '__main__':
    main()
