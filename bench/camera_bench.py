#!/usr/bin/env python3
"""Camera pipeline benchmark: three camera_driver nodes in one process, one subscriber in another.

Prints one JSON object: achieved rate per camera at the subscriber, latency from capture
stamp to receipt in the subscriber's callback (p50/p99), frame-order checks (decoded
from the test pattern's code strip), the drivers' own drop counters, CPU seconds per
second of each process over the same wall-clock window, and what filling
``sensor_msgs/Image.data`` costs for each Python buffer type (why the driver hands over
an ``array.array``), and what ``image_raw/compressed`` costs and saves: JPEG bytes per frame,
bandwidth per camera against rgb8, encode and decode time per frame (OpenCV, as the camera
driver and the policy node do it) for the test pattern and a rendered sim frame, per quality.

    .venv/bin/python bench/camera_bench.py [--duration 10] [--warmup 3] [--width 640 --height 480 --fps 30]
    .venv/bin/python bench/camera_bench.py --jpeg-only   # just the compression figures

Both processes keep DDS discovery on localhost and use a domain id derived from the
parent's pid, so the benchmark neither leaves the machine nor hears other sessions.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

CAMERAS = ('base', 'left_wrist', 'right_wrist')
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ros_environment() -> None:
    """Before rclpy is imported: localhost-only discovery and a pid-derived domain (inherited by the child)."""
    from bimanual_vla.rosenv import apply_pip_defaults

    apply_pip_defaults()
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('ROS_DOMAIN_ID', str(102 + os.getpid() % 100))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# ----------------------------------------------------------------------- subscriber


def run_subscriber(args: argparse.Namespace) -> int:
    ros_environment()
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from bimanual_vla import topics
    from bimanual_vla.drivers.camera.capture import decode_frame_number

    rclpy.init()
    node = Node('camera_bench_subscriber')
    window = {'open': False}
    seen: dict[str, int] = dict.fromkeys(CAMERAS, 0)
    per_cam = {c: {'count': 0, 'latency_ms': [], 'numbers': []} for c in CAMERAS}

    def callback(cam: str):
        def on_image(msg: Image) -> None:
            receipt_ns = time.time_ns()
            seen[cam] += 1
            if not window['open']:
                return
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            entry = per_cam[cam]
            entry['count'] += 1
            entry['latency_ms'].append((receipt_ns - stamp_ns) / 1e6)
            image = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
            entry['numbers'].append(decode_frame_number(image))

        return on_image

    for cam in CAMERAS:
        node.create_subscription(Image, topics.camera_image(cam), callback(cam), topics.SENSOR_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + 60
    while min(seen.values()) == 0 and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    if min(seen.values()) == 0:
        print(json.dumps({'error': f'no images from some cameras within 60 s: {seen}'}), flush=True)
        return 1
    warm_end = time.monotonic() + args.warmup
    while time.monotonic() < warm_end:
        executor.spin_once(timeout_sec=0.05)
    window['open'] = True
    t0_wall, t0_mono, cpu0 = time.time(), time.monotonic(), time.process_time()
    end = t0_mono + args.duration
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    window['open'] = False
    elapsed, cpu = time.monotonic() - t0_mono, time.process_time() - cpu0
    cameras = {}
    for cam, entry in per_cam.items():
        numbers = [n for n in entry['numbers'] if n is not None]
        steps = [b - a for a, b in zip(numbers, numbers[1:], strict=False)]
        cameras[cam] = {
            'frames': entry['count'],
            'rate_hz': round(entry['count'] / elapsed, 2),
            'latency_ms_p50': _round(percentile(entry['latency_ms'], 50)),
            'latency_ms_p99': _round(percentile(entry['latency_ms'], 99)),
            'latency_ms_max': _round(max(entry['latency_ms'], default=None)),
            'undecodable_frames': len(entry['numbers']) - len(numbers),
            'out_of_order_or_repeated': sum(1 for s in steps if s <= 0),
            'frame_numbers_missed': sum(s - 1 for s in steps if s > 1),
        }
    result = {'window': [t0_wall, t0_wall + elapsed], 'cpu_s_per_s': round(cpu / elapsed, 3), 'cameras': cameras}
    print(json.dumps(result), flush=True)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# ------------------------------------------------------------------------ publisher


def image_data_fill_costs(width: int, height: int) -> dict[str, object]:
    """Microseconds to set Image.data from one frame, per buffer type and check_fields mode (median)."""
    import numpy as np
    from sensor_msgs.msg import Image

    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = array.array('B')
    buffer.frombytes(frame)
    candidates = {
        'array.array': lambda: buffer,
        'bytes': frame.tobytes,
        'memoryview': lambda: memoryview(frame).cast('B'),
        'numpy.ndarray': lambda: frame.reshape(-1),
    }
    costs: dict[str, object] = {}
    for check in (True, False):
        msg = Image(check_fields=check)
        for name, make in candidates.items():
            used = check and name == 'array.array'
            key = f'{name}, check_fields={check}' + (' (used by camera_driver)' if used else '')
            samples = []
            try:
                for _ in range(20 if name in ('array.array', 'bytes') else 2):
                    value = make()
                    t = time.perf_counter()
                    msg.data = value
                    samples.append((time.perf_counter() - t) * 1e6)
                costs[key] = round(sorted(samples)[len(samples) // 2], 1)
            except (AssertionError, TypeError) as exc:
                costs[key] = f'rejected by the setter ({type(exc).__name__})'
    return costs


def sample_images(width: int, height: int) -> dict[str, object]:
    """Frames to compress: the test pattern (sharp edges and noise: JPEG's hard case) and, if MuJoCo renders
    here, the ALOHA sim's top camera (what a scene looks like)."""
    import numpy as np

    from bimanual_vla.drivers.camera.capture import TestPatternRenderer

    images: dict[str, object] = {'test_pattern': TestPatternRenderer(width, height, 'base').render(7)}
    try:
        import mujoco

        from bimanual_vla.config import load_rig
        from bimanual_vla.sim.scene import SceneRenderer, SimScene

        scene = SimScene(load_rig('aloha_sim'), seed=0)
        mujoco.mj_forward(scene.model, scene.data)
        renderer = SceneRenderer(scene.model, {'top': (width, height)})
        images['sim_top'] = np.ascontiguousarray(renderer.render(scene.data, 'top'))
        renderer.close()
    except Exception as exc:  # no EGL: the pattern alone
        images['sim_top'] = f'not rendered: {type(exc).__name__}: {exc}'
    return images


def jpeg_costs(width: int, height: int, fps: float, qualities: tuple[int, ...] = (50, 80, 95)) -> dict[str, object]:
    """Per image and quality: JPEG bytes, Mbit/s per camera at ``fps`` against rgb8, encode/decode ms (p50 of 30)."""
    import numpy as np
    from sensor_msgs.msg import CompressedImage

    from bimanual_vla.image_msgs import compressed_to_rgb, encode_jpeg

    raw_bytes = width * height * 3
    out: dict[str, object] = {
        'raw_bytes_per_frame': raw_bytes,
        'raw_mbit_s_per_camera': round(raw_bytes * 8 * fps / 1e6, 1),
    }
    for name, rgb in sample_images(width, height).items():
        if isinstance(rgb, str):
            out[name] = rgb
            continue
        per_quality = {}
        for q in qualities:
            enc, dec = [], []
            for _ in range(30):
                t = time.perf_counter()
                data = encode_jpeg(rgb, q)
                enc.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                back = compressed_to_rgb(CompressedImage(data=data))
                dec.append((time.perf_counter() - t) * 1e3)
            err = np.abs(back.astype(np.int16) - rgb.astype(np.int16))
            per_quality[f'q{q}'] = {
                'bytes_per_frame': len(data),
                'ratio': round(raw_bytes / len(data), 1),
                'mbit_s_per_camera': round(len(data) * 8 * fps / 1e6, 2),
                'encode_ms_p50': round(sorted(enc)[15], 2),
                'decode_ms_p50': round(sorted(dec)[15], 2),
                'mean_abs_error': round(float(err.mean()), 2),
            }
        out[name] = per_quality
    return out


def run_drivers(args: argparse.Namespace) -> int:
    """The drivers process: three CameraDriver nodes; CPU sampled until told to stop on stdin."""
    ros_environment()
    import rclpy
    import yaml
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from bimanual_vla.config import resolve_rig_path
    from bimanual_vla.drivers.camera.node import CameraDriver

    # The shipped rig with every camera at the benchmark's size (all test patterns).
    rig = yaml.safe_load(resolve_rig_path('so101_bimanual').read_text())
    rig['cameras'] = [
        {'name': c, 'source': 'test_pattern', 'width': args.width, 'height': args.height, 'fps': args.fps}
        for c in CAMERAS
    ]
    rig_path = Path(f'/tmp/camera_bench_{os.getpid()}.yaml')
    rig_path.write_text(yaml.safe_dump(rig))
    rclpy.init()
    nodes = [
        CameraDriver(
            node_name=f'camera_{cam}',
            parameter_overrides=[Parameter('rig', value=str(rig_path)), Parameter('camera', value=cam)],
        )
        for cam in CAMERAS
    ]
    executor = SingleThreadedExecutor()
    for node in nodes:
        executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample_cpu() -> None:
        while not stop.is_set():
            samples.append((time.time(), time.process_time()))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample_cpu, daemon=True)
    sampler.start()
    sys.stdin.readline()  # the orchestrator writes a line (or closes stdin) when the subscriber is done
    stop.set()
    sampler.join()
    stats = {}
    for node in nodes:
        s = node.capture_stats()
        stats[node.camera.name] = {
            'published_total': node._published,
            'dropped_superseded': s.superseded,
            'dropped_source_gaps': s.source_gaps,
            'reconnects': s.reconnects,
        }
    executor.shutdown()
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown()
    rig_path.unlink(missing_ok=True)
    print(json.dumps({'cpu_samples': samples, 'drivers': stats}), flush=True)
    return 0


def run_once(args: argparse.Namespace, profile: str | None) -> dict[str, object]:
    """One measurement: drivers and subscriber processes with the same environment."""
    env = os.environ.copy()
    if profile:
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = profile
    else:
        env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    common = ['--duration', str(args.duration), '--warmup', str(args.warmup), '--cameras', str(args.cameras)]
    common += ['--width', str(args.width), '--height', str(args.height), '--fps', str(args.fps)]
    drivers = subprocess.Popen(
        [sys.executable, __file__, '--role', 'drivers', *common],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    subscriber = subprocess.run(
        [sys.executable, __file__, '--role', 'subscriber', *common],
        capture_output=True,
        text=True,
        env=env,
        timeout=args.duration + args.warmup + 120,
    )
    out, _ = drivers.communicate('stop\n', timeout=60)
    lines = subscriber.stdout.strip().splitlines()
    sub = json.loads(lines[-1]) if lines else {'error': f'subscriber printed nothing: {subscriber.stderr[-2000:]}'}
    if 'error' in sub:
        return sub
    pub = json.loads(out.strip().splitlines()[-1])
    start, end = sub['window']
    inside = [(t, c) for t, c in pub['cpu_samples'] if start <= t <= end]
    pub_cpu = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) if len(inside) > 1 else None
    for cam, stats in pub['drivers'].items():
        sub['cameras'][cam]['driver'] = stats
    return {
        'fastdds_profile': profile or 'Fast DDS defaults',
        'cameras': sub['cameras'],
        'cpu_s_per_s': {'drivers_process': _round(pub_cpu, 3), 'subscriber_process': sub['cpu_s_per_s']},
    }


def run_benchmark(args: argparse.Namespace) -> int:
    ros_environment()  # the domain id is fixed here, so both child processes share it
    compression = {f'{w}x{h}': jpeg_costs(w, h, args.fps) for w, h in {(args.width, args.height), (320, 240)}}
    if args.jpeg_only:
        print(json.dumps({'benchmark': 'camera_bench', 'fps': args.fps, 'jpeg': compression}, indent=2))
        return 0
    runs = [run_once(args, None)]
    if args.profile:
        runs.append(run_once(args, str(Path(args.profile).resolve())))
    result = {
        'benchmark': 'camera_bench',
        'setup': f'{len(CAMERAS)} camera_driver nodes (test_pattern {args.width}x{args.height}@{args.fps:g}) '
        'in one process, one subscriber in another, Fast DDS on localhost',
        'duration_s': args.duration,
        'runs': runs,
        'image_data_fill_us': image_data_fill_costs(args.width, args.height),
        'jpeg': compression,
        'machine': {'cpus': os.cpu_count(), 'loadavg_1min': round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(result, indent=2))
    return 0 if all('error' not in r for r in runs) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = ('benchmark', 'drivers', 'subscriber')
    parser.add_argument('--role', choices=roles, default='benchmark', help=argparse.SUPPRESS)
    parser.add_argument('--duration', type=float, default=10.0, help='measurement window in seconds')
    parser.add_argument('--warmup', type=float, default=3.0, help='seconds after the first frames before measuring')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument(
        '--profile',
        default=str(ROOT / 'config' / 'fastdds' / 'large_images.xml'),
        help='also run with this Fast DDS XML profile ("" to skip)',
    )
    parser.add_argument('--cameras', type=int, default=3, choices=(1, 2, 3), help='how many of the three cameras')
    parser.add_argument('--jpeg-only', action='store_true', help='only the JPEG bytes and costs, no DDS run')
    args = parser.parse_args()
    global CAMERAS
    CAMERAS = CAMERAS[: args.cameras]
    roles = {'benchmark': run_benchmark, 'drivers': run_drivers, 'subscriber': run_subscriber}
    return roles[args.role](args)


if __name__ == '__main__':
    sys.exit(main())
