"""Training throughput (samples/s) of small PI0 shapes on this machine's CPU, as JSON.

Uses a sample cache built by `bimanual-vla train` (pass --cache DIR), or synthetic samples of the
same layout (3 cameras, 14 joints, chunk 50) when none is given. Each configuration runs a few
warm-up steps, then times `--steps` optimizer steps (forward + backward + AdamW).

    .venv/bin/python bench/train_bench.py --threads 2 --batch-size 16 --shapes 96/16 96/12 64/8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_cache(directory: Path, image_size: int, n: int = 256):
    from bimanual_vla.learning.train_data import CachedSamples

    rng = np.random.default_rng(0)
    cams = ['top', 'left_wrist', 'right_wrist']
    return CachedSamples(
        directory=directory,
        cameras=cams,
        joint_names=[f'{a}_j{i}' for a in ('left', 'right') for i in range(7)],
        frames={c: rng.integers(0, 255, (n, image_size, image_size, 3), dtype=np.uint8) for c in cams},
        frame_index=np.tile(np.arange(n)[:, None], (1, 3)),
        state=rng.normal(size=(n, 14)).astype(np.float32),
        actions=rng.normal(size=(n, 50, 14)).astype(np.float32),
        actions_is_pad=np.zeros((n, 50), dtype=bool),
        task_id=np.zeros(n, dtype=np.int64),
        subtask_id=rng.integers(0, 3, n),
        episode=np.zeros(n, dtype=np.int64),
        tasks=['transfer the cube from the right arm to the left arm'],
        subtasks=['lift the cube', 'grasp the cube with the right gripper', 'move the cube to the left'],
        info={'rate_hz': 50.0},
    )


def main() -> None:
    import torch

    from bimanual_vla.learning.train import ModelShape, TrainConfig, Trainer
    from bimanual_vla.learning.train_data import load_cache

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--cache', type=Path)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--flow-samples', type=int, default=1)
    p.add_argument('--shapes', nargs='+', default=['96/16'], help='IMAGE/PATCH[/HIDDEN/LAYERS]')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for spec in args.shapes:
        parts = [int(v) for v in spec.split('/')]
        shape = ModelShape(image_size=parts[0], patch_size=parts[1])
        if len(parts) > 2:
            shape.hidden = parts[2]
        if len(parts) > 3:
            shape.layers = parts[3]
        with tempfile.TemporaryDirectory() as tmp:
            if args.cache:
                samples = load_cache(args.cache)
                if samples.frames[samples.cameras[0]].shape[1] != shape.image_size:
                    raise SystemExit(f'{args.cache} holds {samples.frames[samples.cameras[0]].shape[1]} px images')
            else:
                samples = synthetic_cache(Path(tmp), shape.image_size)
            cfg = TrainConfig(
                data=[],
                out=tmp,
                shape=shape,
                batch_size=args.batch_size,
                threads=args.threads,
                flow_samples=args.flow_samples,
                progress=False,
                steps=10**6,
            )
            trainer = Trainer(cfg, samples)
            for _ in range(2):
                trainer.train_step()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            dt = (time.perf_counter() - t0) / args.steps
        results.append(
            {
                'shape': spec,
                'parameters': trainer.parameters,
                'batch_size': args.batch_size,
                'flow_samples': args.flow_samples,
                'step_s': round(dt, 3),
                'samples_per_s': round(args.batch_size / dt, 1),
            }
        )
    print(json.dumps({'threads': args.threads, 'results': results}, indent=1))


if __name__ == '__main__':
    main()
