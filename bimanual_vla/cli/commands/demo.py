"""`bimanual-vla demo`: run one simulated episode headless and write a video, contact sheet and result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bimanual_vla.learning.tasks import TASK_TEXT


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'demo',
        help='run one episode of the simulated rig headless; write video, contact sheet and result',
        description='Bring up the simulated rig (the same nodes as `run --rig RIG`: the ALOHA sim, or the SO-101 '
        'twin behind its real arm drivers), drive it with the policy node when a checkpoint for the rig is shipped '
        '(or given with --checkpoint), else with the scripted expert (--driver expert), and write episode.mp4, '
        'contact_sheet.png (cameras side by side, the subtask drawn on) and result.json.',
    )
    p.add_argument('--out', type=Path, default=Path('out/demo'), help='output directory (default out/demo)')
    p.add_argument('--rig', default='aloha_sim', help='simulated rig or twin (so101_sim): YAML or shipped name')
    p.add_argument(
        '--driver',
        choices=['auto', 'policy', 'expert'],
        default='auto',
        help="auto (default): the rig's checkpoint where it learned the task, the scripted expert otherwise",
    )
    p.add_argument(
        '--task',
        choices=[*sorted(TASK_TEXT), 'all'],
        help="default: the rig's sim.task; aloha_sim: transfer_cube | insertion, so101_sim: handover_cube | lift_bar; "
        "all: each of the rig's tasks in turn, with its own prompt (OUT/<task>/), each driven as --driver says",
    )
    p.add_argument('--checkpoint', type=Path, help="a checkpoint for the rig to drive it with (default: the rig's)")
    p.add_argument('--seed', type=int, default=None, help='object-pose seed (default: a seed held out from training)')
    p.add_argument('--max-sim-s', type=float, default=20.0, help='stop after this much sim time')
    p.add_argument(
        '--real-time-factor', type=float, default=1.0, help='1 = real time, 0 = as fast as possible (not on a twin)'
    )
    p.add_argument(
        '--camera-size',
        type=camera_size,
        metavar='WxH',
        help="render every camera at this size instead of the rig file's (a CPU cannot render the twin's three "
        '640x480 cameras in real time; its checkpoint was trained at 160x120)',
    )
    p.set_defaults(func=run)


def camera_size(text: str) -> tuple[int, int]:
    """'160x120' -> (160, 120); argparse turns the ValueError into one line and status 2."""
    width, sep, height = text.lower().partition('x')
    if not sep or not width.isdigit() or not height.isdigit() or int(width) <= 0 or int(height) <= 0:
        raise argparse.ArgumentTypeError(f'{text!r} is not WIDTHxHEIGHT in pixels, e.g. 160x120')
    return int(width), int(height)


def run(args: argparse.Namespace) -> int:
    from bimanual_vla.bringup.nodes import is_twin
    from bimanual_vla.bringup.preflight import choose_checkpoint
    from bimanual_vla.config import ConfigError, load_rig
    from bimanual_vla.learning.demo import _choose_driver, run_demo
    from bimanual_vla.learning.tasks import rig_tasks

    # Which driver, and a checkpoint that can drive the rig, for every task: one line and status 2 if not,
    # before the sim starts.
    rig = load_rig(args.rig)
    try:
        tasks = list(rig_tasks(rig)) if args.task == 'all' else [args.task]
        plans = [_choose_driver(task, args.driver, args.rig, args.checkpoint) for task in tasks]
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from None
    if is_twin(rig) and not 0.0 < args.real_time_factor <= 1.0:
        raise ConfigError(
            f'--real-time-factor must be in (0, 1] on the twin {rig.name!r} (its drivers run on wall time)'
        )
    named_by = '--checkpoint' if args.checkpoint is not None else "the rig's checkpoint"
    for driver, checkpoint, _ in plans:
        if driver == 'policy':
            choose_checkpoint(rig, 'default', str(checkpoint), named_by)

    results = []
    for driver, checkpoint, task in plans:  # one after the other: the sim's task is fixed when it starts
        result = run_demo(
            args.out / task if args.task == 'all' else args.out,
            rig_name=args.rig,
            driver=driver,
            task=task,
            checkpoint=checkpoint if args.checkpoint is not None else None,
            seed=args.seed,
            max_sim_s=args.max_sim_s,
            real_time_factor=args.real_time_factor,
            camera_size=args.camera_size,
        )
        results.append(result.__dict__)
    print(json.dumps(results if args.task == 'all' else results[0], indent=2))
    return 0 if all(r['success'] for r in results) else 1
