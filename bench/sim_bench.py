"""Simulated rig speed: control steps per second with and without rendering, render ms per camera.

Prints one JSON object. No ROS involved: this measures the scene and the renderer the
sim_rig node is built on (the node adds message publishing on top).
    .venv/bin/python bench/sim_bench.py [--steps 500] [--task transfer_cube]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault('MUJOCO_GL', 'egl')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=500)
    parser.add_argument('--task', default='transfer_cube', choices=('transfer_cube', 'insertion'))
    parser.add_argument('--render-rate-hz', type=float, default=15.0)
    args = parser.parse_args()

    import mujoco

    from bimanual_vla.config import load_rig
    from bimanual_vla.sim.expert import ScriptedExpert
    from bimanual_vla.sim.scene import SceneRenderer, SimScene, rig_cameras

    rig = load_rig('aloha_sim')
    scene = SimScene(rig, task=args.task, seed=0)
    t0 = time.perf_counter()
    expert = ScriptedExpert(rig, args.task, 0)
    plan_s = time.perf_counter() - t0

    def drive(k: int) -> None:
        targets, _ = expert.act(k % expert.num_steps)
        for arm, target in targets.items():
            scene.command(arm, target)
        scene.step()

    t0 = time.perf_counter()
    for k in range(args.steps):
        drive(k)
    physics_sps = args.steps / (time.perf_counter() - t0)

    cams = rig_cameras(rig)
    renderer = SceneRenderer(scene.model, cams)
    per_cam: dict[str, list[float]] = {c: [] for c in cams}
    every = max(1, round(rig.control_rate_hz / args.render_rate_hz))
    scene.reset(0)
    t0 = time.perf_counter()
    for k in range(args.steps):
        drive(k)
        if k % every == 0:
            for cam in cams:
                t1 = time.perf_counter()
                renderer.render(scene.data, cam)
                per_cam[cam].append((time.perf_counter() - t1) * 1e3)
    with_render_sps = args.steps / (time.perf_counter() - t0)
    renderer.close()

    def ms(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        return {'mean': round(sum(values) / len(values), 2), 'p95': round(values[int(0.95 * (len(values) - 1))], 2)}

    print(
        json.dumps(
            {
                'task': args.task,
                'steps': args.steps,
                'control_rate_hz': rig.control_rate_hz,
                'substeps': scene.substeps,
                'control_steps_per_s_no_render': round(physics_sps, 1),
                'control_steps_per_s_with_render': round(with_render_sps, 1),
                'render_rate_hz': args.render_rate_hz,
                'render_ms_per_camera': {c: ms(v) for c, v in per_cam.items()},
                'camera_size': {c: f'{w}x{h}' for c, (w, h) in cams.items()},
                'real_time_factor_max_no_render': round(physics_sps / rig.control_rate_hz, 1),
                'real_time_factor_max_with_render': round(with_render_sps / rig.control_rate_hz, 1),
                'expert_plan_s': round(plan_s, 3),
                'mujoco': mujoco.__version__,
                'gl': os.environ.get('MUJOCO_GL'),
                'cpu': platform.processor() or platform.machine(),
                'cpu_count': os.cpu_count(),
            }
        )
    )


if __name__ == '__main__':
    main()
