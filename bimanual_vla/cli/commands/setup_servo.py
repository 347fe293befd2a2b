"""`bimanual-vla setup-servo --port P --protocol F --id N [--baudrate B]`: give one new servo its id and baud rate.

Connect ONE servo at a time (factory-fresh servos all answer as id 1; two at once collide), as
LeRobot's ``lerobot-setup-motors`` asks. The servo is found at whatever rate it is set to, torque
is turned off, id and baud rate are written (Feetech EEPROM unlocked and locked again), and it is
pinged at the new id and rate to prove the change took. Refuses when no servo or more than one
answers.
"""

from __future__ import annotations

import argparse
import sys

from bimanual_vla.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'setup-servo',
        help="set the id and baud rate of the one servo connected to a bus (LeRobot's motor set-up)",
        description='With exactly one servo on the bus: find it at any baud rate, set its id and baud rate, '
        'and verify it answers there. Connect the servos one at a time, the last joint first.',
    )
    p.add_argument('--port', required=True, help='serial port, e.g. /dev/ttyACM0')
    p.add_argument('--protocol', required=True, help='feetech or dynamixel')
    p.add_argument('--id', required=True, dest='new_id', metavar='ID', help="the servo's new id (the rig file's id)")
    p.add_argument('--baudrate', default='1000000', help="the servo's new baud rate (default 1000000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bimanual_vla.cli.commands.scan import parse_baudrate, parse_protocol
    from bimanual_vla.drivers.servo.bus import BusError, PortError
    from bimanual_vla.drivers.servo.discovery import SetupError, setup_servo
    from bimanual_vla.drivers.servo.protocols import protocol_for

    (protocol,) = parse_protocol(args.protocol, required=True)
    rate = parse_baudrate(args.baudrate, [protocol])
    max_id = protocol_for(protocol).max_id
    try:
        new_id = int(args.new_id)
    except ValueError:
        raise ConfigError(f'--id: expected a servo id 0..{max_id}, got {args.new_id!r}') from None
    if not 0 <= new_id <= max_id:
        raise ConfigError(f'--id: {protocol} servo ids are 0..{max_id}, got {new_id}')
    try:
        result = setup_servo(args.port, protocol, new_id, rate)
    except PortError as exc:
        raise ConfigError(f'--port: {exc}') from None
    except (SetupError, BusError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    before, after = result.before, result.after
    print(
        f'{after.model} (firmware {after.firmware}) on {args.port}: id {before.id} -> {after.id}, '
        f'{before.baudrate} -> {after.baudrate} baud; answers at the new id and rate'
    )
    return 0
