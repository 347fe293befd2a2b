"""`bimanual-vla eval BAG... --checkpoint DIR --out DIR`: open-loop evaluation of a policy on bags."""

from __future__ import annotations

import argparse

from bimanual_vla.cli.commands.export_lerobot import add_dataset_arguments, dataset_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'eval',
        help='open-loop evaluation of a checkpoint on recorded bags (JSON + plots)',
        description='For every STRIDE-th observation of the bags, run the policy and compare its action chunk '
        'with the recorded commands (per-joint MAE, error by horizon step) and its subtask with the recorded '
        'one (exact match, token F1). Writes OUT/report.json and PNG plots.',
    )
    p.add_argument('bags', nargs='+', metavar='BAG', help='rosbag2 directories (concatenated)')
    p.add_argument('--checkpoint', required=True, help='policy checkpoint directory')
    p.add_argument('--out', required=True, help='directory for report.json and plots')
    p.add_argument('--stride', type=int, default=10, help='evaluate every N-th sample (default 10)')
    p.add_argument('--max-samples', type=int, default=None, help='stop after N observations')
    p.add_argument('--seed', type=int, default=0, help='flow-matching noise seed')
    p.add_argument('--no-reasoning', action='store_true', help='do not decode subtasks')
    p.add_argument('--device', default='cpu')
    add_dataset_arguments(p, with_rate=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from bimanual_vla.bags.read import BagError
    from bimanual_vla.learning.dataset import BagDataset
    from bimanual_vla.learning.evaluate import evaluate, policy_predictor, write_report
    from bimanual_vla.policy_node.checkpoint import CheckpointError
    from bimanual_vla.policy_node.model import VLAPolicy

    if args.stride < 1:
        print('error: --stride must be >= 1', file=sys.stderr)
        return 2
    try:
        policy = VLAPolicy.load(args.checkpoint, device=args.device)
        options = dataset_options(args)
        options.cameras = list(policy.camera_names)
        options.joint_names = list(policy.joint_names)
        options.chunk_size = policy.chunk_size
        options.rate_hz = float(policy.control_rate_hz)
        dataset = BagDataset(args.bags, options)
        for time_base, bag in zip(dataset.time_bases, dataset.paths, strict=True):
            print(time_base.line(bag), file=sys.stderr)
        report, traces = evaluate(
            dataset,
            policy_predictor(policy, seed=args.seed, reasoning=not args.no_reasoning),
            stride=args.stride,
            max_samples=args.max_samples,
            progress=sys.stderr.isatty(),
        )
    except (BagError, CheckpointError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    report['checkpoint'] = str(args.checkpoint)
    report['time_bases'] = [tb.line(bag) for tb, bag in zip(dataset.time_bases, dataset.paths, strict=True)]
    written = write_report(report, traces, args.out, dataset.rate_hz, dataset.rig)
    summary = {k: report[k] for k in ('samples_evaluated', 'mae', 'rmse')}
    summary['subtask_exact_match_rate'] = report['subtask']['exact_match_rate']
    summary['report'] = str(written['report'])
    print(json.dumps(summary))
    return 0
