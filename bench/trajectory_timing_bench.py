"""Timing of the goals written to the servos: per-tick streaming vs trajectories the driver plays.

Prints one JSON object. In one run on one machine it starts:

* the servo-bus emulator (Feetech, six servos on a pty) in this process, recording each goal written
  to servo 1 with the time it arrived (``time.time()``, the ROS clock of the other processes);
* an ``arm_driver`` process on that pty (100 Hz read/write cycle, the shipped limits);
* a synthetic policy process per mode, one after the other: an rclpy node with a 50 Hz timer
  (the policy node's control timer) in an interpreter kept busy by a thread of pure-Python work
  (``--busy``, the inference thread's share of the GIL), commanding shoulder_pan along
  q(t) = A sin(2 pi f t):

  - ``tick``: one ``arms/left/joint_command`` per timer tick, q(now) (the policy node's tick mode);
  - ``trajectory``: every 5th tick (the default execution horizon), ``arms/left/joint_trajectory``
    from now, a point every 20 ms for 1 s (a chunk's committed part; the policy node's trajectory mode).

For each goal written at time t_w with value g, on the parts of the sine where it moves fast
(|cos| >= 0.7): the timing error t_w - t*, where q(t*) = g on that branch (how late the goal is
against the trajectory's times; positive = behind), the position error |g - q(t_w)|, and the time
between consecutive goal writes; and every 2 ms, the timing error of the goal the servo holds then
(the last one written), which adds the waits between writes. Modes alternate (``--rounds``) so a
change in machine load hits both.

    .venv/bin/python bench/trajectory_timing_bench.py [--seconds 20] [--rounds 2] [--no-busy]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AMPLITUDE = 1.0  # rad
FREQUENCY = 0.25  # Hz: at most 1.57 rad/s, 1.1 rad/s where measured; a 1.5 mrad tick is ~1.4 ms there
PERIOD_S = 0.02  # the policy's control period
HORIZON_TICKS = 5  # a new chunk every execution_horizon ticks
TRAJECTORY_S = 1.0
WARMUP_S = 2.0
IDS = [1, 2, 3, 4, 5, 6]
NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
OMEGA = 2 * math.pi * FREQUENCY
TICK_RAD = 2 * math.pi / 4096


def reference(t: float, t0: float) -> float:
    return AMPLITUDE * math.sin(OMEGA * (t - t0))


# ----------------------------------------------------------------------------- the publisher process


def busy_work(stop: threading.Event) -> None:
    """An inference thread's GIL use: pure-Python arithmetic in 80 ms bursts, a 20 ms pause between."""
    while not stop.is_set():
        end = time.perf_counter() + 0.08
        x = 0
        while time.perf_counter() < end:
            for i in range(2000):
                x += i * i
        time.sleep(0.02)


def run_publisher(mode: str, seconds: float, t0: float, busy: bool) -> None:
    import rclpy
    from builtin_interfaces.msg import Duration
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from bimanual_vla import topics
    from bimanual_vla.ros_utils import sec_to_stamp

    rclpy.init()
    node = Node('synthetic_policy')
    joint = 'left_shoulder_pan'
    if mode == 'tick':
        pub = node.create_publisher(JointState, topics.arm_command('left'), topics.COMMAND_QOS)
    else:
        pub = node.create_publisher(JointTrajectory, topics.arm_trajectory('left'), topics.TRAJECTORY_QOS)
    deadline = time.monotonic() + 10
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    periods: list[float] = []
    state = {'last': None, 'ticks': 0, 'first': None}

    def on_tick() -> None:
        wall = time.monotonic()
        state['first'] = state['first'] or time.time()
        if state['last'] is not None:
            periods.append((wall - state['last']) * 1e3)
        state['last'] = wall
        now = node.get_clock().now().nanoseconds * 1e-9
        if mode == 'tick':
            msg = JointState(name=[joint], position=[reference(now, t0)])
            msg.header.stamp = sec_to_stamp(now)
            pub.publish(msg)
        elif state['ticks'] % HORIZON_TICKS == 0:
            msg = JointTrajectory(joint_names=[joint])
            msg.header.stamp = sec_to_stamp(now)
            for k in range(round(TRAJECTORY_S / PERIOD_S) + 1):
                ns = round(k * PERIOD_S * 1e9)
                point = JointTrajectoryPoint(positions=[reference(now + k * PERIOD_S, t0)])
                point.time_from_start = Duration(sec=ns // 10**9, nanosec=ns % 10**9)
                msg.points.append(point)
            pub.publish(msg)
        state['ticks'] += 1

    stop = threading.Event()
    worker = threading.Thread(target=busy_work, args=(stop,), daemon=True)
    if busy:
        worker.start()
    node.create_timer(PERIOD_S, on_tick)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    stop.set()
    print(json.dumps({'tick_periods_ms': periods, 'first_tick': state['first'], 'last_tick': time.time()}))
    node.destroy_node()
    rclpy.shutdown()


# --------------------------------------------------------------------------------- the measurement


def percentiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {'n': 0}
    a = np.asarray(values)
    return {
        'n': len(values),
        'p50': round(float(np.percentile(a, 50)), 3),
        'p99': round(float(np.percentile(a, 99)), 3),
        'max': round(float(a.max()), 3),
    }


def lateness(t: float, g: float, t0: float) -> float | None:
    """t - t*, where q(t*) = g on the branch of the sine nearest t; None near a turn (ill-defined there)."""
    phase = OMEGA * (t - t0)
    if abs(math.cos(phase)) < 0.7:
        return None
    base = math.asin(max(-1.0, min(1.0, g / AMPLITUDE)))
    candidates = []
    for branch in (base, math.pi - base):  # q(t*) = g on either side of a turn, every period
        k = round((phase - branch) / (2 * math.pi))
        candidates.append(t0 + (branch + 2 * math.pi * k) / OMEGA)
    return t - min(candidates, key=lambda c: abs(c - t))


def analyse(goals: list[tuple[float, int]], t0: float, start: float, end: float) -> dict[str, list[float]]:
    """Servo 1's goals in [start, end]: timing errors at each write (ms, signed and absolute), position errors
    (mrad), write intervals (ms), and the timing error of the goal the servo holds, every 2 ms (ms, absolute)."""
    out: dict[str, list[float]] = {
        'timing_ms': [],
        'abs_timing_ms': [],
        'position_mrad': [],
        'interval_ms': [],
        'held_abs_timing_ms': [],
    }
    inside = [(t, (ticks - 2048) * TICK_RAD) for t, ticks in goals if start <= t <= end]
    for (t_a, _), (t_b, _) in zip(inside, inside[1:], strict=False):
        out['interval_ms'].append((t_b - t_a) * 1e3)
    for t_w, g in inside:
        out['position_mrad'].append(abs(g - reference(t_w, t0)) * 1e3)
        late = lateness(t_w, g, t0)
        if late is not None:
            out['timing_ms'].append(late * 1e3)
            out['abs_timing_ms'].append(abs(late) * 1e3)
    if inside:
        k, t = 0, inside[0][0]
        while t <= inside[-1][0]:
            while k + 1 < len(inside) and inside[k + 1][0] <= t:
                k += 1
            late = lateness(t, inside[k][1], t0)
            if late is not None:
                out['held_abs_timing_ms'].append(abs(late) * 1e3)
            t += 0.002
    return out


def write_rig(directory: Path, port: str) -> Path:
    import yaml

    calibration = {
        'format': 'bimanual_vla.calibration',
        'version': 1,
        'arm': 'left',
        'protocol': 'feetech',
        'joints': {
            n: {'id': i, 'homing_offset': 0, 'range_min': 0, 'range_max': 4095, 'direction': 1, 'zero_ticks': 2048}
            for i, n in zip(IDS, NAMES, strict=True)
        },
    }
    (directory / 'left.json').write_text(json.dumps(calibration))
    arm = {
        'name': 'left',
        'protocol': 'feetech',
        'port': port,
        'calibration': str(directory / 'left.json'),
        'joints': [{'id': i, 'name': n, 'lower': -1.7, 'upper': 1.7} for i, n in zip(IDS, NAMES, strict=True)],
        'gripper': 'gripper',
        'read_rate_hz': 100,
    }
    rig = directory / 'rig.yaml'
    rig.write_text(yaml.safe_dump({'name': 'bench_rig', 'urdf': 'urdf/none.urdf', 'arms': [arm]}))
    return rig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=20.0, help='per mode and round')
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--no-busy', action='store_true', help='the publisher interpreter does nothing else')
    parser.add_argument('--role', default='main', help=argparse.SUPPRESS)
    parser.add_argument('--mode', default='tick', help=argparse.SUPPRESS)
    parser.add_argument('--t0', type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == 'publisher':
        run_publisher(args.mode, args.seconds, args.t0, not args.no_busy)
        return 0

    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    env = {**os.environ, 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'PYTHONPATH': str(REPO)}
    env.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
    goals: list[tuple[float, int]] = []
    lock = threading.Lock()

    def on_goal(sid: int, ticks: int) -> None:
        if sid == 1:
            with lock:
                goals.append((time.time(), ticks))

    emu = ServoBusEmulator('feetech', IDS)
    emu.on_goal = on_goal
    results: dict[str, dict[str, list[float]]] = {
        m: {k: [] for k in ('timing_ms', 'abs_timing_ms', 'position_mrad', 'interval_ms', 'held_abs_timing_ms')}
        | {'tick_period_ms': []}
        for m in ('tick', 'trajectory')
    }
    with tempfile.TemporaryDirectory() as tmp:
        rig = write_rig(Path(tmp), emu.start())
        driver = subprocess.Popen(
            [
                sys.executable,
                '-m',
                'bimanual_vla.drivers.servo.node',
                '--ros-args',
                '-p',
                f'rig:={rig}',
                '-p',
                'arm:=left',
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not emu.servo(1).torque_enabled and time.monotonic() < deadline:
                time.sleep(0.1)
            if not emu.servo(1).torque_enabled:
                raise RuntimeError('arm_driver did not take the emulated bus')
            time.sleep(1.0)
            load_before = os.getloadavg()
            for _ in range(args.rounds):
                for mode in ('tick', 'trajectory'):
                    t0 = time.time() + 1.0
                    with lock:
                        goals.clear()
                    cmd = [sys.executable, __file__, '--role', 'publisher', '--mode', mode]
                    cmd += ['--seconds', str(args.seconds), '--t0', repr(t0)] + (['--no-busy'] if args.no_busy else [])
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.seconds + 60)
                    if out.returncode != 0:
                        raise RuntimeError(f'publisher ({mode}) failed: {out.stderr[-2000:]}')
                    with lock:
                        taken = list(goals)
                    published = json.loads(out.stdout.strip().splitlines()[-1])
                    # from WARMUP_S after the publisher's first tick to a little before it stopped
                    window = analyse(taken, t0, published['first_tick'] + WARMUP_S, published['last_tick'] - 0.5)
                    for key, values in window.items():
                        results[mode][key] += values
                    results[mode]['tick_period_ms'] += published['tick_periods_ms'][round(WARMUP_S / PERIOD_S) :]
                    # back to rest between runs: a hold at 0 for the next one's start
                    time.sleep(0.5)
            load_after = os.getloadavg()
        finally:
            driver.terminate()
            try:
                driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                driver.kill()
            emu.stop()

    report = {
        'machine': {
            'cpus': os.cpu_count(),
            'python': platform.python_version(),
            'loadavg_1min': [round(load_before[0], 2), round(load_after[0], 2)],
        },  # fmt: skip
        'setup': {
            'seconds_per_mode_and_round': args.seconds,
            'rounds': args.rounds,
            'busy_publisher': not args.no_busy,
            'reference': f'{AMPLITUDE} rad sin(2 pi {FREQUENCY} Hz t), errors where |cos| >= 0.7',
            'driver_rate_hz': 100,
            'publisher_period_ms': PERIOD_S * 1e3,
            'trajectory': f'every {HORIZON_TICKS} ticks, {TRAJECTORY_S:g} s of points {PERIOD_S * 1e3:g} ms apart',
        },
    }
    for mode, values in results.items():
        report[mode] = {
            'timing_error_ms_signed': percentiles(values['timing_ms']),
            'timing_error_ms_abs': percentiles(values['abs_timing_ms']),
            'position_error_mrad': percentiles(values['position_mrad']),
            'held_goal_timing_error_ms_abs': percentiles(values['held_abs_timing_ms']),
            'goal_write_interval_ms': percentiles(values['interval_ms']),
            'publisher_tick_period_ms': percentiles(values['tick_period_ms']),
        }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
