"""The `bimanual-vla` command line: one entry point, one module per subcommand.

Each subcommand lives in ``bimanual_vla/cli/commands/<name>.py`` and exposes
``add_parser(subparsers)``; the parser it adds carries ``func`` (taking the
parsed args, returning an exit code). Subcommand modules import heavy
dependencies (torch, mujoco, rclpy) inside ``func`` only, so ``--help`` and
``check-rig`` stay fast and work without them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bimanual_vla import __version__
from bimanual_vla.config import ConfigError
from bimanual_vla.rosenv import apply_pip_defaults

COMMAND_MODULES: tuple[str, ...] = (
    'bimanual_vla.cli.commands.check_rig',
    'bimanual_vla.cli.commands.emulate_bus',
    'bimanual_vla.cli.commands.scan',
    'bimanual_vla.cli.commands.setup_servo',
    'bimanual_vla.cli.commands.run',
    'bimanual_vla.cli.commands.demo',
    'bimanual_vla.cli.commands.record',
    'bimanual_vla.cli.commands.replay',
    'bimanual_vla.cli.commands.calibrate',
    'bimanual_vla.cli.commands.make_checkpoint',
    'bimanual_vla.cli.commands.sim_expert',
    'bimanual_vla.cli.commands.eval',
    'bimanual_vla.cli.commands.export_lerobot',
    'bimanual_vla.cli.commands.collect',
    'bimanual_vla.cli.commands.train',
    'bimanual_vla.cli.commands.eval_sim',
    'bimanual_vla.cli.commands.teleop',
    'bimanual_vla.cli.commands.record_episodes',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='bimanual-vla',
        description='Bimanual VLA control stack: bring up, record, replay, evaluate, train.',
    )
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def strip_ros_args(argv: list[str]) -> list[str]:
    """`argv` without its ROS arguments (`--ros-args ... [--]`), as rclpy would take them.

    launch_ros starts every executable, this CLI included, with `--ros-args` and its node name,
    parameter files and remappings appended; argparse would refuse them. The arguments themselves stay
    in `sys.argv`, where `rclpy.init()` reads them, so a command's node still takes its name and
    parameters from the launch file. rclpy is imported only when there is something to strip, so
    `--help` and `check-rig` keep needing none of it. Malformed ROS arguments raise ValueError.
    """
    if '--ros-args' not in argv:
        return argv
    from rclpy.utilities import remove_ros_args

    try:
        return remove_ros_args(['bimanual-vla', *argv])[1:]
    except Exception as exc:  # rclpy's RCLInvalidROSArgsError, without importing rclpy's internals
        detail = str(exc).splitlines()[0].split(', at ')[0].removeprefix('Failed to parse ROS arguments: ')
        raise ValueError(f'invalid ROS arguments: {detail}') from None


def main(argv: list[str] | None = None) -> int:
    apply_pip_defaults()
    try:
        argv = strip_ros_args(sys.argv[1:] if argv is None else list(argv))
    except ValueError as exc:
        print(f'bimanual-vla: error: {exc}', file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
