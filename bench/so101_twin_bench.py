"""SO-101 twin speed: sim steps/s with its three cameras rendered, and the control loop through the
emulated STS3215 buses (joint_states rate, command-to-motion latency at 50 Hz).

Prints one JSON object.
    .venv/bin/python bench/so101_twin_bench.py [--steps 200] [--loop-s 10]

1. ``scene``: control steps of the twin's scene per second (physics only; physics + all three
   cameras rendered every step at the rig's 640x480), no ROS.
2. ``control_loop``: ``bimanual-vla run --rig so101_sim``'s node set (sim_rig + two arm_drivers,
   rendering off so only the loop is measured; ports in a temporary directory) composed with a probe
   node. ``joint_states`` messages per second per arm (the drivers read at 100 Hz); and, at 50 Hz,
   a step command on the right shoulder_pan: the time from publishing it to the simulated joint
   moving 0.01 rad (sim_rig's state) and to ``joint_states`` showing that motion (the driver's read).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bimanual_vla.rosenv import apply_pip_defaults

MOVED_RAD = 0.01


def scene_speed(steps: int) -> dict[str, float]:
    from bimanual_vla.config import load_rig
    from bimanual_vla.sim.scene import SceneRenderer, rig_cameras
    from bimanual_vla.sim.so101_scene import So101Scene

    rig = load_rig('so101_sim')
    scene = So101Scene(rig, seed=0)
    t0 = time.perf_counter()
    for k in range(steps):
        scene.command('right', {'shoulder_pan': 0.5 * (k // 25 % 2)})
        scene.step()
    physics = steps / (time.perf_counter() - t0)
    cams = rig_cameras(rig)
    renderer = SceneRenderer(scene.model, cams)
    scene.reset(0)
    t0 = time.perf_counter()
    for k in range(steps):
        scene.command('right', {'shoulder_pan': 0.5 * (k // 25 % 2)})
        scene.step()
        renderer.render_all(scene.data)
    rendered = steps / (time.perf_counter() - t0)
    renderer.close()
    return {
        'physics_steps_per_s': round(physics, 1),
        'steps_per_s_with_3_cameras': round(rendered, 1),
        'camera_size': list(next(iter(cams.values()))),
        'sim_time_per_step_s': scene.control_dt,
    }


def control_loop(loop_s: float, trials: int) -> dict[str, object]:
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from bimanual_vla import topics
    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import rig_nodes
    from bimanual_vla.config import share_dir

    tmp = Path(tempfile.mkdtemp(prefix='so101_twin_bench_'))
    text = (share_dir() / 'config/rigs/so101_sim.yaml').read_text()
    text = text.replace('/tmp/bimanual_vla_so101_sim/', f'{tmp}/').replace(
        '~/.config/bimanual_vla/calibration/', f'{tmp}/'
    )
    rig_file = tmp / 'so101_sim.yaml'
    rig_file.write_text(text)

    context = Context()
    rclpy.init(context=context)
    probe = Node('so101_twin_bench', context=context)
    lock = threading.Lock()
    stamps: dict[str, list[float]] = {'left': [], 'right': []}
    pan: list[tuple[float, float]] = []  # (arrival, right_shoulder_pan)

    def on_joints(msg: JointState) -> None:
        now = time.monotonic()
        with lock:
            arm = 'left' if msg.name[0].startswith('left_') else 'right'
            stamps[arm].append(now)
            if arm == 'right':
                pan.append((now, msg.position[0]))

    probe.create_subscription(JointState, topics.JOINT_STATES, on_joints, topics.SENSOR_QOS)
    pub = probe.create_publisher(JointState, topics.arm_command('right'), topics.COMMAND_QOS)
    specs = rig_nodes(str(rig_file), policy=None, sim_overrides={'render_rate_hz': 0.0})
    composition = compose(specs, context=context, extra_nodes=[probe])
    sim = composition.node('sim_rig')
    spin_thread = threading.Thread(target=composition.executor.spin, daemon=True)
    spin_thread.start()

    def sim_pan() -> float:
        with sim._lock:
            return float(sim.scene.joint_positions('right')[0])

    try:
        deadline = time.monotonic() + 30
        while not (stamps['left'] and stamps['right']):
            if time.monotonic() > deadline:
                raise RuntimeError('the arm drivers published no joint_states in 30 s')
            time.sleep(0.1)
        time.sleep(1.0)
        with lock:
            for arm in stamps:
                stamps[arm].clear()
        time.sleep(loop_s)
        with lock:
            rates = {arm: round(len(s) / loop_s, 1) for arm, s in stamps.items()}
            gaps = [b - a for s in stamps.values() for a, b in zip(s, s[1:], strict=False)]
        to_sim, to_states = [], []
        target = 0.0
        for k in range(trials):
            start = sim_pan()
            target = 0.3 if k % 2 == 0 else -0.3
            with lock:
                pan.clear()
            t0 = time.monotonic()
            t_sim = t_states = None
            while time.monotonic() - t0 < 3.0 and (t_sim is None or t_states is None):
                pub.publish(JointState(name=['right_shoulder_pan'], position=[target]))
                end = time.monotonic() + 0.02  # 50 Hz commands; poll the sim meanwhile
                while time.monotonic() < end:
                    if t_sim is None and abs(sim_pan() - start) >= MOVED_RAD:
                        t_sim = time.monotonic() - t0
                    with lock:
                        seen = next((t for t, q in pan if abs(q - start) >= MOVED_RAD), None)
                    if t_states is None and seen is not None:
                        t_states = seen - t0
                    time.sleep(0.001)
            if t_sim is not None:
                to_sim.append(t_sim * 1e3)
            if t_states is not None:
                to_states.append(t_states * 1e3)
            settle = time.monotonic() + 1.5  # let it arrive before the next step
            while time.monotonic() < settle:
                pub.publish(JointState(name=['right_shoulder_pan'], position=[target]))
                time.sleep(0.02)
    finally:
        composition.shutdown()
        if context.ok():
            rclpy.shutdown(context=context)

    def summary(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {
            'median': round(statistics.median(values), 1),
            'max': round(max(values), 1),
            'min': round(min(values), 1),
        }

    return {
        'joint_states_hz': rates,
        'joint_states_gap_ms_p99': round(sorted(gaps)[int(0.99 * (len(gaps) - 1))] * 1e3, 1) if gaps else None,
        'command_rate_hz': 50,
        'trials': trials,
        f'command_to_sim_motion_{MOVED_RAD}rad_ms': summary(to_sim),
        f'command_to_joint_states_motion_{MOVED_RAD}rad_ms': summary(to_states),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--loop-s', type=float, default=10.0)
    parser.add_argument('--trials', type=int, default=10)
    args = parser.parse_args()
    apply_pip_defaults()
    result = {
        'machine': {'python': platform.python_version(), 'cpus': os.cpu_count(), 'load_1min': os.getloadavg()[0]},
        'scene': scene_speed(args.steps),
        'control_loop': control_loop(args.loop_s, args.trials),
    }
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
