"""`bimanual-vla record OUT`: record a rig's topics to a rosbag2 (MCAP) bag until Ctrl-C."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'record',
        help='record rig topics to a rosbag2 MCAP bag',
        description='Record cameras, joint states, commands, policy topics, e-stop, sim/success and '
        'diagnostics of a rig to a new rosbag2 directory (MCAP storage) until Ctrl-C / SIGTERM. '
        'Publish a label on record/episode (std_msgs/String) to start a labelled episode, "" to end it.',
    )
    p.add_argument('output', metavar='OUT', help='bag directory to create (must not exist)')
    p.add_argument('--rig', default='', help='rig YAML path or shipped rig name: record its topics')
    p.add_argument('--topics', nargs='+', default=[], metavar='TOPIC', help='extra topics to record')
    p.add_argument('--all', action='store_true', help='record every topic on the graph')
    p.add_argument('--compress', action='store_true', help='zstd-compress MCAP chunks (ros2 bag reads them)')
    p.add_argument('--namespace', default='', help='rig namespace the relative topic names live in')
    p.add_argument('--queue-limit-mb', type=float, default=1024.0, help='write-queue cap before dropping')
    p.add_argument(
        '--max-bag-size',
        type=float,
        default=0.0,
        metavar='MB',
        help='split: close the file after this many MB of message data and start OUT/OUT_<k+1>.mcap (0: one file)',
    )
    p.add_argument(
        '--max-bag-duration',
        type=float,
        default=0.0,
        metavar='S',
        help='split: close the file after this many seconds of recording (0: no limit)',
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.parameter import Parameter

    from bimanual_vla.bags.record import BagRecorder, StopSignals, rclpy_signal_options, spin_until_signal

    stop = StopSignals()  # a Ctrl-C while the bag is being set up still closes it
    rclpy.init(signal_handler_options=rclpy_signal_options())
    overrides = [
        Parameter('output', value=args.output),
        Parameter('rig', value=args.rig),
        Parameter('topics', value=list(args.topics) or ['']),
        Parameter('all', value=bool(args.all or (not args.rig and not args.topics))),
        Parameter('compress', value=bool(args.compress)),
        Parameter('queue_limit_mb', value=float(args.queue_limit_mb)),
        Parameter('max_bag_size_mb', value=float(args.max_bag_size)),
        Parameter('max_bag_duration_s', value=float(args.max_bag_duration)),
    ]
    try:
        recorder = BagRecorder(parameter_overrides=overrides, namespace=args.namespace or None)
    except BaseException:
        stop.restore()
        rclpy.shutdown()
        raise
    return spin_until_signal(recorder, stop)
