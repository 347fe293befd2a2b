"""`bimanual-vla replay BAG`: republish a bag with its timing and drive /clock."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'replay',
        help='replay a bag on its topics with /clock',
        description='Publish the messages of a rosbag2 bag on their topics with their recorded timing and '
        'QoS, and bag time on /clock (start nodes with use_sim_time:=true to follow it).',
    )
    p.add_argument('bag', metavar='BAG', help='rosbag2 directory (or a lone .mcap file)')
    p.add_argument('--rate', type=float, default=1.0, help='speed factor (2.0 = twice as fast)')
    p.add_argument('--loop', action='store_true', help='start again at the end')
    p.add_argument('--start-offset', type=float, default=0.0, metavar='S', help='skip the first S seconds')
    p.add_argument('--topics', nargs='+', default=[], metavar='TOPIC', help='replay only these topics')
    p.add_argument('--clock-hz', type=float, default=100.0, metavar='N', help='/clock rate; 0 disables /clock')
    p.add_argument('--delay', type=float, default=0.0, metavar='S', help='wait S seconds before playing')
    p.add_argument(
        '--wait-for-subscribers',
        type=float,
        default=0.0,
        metavar='S',
        help='wait up to S seconds for every topic to have a subscriber before playing',
    )
    p.add_argument('--namespace', default='', help='namespace to publish relative names in')
    p.add_argument(
        '--time-base',
        choices=('auto', 'receive', 'header'),
        default='auto',
        help="clock to pace by: auto (default) = the bag's (its metadata, else inferred from the stamps), "
        'receive = recorder receive times, header = message stamps (sim recordings, /clock in sim time)',
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.parameter import Parameter

    from bimanual_vla.bags.read import BagError
    from bimanual_vla.bags.replay import BagPlayer, spin_until_done

    rclpy.init()
    overrides = [
        Parameter('bag', value=args.bag),
        Parameter('rate', value=float(args.rate)),
        Parameter('loop', value=bool(args.loop)),
        Parameter('start_offset_s', value=float(args.start_offset)),
        Parameter('topics', value=list(args.topics) or ['']),
        Parameter('clock_hz', value=float(args.clock_hz)),
        Parameter('delay_s', value=float(args.delay)),
        Parameter('wait_for_subscribers_s', value=float(args.wait_for_subscribers)),
        Parameter('time_base', value=args.time_base),
    ]
    try:
        player = BagPlayer(parameter_overrides=overrides, namespace=args.namespace or None)
    except (BagError, ValueError) as exc:
        rclpy.shutdown()
        import sys

        print(f'error: {exc}', file=sys.stderr)
        return 2
    except BaseException:
        rclpy.shutdown()
        raise
    return spin_until_done(player)
