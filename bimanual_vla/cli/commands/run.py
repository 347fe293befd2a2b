"""`bimanual-vla run --rig NAME`: bring up a rig's node set (same set as the launch files)."""

from __future__ import annotations

import argparse
import sys

from bimanual_vla.config import ConfigError, check_rig_files, load_rig, resolve_rig_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from bimanual_vla.bringup.launch_availability import ros2_launch_hint  # light: no launch, no rclpy

    p = sub.add_parser(
        'run',
        help='bring up a rig (drivers or simulator + policy node)',
        description='Start exactly the nodes launch/rig.launch.py (or sim.launch.py for a simulated rig) starts, '
        'and publish robot_description: the policy node in a process of its own (as launch starts it), the '
        'drivers or simulator composed in this one, each node spinning in a thread of its own. A policy process '
        'that dies is restarted (disabled, with backoff) while the arms hold. Stop with Ctrl-C or SIGTERM: each '
        'arm is left holding its pose, or with torque off where the rig says estop_action: torque_off.',
        epilog=ros2_launch_hint(),  # one line, only where `ros2 launch bimanual_vla` cannot work
    )
    p.add_argument(
        '--composed',
        action='store_true',
        help='run the policy node in this process too (one interpreter lock for all: slower inference)',
    )
    p.add_argument('--rig', required=True, help='rig YAML path or shipped name (e.g. so101_bimanual, aloha_sim)')
    p.add_argument(
        '--policy',
        default=None,
        help='policy YAML path or name; "none" runs without a policy. Default: the shipped "default" policy, '
        'or none (with a note saying why) where its checkpoint does not fit the rig',
    )
    p.add_argument(
        '--only',
        choices=('robot', 'policy'),
        default=None,
        help="one half of a rig whose policy runs on another computer (the rig's policy_host): robot = drivers "
        'or simulator, cameras and the clock responder; policy = the policy node (docs/remote_policy.md)',
    )
    p.add_argument('--duration', type=float, default=None, help='stop after this many seconds')
    p.add_argument(
        '--no-estop-key',
        dest='estop_key',
        action='store_false',
        help='do not read the terminal for the e-stop keys (SPACE stops, r releases; on by default)',
    )
    p.add_argument('--estop-device', default='', metavar='PATH', help='an evdev key or foot pedal (/dev/input/...)')
    p.add_argument('--estop-device-key', default='KEY_SPACE', metavar='KEY', help='its key: KEY_B, BTN_0, 48, ...')
    p.add_argument(
        '--estop-pedal-mode',
        choices=('latch', 'hold'),
        default='latch',
        help='latch: a press stops, r or the topic releases; hold: motion only while the pedal is held down',
    )
    p.add_argument(
        '--set',
        action='append',
        default=[],
        metavar='NODE.PARAM=VALUE',
        help='override a node parameter, e.g. --set sim_rig.seed=3 --set policy_node.enabled=true',
    )
    p.set_defaults(func=run)


def _note(text: str) -> None:
    print(f'run: {text}', file=sys.stderr, flush=True)


def _stop_on_sigterm() -> None:
    """SIGTERM (a service manager, `kill`) stops the rig the way Ctrl-C does: safe state, then exit."""
    import signal

    def handler(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    import rclpy

    from bimanual_vla.bringup.compose import OWN_PROCESS, run_composed
    from bimanual_vla.bringup.nodes import NodeSpec, rig_nodes
    from bimanual_vla.bringup.preflight import apply_set, parse_set, policy_for_rig
    from bimanual_vla.bringup.supervision import RestartPolicy
    from bimanual_vla.drivers.estop.input import parse_key
    from bimanual_vla.node_parameters import check_overrides

    rig = load_rig(args.rig)
    check_rig_files(rig, resolve_rig_path(args.rig))
    overrides = parse_set(args.set)
    checked = {
        name: check_overrides(name, overrides[name], f'--set {name}.', convert=True)
        for name in ('sim_rig', 'policy_node')
        if name in overrides
    }
    only = getattr(args, 'only', None)
    if only == 'robot':
        policy = None  # the policy node runs on the policy host
    else:
        policy = policy_for_rig(rig, args.policy, checked.get('policy_node', {}), note=_note)
        if policy is None and only == 'policy':
            raise ConfigError(f'run --only policy: no policy to run on rig {rig.name!r} (see the note above)')
    if policy is None:
        overrides.pop('policy_node', None)  # checked above; no policy node to take them
    nodes = rig_nodes(args.rig, policy=policy, sim_overrides=checked.get('sim_rig'), only=only)
    try:
        parse_key(args.estop_device_key)
    except ValueError as exc:
        raise ConfigError(f'--estop-device-key: {exc}') from None
    if args.estop_key or args.estop_device:  # composed here: it reads this process's terminal
        estop = {'keyboard': args.estop_key, 'device': args.estop_device, 'key': args.estop_device_key}
        nodes.append(NodeSpec('estop_input', 'estop_input', {**estop, 'mode': args.estop_pedal_mode}))
    specs = apply_set(nodes, overrides)
    rclpy.init()
    _stop_on_sigterm()
    description = None if only == 'policy' else args.rig  # robot_description comes from the robot half
    own_process = () if args.composed else OWN_PROCESS
    return run_composed(
        specs, f'running {args.rig}', args.duration, rig=description, own_process=own_process, restart=RestartPolicy()
    )
