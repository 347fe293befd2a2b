"""`bimanual-vla scan --port P`: which servos are on a bus, their models, and the baud rate they answer at.

The first thing to run on a new bus. Tries every rate of the family's baud table
(``bimanual_vla/servo_baud_rates.py``), or only ``--baudrate``, with a broadcast PING; both
families unless ``--protocol`` names one. Each rate takes about a second (servos answer one by
one, so the bus listens as long as the manufacturers' SDKs do).
"""

from __future__ import annotations

import argparse
import sys

from bimanual_vla.config import ConfigError

PROTOCOLS = ('feetech', 'dynamixel')


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'scan',
        help='list the servos on a bus: ids, models, firmware and the baud rate they answer at',
        description='Broadcast-PING a serial port at every baud rate of the servo family (or only --baudrate) and '
        'list what answers. Run it first on a new bus; then `setup-servo` gives each servo its id.',
    )
    p.add_argument('--port', required=True, help='serial port, e.g. /dev/ttyACM0')
    p.add_argument('--protocol', default='', help='feetech or dynamixel (default: try both)')
    p.add_argument('--baudrate', default='', help="try only this rate (default: the family's whole table)")
    p.set_defaults(func=run)


def parse_protocol(text: str, *, required: bool) -> list[str]:
    """``--protocol`` as a list; ConfigError (one line, exit 2) for anything else."""
    if not text and not required:
        return list(PROTOCOLS)
    if text not in PROTOCOLS:
        raise ConfigError(f'--protocol: expected feetech or dynamixel, got {text!r}')
    return [text]


def parse_baudrate(text: str, protocols: list[str]) -> int:
    """``--baudrate`` as an int that is in every named family's table; ConfigError otherwise."""
    from bimanual_vla.servo_baud_rates import baud_register_value

    try:
        rate = int(text)
    except ValueError:
        raise ConfigError(f'--baudrate: expected a whole number of baud, got {text!r}') from None
    for protocol in protocols:
        try:
            baud_register_value(protocol, rate)
        except ValueError as exc:
            raise ConfigError(f'--baudrate: {exc}') from None
    return rate


def run(args: argparse.Namespace) -> int:
    from bimanual_vla.drivers.servo.bus import PortError
    from bimanual_vla.drivers.servo.discovery import scan_bus

    protocols = parse_protocol(args.protocol, required=False)
    rates = [parse_baudrate(args.baudrate, protocols)] if args.baudrate else None

    def progress(protocol: str, rate: int) -> None:  # on a terminal only: the output itself stays parseable
        sys.stderr.write(f'\r\033[Kscanning {args.port}: {protocol} @ {rate} baud ...')
        sys.stderr.flush()

    try:
        result = scan_bus(args.port, protocols, rates, progress=progress if sys.stderr.isatty() else None)
    except PortError as exc:
        raise ConfigError(f'--port: {exc}') from None
    if sys.stderr.isatty():
        sys.stderr.write('\r\033[K')
    shown = None
    for servo in result.servos:
        if (servo.protocol, servo.baudrate) != shown:
            shown = (servo.protocol, servo.baudrate)
            print(f'{servo.protocol} @ {servo.baudrate} baud:')
        print(f'  {servo.describe()}')
    for (protocol, rate), count in result.garbled.items():
        print(
            f'warning: {count} garbled repl{"y" if count == 1 else "ies"} ({protocol} @ {rate} baud): two servos '
            'share an id there (factory-fresh servos are all id 1); set them up one at a time with `setup-servo`'
        )
    if not result.servos:
        tried = ', '.join(f'{p} @ {", ".join(str(r) for q, r in result.tried if q == p)}' for p in protocols)
        print(f'no servo answered on {args.port} ({tried} baud): check power, wiring and the port', file=sys.stderr)
        return 1
    print(f'{len(result.servos)} servo(s) on {args.port}')
    return 0
