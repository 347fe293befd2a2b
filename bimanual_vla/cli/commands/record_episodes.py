"""`bimanual-vla record-episodes --rig NAME --task "..." --episodes N --episode-s S --reset-s R OUT`.

lerobot-record's workflow on rosbag2 (docs/teleop.md, Recording episodes): the rig, its leaders'
teleoperation and the recorder in this process; a countdown, then labelled episodes with reset
periods between; right arrow ends an episode early, left arrow re-records the last one, Esc stops
(also from `record/control` and an optional evdev pedal); a typed line is the subtask.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'record-episodes',
        help='record labelled teleoperated episodes to a bag, as lerobot-record does',
        description='Bring up the rig with its leader arms (as `teleop` does) and record episodes of --episode-s '
        'seconds with --reset-s seconds between them into the bag OUT, split into one file per episode so a '
        'killed session keeps every finished episode. Keys: RIGHT ends the episode (or the reset) early, LEFT '
        're-records the last episode (it stays in the bag, marked discarded), ESC stops; a typed line + Enter '
        'is the current subtask (policy/subtask). The same actions come from the record/control topic (next, '
        'rerecord, stop) and from --pedal.',
    )
    p.add_argument('output', metavar='OUT', help='bag directory to create (must not exist)')
    p.add_argument('--rig', required=True, help='rig YAML path or shipped name (with a `leaders:` list)')
    p.add_argument('--task', required=True, help='the task of every episode (policy/task, the training prompt)')
    p.add_argument('--episodes', type=int, default=50, help='episodes to keep (50)')
    p.add_argument('--episode-s', type=float, default=60.0, metavar='S', help='length of an episode (60 s)')
    p.add_argument('--reset-s', type=float, default=60.0, metavar='S', help='reset period between episodes (60 s)')
    p.add_argument('--countdown-s', type=float, default=3.0, metavar='S', help='before the first episode (3 s)')
    p.add_argument('--leaders', default='', metavar='NAMES', help='comma-separated leaders to run (default: all)')
    p.add_argument('--ramp', action='store_true', help='move each follower to its leader slowly before teleop')
    p.add_argument('--ramp-velocity', type=float, default=0.5, metavar='RAD_S', help="that ramp's speed (0.5 rad/s)")
    p.add_argument('--no-teleop', action='store_true', help='record only: leaders and teleop run elsewhere (or none)')
    p.add_argument('--attach', action='store_true', help='the rig runs elsewhere: start teleop and the recorder only')
    p.add_argument('--no-cameras', action='store_true', help='leave camera drivers out (and the sim rendering off)')
    p.add_argument('--pedal', metavar='DEVICE', help='an evdev foot pedal, e.g. /dev/input/by-id/...-event-kbd')
    p.add_argument('--pedal-keys', default=None, metavar='MAP', help='its keys (KEY_A=rerecord,KEY_B=stop,KEY_C=next)')
    p.add_argument('--say', action='store_true', help='speak the prompts with spd-say or espeak if installed')
    p.add_argument('--plain', action='store_true', help='print prompts line by line, no live display')
    p.add_argument('--compress', action='store_true', help='zstd-compress MCAP chunks')
    p.set_defaults(func=run)


def _checked(args: argparse.Namespace):
    """The session and the pedal map; ConfigError (one line, exit 2) for bad input."""
    from bimanual_vla.config import ConfigError
    from bimanual_vla.drivers.teleop.keys import PEDAL_DEFAULT, parse_pedal_map
    from bimanual_vla.learning.episode_session import EpisodeSession

    if Path(args.output).expanduser().exists():
        raise ConfigError(f'{args.output}: exists already; record-episodes writes a new bag directory')
    try:
        session = EpisodeSession(args.episodes, args.episode_s, args.reset_s, args.countdown_s)
        pedal = parse_pedal_map(args.pedal_keys or PEDAL_DEFAULT) if args.pedal or args.pedal_keys else None
    except ValueError as exc:
        raise ConfigError(f'{"--pedal-keys: " if "pedal" in str(exc) else ""}{exc}') from None
    if args.pedal_keys and not args.pedal:
        raise ConfigError('--pedal-keys: needs --pedal DEVICE')
    return session, pedal


def _specs(args: argparse.Namespace) -> list:
    """The rig and teleop node specs, as `bimanual-vla teleop` plans them (none of them with --no-teleop --attach)."""
    from bimanual_vla.bringup.nodes import rig_nodes
    from bimanual_vla.cli.commands import teleop

    if args.no_teleop:
        specs = [] if args.attach else rig_nodes(args.rig, policy=None)
        if args.no_cameras:
            specs = [s for s in specs if s.executable != 'camera_driver']
        return specs
    plan = argparse.Namespace(
        rig=args.rig, leaders=args.leaders, ramp=args.ramp, ramp_velocity=args.ramp_velocity, disarmed=False,
        attach=args.attach, no_cameras=args.no_cameras,
    )  # fmt: skip
    return teleop.plan(plan)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys

    import rclpy
    from rclpy.parameter import Parameter

    from bimanual_vla.bags.record import BagRecorder
    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.drivers.estop.input import keyboard_unavailable_reason, stdin_fd
    from bimanual_vla.drivers.teleop.keys import PedalKeys, TerminalKeys
    from bimanual_vla.learning.episode_recording import EpisodeConductor, SessionRunner, Speaker, summary

    session, pedal_map = _checked(args)
    specs = _specs(args)
    out = Path(args.output).expanduser()

    def on_term(signum, frame):  # SIGTERM closes the bag as Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    rclpy.init()
    composition = recorder = keys = pedal = None
    try:
        recorder = BagRecorder(
            parameter_overrides=[
                Parameter('output', value=str(out)),
                Parameter('rig', value=str(args.rig)),
                Parameter('split_on_episode_end', value=True),
                Parameter('compress', value=bool(args.compress)),
            ]
        )
        conductor = EpisodeConductor(args.task)
        composition = compose(specs, rig=None if args.attach else args.rig, own_process=(),
                              extra_nodes=[recorder, conductor])  # fmt: skip
        live = sys.stdout.isatty() and not args.plain
        runner = SessionRunner(session, conductor, recorder, live=live, speaker=Speaker(args.say))
        fd = stdin_fd()
        if fd is not None and keyboard_unavailable_reason(fd) is None:
            keys = TerminalKeys(fd, runner.on_key).start()
        else:
            print('record-episodes: no terminal keys (stdin is not this terminal); use record/control', flush=True)
        if args.pedal:
            pedal = PedalKeys(args.pedal, pedal_map or {}, runner.on_action).start()
        print(f'record-episodes on {args.rig}: task {args.task!r}, bag {out}', flush=True)
        runner.run()
        print(summary(session, out, runner.problems), flush=True)
    except KeyboardInterrupt:
        print(f'record-episodes: interrupted; the bag keeps every episode that ended ({out})', file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for reader in (keys, pedal):
            if reader is not None:
                reader.close()
        if recorder is not None:
            recorder.close()  # the bag complete (summary, metadata.yaml) before anything else stops
        if composition is not None:
            composition.shutdown()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
