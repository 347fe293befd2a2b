"""`bimanual-vla export-lerobot BAG... --out DIR --fps 50`: bags -> a LeRobot v3.0 dataset."""

from __future__ import annotations

import argparse


def add_dataset_arguments(p: argparse.ArgumentParser, *, with_rate: bool = True) -> None:
    """Options shared by the commands that cut samples from bags (see bimanual_vla.learning.dataset)."""
    g = p.add_argument_group('sampling (see docs/dataset.md)')
    g.add_argument('--rig', default=None, help='rig name or YAML: cameras, joint order, arms (default: from the bag)')
    if with_rate:
        g.add_argument('--cameras', nargs='+', default=None, metavar='CAM', help='cameras to use (default: all)')
    g.add_argument('--action-source', choices=('leader', 'command', 'commands', 'joint_states'), default=None,
                   help="actions from the followers' recorded commands ('command', the default for bags without "
                        "leaders), the teleop leaders' positions ('leader': leader/<arm>/joint_states) or future "
                        'joint states; bags with both leaders and commands (record-episodes) need it said')  # fmt: skip
    g.add_argument('--command-topic', default='arms/{arm}/joint_command',
                   help='per-arm action topic, e.g. leader/{arm}/joint_states for teleop data')  # fmt: skip
    g.add_argument('--state-mode', choices=('latest', 'interpolate'), default='latest')
    g.add_argument('--time-base', choices=('auto', 'receive', 'header'), default='auto',
                   help="clock to sample on: auto (default) = the bag's (its metadata, else inferred from the "
                        "stamps; one line says which), receive = recorder receive times, header = message "
                        "stamps (sim time)")  # fmt: skip
    g.add_argument('--camera-max-age', type=float, default=0.5, metavar='S', help='skip samples with older frames')
    g.add_argument('--joint-max-age', type=float, default=0.2, metavar='S')
    g.add_argument('--namespace', default='/')
    g.add_argument('--task', default='', help='task text where the bag has no policy/task')


def dataset_options(args: argparse.Namespace, bags: list[str] | None = None):
    """The DatasetOptions of the command line; ValueError when `bags` need --action-source said."""
    from bimanual_vla.learning.dataset import DatasetOptions, choose_action_source

    return DatasetOptions(
        rig=args.rig,
        cameras=getattr(args, 'cameras', None),
        action_source=choose_action_source(bags or [], args.action_source, args.namespace),
        command_topic=args.command_topic,
        state_mode=args.state_mode,
        time_base=args.time_base,
        camera_max_age_s=args.camera_max_age,
        joint_max_age_s=args.joint_max_age,
        namespace=args.namespace,
        default_task=args.task,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'export-lerobot',
        help='export bags to a LeRobot v3.0 dataset (parquet + AV1 mp4)',
        description='Resample the episodes of the bags at FPS and write a LeRobot dataset (format v3.0): '
        'meta/info.json, meta/stats.json, meta/tasks.parquet, meta/episodes, data/ parquet, videos/ mp4.',
    )
    p.add_argument('bags', nargs='+', metavar='BAG', help='rosbag2 directories (concatenated)')
    p.add_argument('--out', required=True, help='dataset directory to create (must not exist)')
    p.add_argument('--fps', type=int, default=50, help='frame rate of the dataset, a whole number (default 50)')
    p.add_argument('--vcodec', choices=('libsvtav1', 'h264'), default='libsvtav1',
                   help="video encoder: libsvtav1 (AV1, LeRobot's default) or h264 (libx264)")  # fmt: skip
    p.add_argument('--robot-type', default=None, help='info.json robot_type (default: the rig name)')
    add_dataset_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from bimanual_vla.bags.read import BagError
    from bimanual_vla.learning.lerobot_export import ExportError, export_lerobot

    try:
        summary = export_lerobot(args.bags, args.out, fps=args.fps, options=dataset_options(args, args.bags),
                                 robot_type=args.robot_type, progress=sys.stderr.isatty(),
                                 vcodec=args.vcodec)  # fmt: skip
    except (BagError, ExportError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    for line in summary.get('time_bases', []):
        print(line, file=sys.stderr)
    print(json.dumps(summary))
    return 0
