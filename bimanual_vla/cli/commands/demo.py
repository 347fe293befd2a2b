"""`bimanual-vla demo`: run one simulated episode headless and write a video, contact sheet and result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'demo',
        help='run one episode of the simulated rig headless; write video, contact sheet and result',
        description='Bring up the simulated ALOHA rig (the same nodes as `run --rig aloha_sim`), drive it with '
        'the policy node when a trained checkpoint is installed (else with the scripted expert), and write '
        'episode.mp4, contact_sheet.png (cameras side by side, the subtask drawn on) and result.json.',
    )
    p.add_argument('--out', type=Path, default=Path('out/demo'), help='output directory (default out/demo)')
    p.add_argument(
        '--driver',
        choices=['auto', 'policy', 'expert'],
        default='auto',
        help='auto (default): the shipped checkpoint for transfer_cube, the scripted expert otherwise',
    )
    p.add_argument('--task', choices=['transfer_cube', 'insertion'], default='transfer_cube')
    p.add_argument('--seed', type=int, default=None, help='object-pose seed (default: a seed held out from training)')
    p.add_argument('--max-sim-s', type=float, default=20.0, help='stop after this much sim time')
    p.add_argument('--real-time-factor', type=float, default=1.0, help='1 = real time, 0 = as fast as possible')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bimanual_vla.bringup.preflight import choose_checkpoint
    from bimanual_vla.config import ConfigError, load_rig
    from bimanual_vla.learning.demo import _choose_driver, run_demo

    # Which driver, and a checkpoint that can drive the rig: one line and status 2 if not, before the sim starts.
    try:
        driver, checkpoint = _choose_driver(args.task, args.driver)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from None
    if driver == 'policy':
        choose_checkpoint(load_rig('aloha_sim'), 'default', str(checkpoint), "the default policy's checkpoint")

    result = run_demo(
        args.out,
        driver=args.driver,
        task=args.task,
        seed=args.seed,
        max_sim_s=args.max_sim_s,
        real_time_factor=args.real_time_factor,
    )
    print(json.dumps(result.__dict__, indent=2))
    return 0 if result.success else 1
