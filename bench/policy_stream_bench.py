"""Streaming benchmarks (sections of bench/policy_bench.py; also runnable alone, printing JSON).

* ``chunk_switch``: the same observations and the same noise, joined by ``naive``, ``ensemble``
  and ``rtc``, in simulated time (50 Hz ticks, a fixed inference delay, a new inference every
  ``execution_horizon`` steps) with the tiny random checkpoint. Reports the jump at each switch:
  the max over joints of |new - old| commanded action at the switch time (not the tick-to-tick
  step, which for an untrained model is dominated by its noisy chunks; that is reported beside
  it as context). For RTC also the jump before residual blending, i.e. what the model's guided
  sampling achieved by itself.
* ``control_loop``: the real ``PolicyNode`` over Fast DDS with synthetic cameras and joints
  (in process), inference running: control-loop period p50/p99/max while inference runs, and
  the latency from a camera frame's stamp to the first command that used it.

    .venv/bin/python bench/policy_stream_bench.py [--seconds 15] [--only chunk_switch control_loop]
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

RIG = 'aloha_sim'


def _tiny_checkpoint(directory: Path, chunk_size: int) -> Path:
    from bimanual_vla.learning.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(directory / f'tiny_{chunk_size}', rig=RIG, chunk_size=chunk_size)


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {'n': 0}
    return {
        'n': int(a.size),
        'mean': round(float(a.mean()), 4),
        'p50': round(float(np.percentile(a, 50)), 4),
        'p99': round(float(np.percentile(a, 99)), 4),
        'max': round(float(a.max()), 4),
    }


def bench_chunk_switch(
    switches: int = 12, latency_s: float = 0.2, horizon: int = 25, chunk_size: int = 50, num_steps: int = 10
) -> dict[str, Any]:
    """naive / ensemble / rtc on identical inputs and noise, in simulated time."""
    from bimanual_vla.policy_node.chunking import Chunk, ChunkExecutor, LatencyEstimator, plan_guide
    from bimanual_vla.policy_node.model import Observation, VLAPolicy

    with tempfile.TemporaryDirectory() as tmp:
        policy = VLAPolicy.load(_tiny_checkpoint(Path(tmp), chunk_size), num_steps=num_steps)
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8) for c in policy.camera_names}
    state = np.zeros(len(policy.joint_names))
    dt = 1.0 / policy.control_rate_hz
    noises = [rng.standard_normal((chunk_size, policy.config.max_action_dim)).astype(np.float32) for _ in range(99)]
    out: dict[str, Any] = {
        'setup': {
            'chunk_size': chunk_size,
            'execution_horizon': horizon,
            'simulated_latency_s': latency_s,
            'flow_steps': num_steps,
            'switches': switches,
            'rtc_beta': 5.0,
            'note': 'untrained random model: chunks are noise-shaped, so absolute numbers are a worst case',
        }
    }
    for strategy in ('naive', 'ensemble', 'rtc'):
        executor = ChunkExecutor(strategy, ensemble_decay=0.1)
        latency = LatencyEstimator()
        jumps, raw_jumps, switch_steps, other_steps, frozen = [], [], [], [], []
        t = 0.0
        last = None
        pending: tuple[float, Chunk, Any] | None = None
        next_inference = 0.0
        k = 0
        switch_ticks: set[int] = set()
        tick = 0
        while k <= switches:
            if pending is None and t >= next_inference - 1e-9:
                plan = None
                if strategy == 'rtc':
                    plan = plan_guide(
                        executor,
                        t_obs=t,
                        now=t,
                        expected_latency_s=latency.estimate_s or 0.0,
                        dt=dt,
                        chunk_size=chunk_size,
                    )
                result = policy.infer(
                    Observation(images=images, state=state, task='transfer the cube to the left arm', stamp=t),
                    decode_subtask=False,
                    guide=plan.to_chunk_guide(5.0) if plan is not None else None,
                    noise=noises[k],
                )
                if plan is not None:
                    frozen.append(plan.frozen_steps)
                pending = (t + latency_s, Chunk(result.actions, t0=t, dt=dt, seq=k), plan)
                next_inference = t + horizon * dt
                k += 1
            if pending is not None and t >= pending[0] - 1e-9:
                report = executor.add(pending[1], now=t, guide=pending[2])
                latency.add(latency_s)
                if report.reason == 'joined':
                    jumps.append(report.jump)
                    raw_jumps.append(report.raw_jump)
                    switch_ticks.add(tick + (1 if report.start_index % 1 > 1e-6 else 0))
                pending = None
            action = executor.step(t).action
            if action is not None and last is not None:
                (switch_steps if tick in switch_ticks else other_steps).append(float(np.max(np.abs(action - last))))
            last = action
            t += dt
            tick += 1
        entry = {
            'switch_jump_rad': _stats(jumps),
            'tick_step_at_switch_rad': _stats(switch_steps),
            'tick_step_elsewhere_rad': _stats(other_steps),
        }
        if strategy == 'rtc':
            entry['switch_jump_before_residual_blend_rad'] = _stats(raw_jumps)
            entry['frozen_steps'] = _stats(frozen)
        out[strategy] = entry
    return out


class _SyntheticRig:
    """Cameras at their rig fps and joint_states at 100 Hz, stamped now; counts commands."""

    def __init__(self, context) -> None:
        from rclpy.node import Node
        from sensor_msgs.msg import Image, JointState

        from bimanual_vla import topics
        from bimanual_vla.config import load_rig

        self.node = Node('bench_synthetic_rig', context=context)
        rig = load_rig(RIG)
        self.names = rig.all_joint_names()
        self.position = [(j.lower + j.upper) / 2 for a in rig.arms for j in a.joints]
        rng = np.random.default_rng(0)
        self.frames = {}
        for cam in rig.cameras:
            pub = self.node.create_publisher(Image, topics.camera_image(cam.name), topics.SENSOR_QOS)
            data = rng.integers(0, 255, size=(cam.height, cam.width, 3), dtype=np.uint8).tobytes()
            self.frames[cam.name] = (pub, cam, data)
            self.node.create_timer(1.0 / cam.fps, lambda name=cam.name: self._image(name))
        self.js = self.node.create_publisher(JointState, topics.JOINT_STATES, topics.SENSOR_QOS)
        self.node.create_timer(0.01, self._joints)
        self._Image, self._JointState = Image, JointState

    def _image(self, name: str) -> None:
        pub, cam, data = self.frames[name]
        msg = self._Image(height=cam.height, width=cam.width, encoding='rgb8', step=cam.width * 3, data=data)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        pub.publish(msg)

    def _joints(self) -> None:
        msg = self._JointState(name=self.names, position=self.position)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.js.publish(msg)


def bench_control_loop(seconds: float = 15.0, torch_threads: int = 1, chunking: str = 'rtc') -> dict[str, Any]:
    """PolicyNode on synthetic inputs over Fast DDS: control period and frame-to-command latency."""
    from bimanual_vla.rosenv import apply_pip_defaults

    apply_pip_defaults()
    os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
    import rclpy
    import torch
    import yaml
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from bimanual_vla.bringup.executors import NodeThreads
    from bimanual_vla.policy_node.node import PolicyNode

    threads_before = torch.get_num_threads()  # the node sets torch's (process-wide) count; put it back after
    context = Context()
    rclpy.init(context=context)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _tiny_checkpoint(Path(tmp), 50)
        policy_yaml = Path(tmp) / 'policy.yaml'
        policy_yaml.write_text(
            yaml.safe_dump(
                {
                    'checkpoint': str(ckpt),
                    'task': 'transfer the cube to the left arm',
                    'inference': {'num_steps': 10, 'chunking': chunking, 'torch_threads': torch_threads},
                    'safety': {'enabled_at_start': True},
                }
            )
        )
        executor = NodeThreads(context=context)
        rig = _SyntheticRig(context)
        node = PolicyNode(
            context=context,
            parameter_overrides=[Parameter('rig', value=RIG), Parameter('policy', value=str(policy_yaml))],
        )
        executor.add_node(rig.node)
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while node.stats.chunks < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            node.stats.tick_periods_ms.clear()
            node.stats.frame_to_command_ms.clear()
            node.stats.inference_ms.clear()
            commands0 = node.gate.counters.commands
            time.sleep(seconds)
            periods = list(node.stats.tick_periods_ms)
            result = {
                'seconds': seconds,
                'torch_threads': torch_threads or 'torch default',
                'chunking': chunking,
                'control_rate_hz': node.rig.control_rate_hz,
                'control_period_ms': _stats(periods),
                'ticks_over_1_5x_period': int(sum(p > 1.5e3 / node.rig.control_rate_hz for p in periods)),
                'commands_per_s': round((node.gate.counters.commands - commands0) / seconds, 2),
                'inference_ms': _stats(list(node.stats.inference_ms)),
                'camera_stamp_to_first_command_ms': _stats(list(node.stats.frame_to_command_ms)),
                'chunks_refused_late': node.stats.chunks_refused,
                'starved_ticks': node.stats.starved_ticks,
                'load_avg_1m': round(os.getloadavg()[0], 2),
            }
        finally:
            executor.shutdown(timeout_sec=5)
            thread.join(timeout=10)
            node.destroy_node()
            rig.node.destroy_node()
            rclpy.shutdown(context=context)
            torch.set_num_threads(threads_before)
    result['torch_threads_used'] = threads_before if torch_threads == 0 else torch_threads
    return result


def bench_control_loop_torch_default(seconds: float = 15.0) -> dict[str, Any]:
    """The same with torch's default thread count (every core), to show the contention."""
    return bench_control_loop(seconds=seconds, torch_threads=0)


SECTIONS = {
    'chunk_switch': bench_chunk_switch,
    'control_loop': bench_control_loop,
    'control_loop_torch_default': bench_control_loop_torch_default,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', nargs='+', choices=sorted(SECTIONS))
    parser.add_argument('--seconds', type=float, default=15.0, help='control-loop measurement time')
    args = parser.parse_args(argv)
    results: dict[str, Any] = {'load_avg_1m': round(os.getloadavg()[0], 2), 'cpu_count': os.cpu_count()}
    for name in args.only or list(SECTIONS):
        fn = SECTIONS[name]
        results[name] = fn(seconds=args.seconds) if name.startswith('control_loop') else fn()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
