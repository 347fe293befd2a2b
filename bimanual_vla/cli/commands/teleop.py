"""`bimanual-vla teleop --rig NAME`: drive a rig's follower arms with its leader arms (docs/teleop.md).

Brings up the rig without a policy (the nodes `run --policy none` starts: arm drivers and cameras, or
the twin's simulator and drivers), the `teleop` node and the terminal e-stop (SPACE stops, r releases),
in this one process. `--attach` starts the teleop node alone, for a rig already running elsewhere.
"""

from __future__ import annotations

import argparse

from bimanual_vla.config import MAX_VELOCITY_RAD_S, ConfigError, check_override, load_rig, resolve_rig_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'teleop',
        help='drive the follower arms with the leader arms of the rig file',
        description='Read every leader arm of the rig (its `leaders:` list) and command its follower arm to match. '
        "Teleop starts only where leader and follower poses already match (within each leader's "
        'start_tolerance_rad), or, with --ramp, after moving the follower to the leader slowly. A leader that stops '
        'answering makes its follower hold. The e-stop (SPACE, the estop topic) stops teleop; after its release, '
        're-arm with `ros2 service call /teleop/enable std_srvs/srv/SetBool "{data: true}"`.',
    )
    p.add_argument('--rig', required=True, help='rig YAML path or shipped name with a `leaders:` list')
    p.add_argument('--leaders', default='', metavar='NAMES', help='comma-separated leaders to run (default: all)')
    p.add_argument('--ramp', action='store_true', help='move each follower to its leader slowly instead of refusing')
    p.add_argument('--ramp-velocity', type=float, default=0.5, metavar='RAD_S', help="that ramp's speed (0.5 rad/s)")
    p.add_argument('--disarmed', action='store_true', help='start disarmed (arm with the teleop/enable service)')
    p.add_argument('--attach', action='store_true', help='start only the teleop node (the rig runs elsewhere)')
    p.add_argument(
        '--takeover',
        action='store_true',
        help='takeover mode beside a running policy: moving a leader takes its arm over (the policy is muted '
        'for it), holding it still for 1 s hands it back; keys: t takes every arm over, h hands all back, 1-9 one '
        'arm (docs/teleop.md, Human takeover)',
    )
    p.add_argument('--no-cameras', action='store_true', help='leave camera drivers out (and the sim rendering off)')
    p.add_argument('--duration', type=float, default=None, help='stop after this many seconds')
    p.add_argument(
        '--no-estop-key',
        dest='estop_key',
        action='store_false',
        help='do not read the terminal for the e-stop keys (SPACE stops, r releases; on by default)',
    )
    p.set_defaults(func=run)


def plan(args: argparse.Namespace) -> list:
    """The node specs of this teleop session; ConfigError (one line) for a rig without the leaders asked for.

    The terminal's reader is `estop_input` (SPACE stops, r releases), composed here since it reads this
    process's terminal; in takeover mode it also turns t / h / 1-9 into `teleop/takeover` requests, and
    then runs beside `--attach` too (the operator's terminal is this one)."""
    from bimanual_vla.bringup.nodes import NodeSpec, is_twin, rig_nodes

    rig = load_rig(args.rig)
    if not rig.leaders:
        raise ConfigError(f'{resolve_rig_path(args.rig)}: leaders: the rig has no leader arms (docs/teleop.md)')
    names = [n.strip() for n in args.leaders.split(',') if n.strip()]
    for name in names:
        rig.leader(name)  # ConfigError naming the leaders there are
    check_override('teleop', '--ramp-velocity', args.ramp_velocity, MAX_VELOCITY_RAD_S)
    takeover = bool(getattr(args, 'takeover', False))
    teleop = NodeSpec(
        'teleop',
        'teleop',
        {
            'rig': str(args.rig),
            'leaders': ','.join(names),
            'ramp': bool(args.ramp),
            'ramp_velocity_rad_s': float(args.ramp_velocity),
            'armed': not args.disarmed,
            'takeover': takeover,
        },
    )
    keys: list[NodeSpec] = []
    if getattr(args, 'estop_key', False) and (takeover or not args.attach):  # record-episodes reads its own keys
        followers = [leader.follower for leader in rig.leaders if not names or leader.name in names]
        name = 'teleop_keys' if args.attach else 'estop_input'  # attached: the rig's own estop_input runs elsewhere
        keys = [
            NodeSpec('estop_input', name, {'keyboard': True, 'takeover_arms': ','.join(followers) if takeover else ''})
        ]
    if args.attach:
        return [teleop, *keys]
    specs = rig_nodes(args.rig, policy=None)
    if args.no_cameras:
        specs = [s for s in specs if s.executable != 'camera_driver']
        if is_twin(rig):
            specs = [
                NodeSpec(s.executable, s.name, {**s.parameters, 'render_rate_hz': 0.0}) if s.executable == 'sim_rig'
                else s for s in specs
            ]  # fmt: skip
    if is_twin(rig):  # the twin runs on sim time; teleop's leaders are read on wall time either way
        teleop = NodeSpec(teleop.executable, teleop.name, {**teleop.parameters, 'use_sim_time': True})
    return [*specs, teleop, *keys]


def run(args: argparse.Namespace) -> int:
    import rclpy

    from bimanual_vla.bringup.compose import run_composed

    specs = plan(args)
    rclpy.init()
    return run_composed(
        specs, f'teleop on {args.rig}', args.duration, rig=None if args.attach else args.rig, own_process=()
    )
