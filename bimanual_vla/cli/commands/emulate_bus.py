"""`bimanual-vla emulate-bus`: serve emulated Feetech or Dynamixel servos on a pseudo-terminal.

The first line printed is the pty path (flushed at once), so a script can start
this, read one line, and hand the path to an arm driver or a manufacturer's SDK.
It serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def parse_ids(text: str) -> list[int]:
    """'1-6' or '1,2,5' or '1-3,7' -> sorted unique ids."""
    ids: set[int] = set()
    try:
        for part in text.split(','):
            part = part.strip()
            if not part:
                continue
            if '-' in part:
                lo, hi = (int(x) for x in part.split('-', 1))
                if lo > hi:
                    raise ValueError
                ids.update(range(lo, hi + 1))
            else:
                ids.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f'invalid id list {text!r}; use e.g. 1-6 or 1,2,5') from None
    if not ids or min(ids) < 0 or max(ids) > 252:
        raise argparse.ArgumentTypeError(f'ids must be in 0..252, got {text!r}')
    return sorted(ids)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'a probability must be in [0, 1], got {text}')
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {text}')
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'emulate-bus',
        help='emulate a bus of Feetech or Dynamixel servos on a pseudo-terminal',
        description='Serve emulated servos on a pty. Prints the pty path on the first line, then serves '
        'until interrupted. Open that path like a serial port (our bus, the arm driver, or the SDKs).',
    )
    p.add_argument('--protocol', choices=('feetech', 'dynamixel'), required=True)
    p.add_argument('--ids', type=parse_ids, default=parse_ids('1-6'), help='servo ids, e.g. 1-6 or 1,2,7 (default 1-6)')
    p.add_argument('--drop', type=parse_ids, default=[], metavar='IDS', help='servos that never answer, e.g. 3')
    p.add_argument('--delay-ms', type=_non_negative, default=0.0, help='delay before every reply')
    p.add_argument('--corrupt-rate', type=_rate, default=0.0, help='probability a reply has a flipped bit')
    p.add_argument('--late-rate', type=_rate, default=0.0, help='probability a reply arrives one transaction late')
    p.add_argument('--noise-rate', type=_rate, default=0.0, help='probability of noise bytes before a reply')
    p.add_argument('--seed', type=int, default=0, help='seed of the fault injection')
    p.add_argument('--speed', type=float, default=3000.0, help='max servo speed, ticks per second (default 3000)')
    p.add_argument('--model-number', type=int, default=None, help='model number servos report (default per protocol)')
    p.add_argument(
        '--baudrate',
        type=int,
        default=None,
        help='baud rate the servos listen at (default 1000000; a factory-fresh Dynamixel X is at 57600)',
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bimanual_vla.drivers.servo.emulator import FaultConfig, ServoBusEmulator

    faults = FaultConfig(
        missing_ids=set(args.drop),
        reply_delay_s=args.delay_ms / 1000.0,
        corrupt_rate=args.corrupt_rate,
        late_reply_rate=args.late_rate,
        noise_rate=args.noise_rate,
        seed=args.seed,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    from bimanual_vla.config import ConfigError
    from bimanual_vla.servo_baud_rates import baud_register_value

    if args.baudrate is not None:
        try:
            baud_register_value(args.protocol, args.baudrate)
        except ValueError as exc:
            raise ConfigError(f'--baudrate: {exc}') from None
    emulator = ServoBusEmulator(
        args.protocol,
        args.ids,
        faults=faults,
        max_speed_ticks_per_s=args.speed,
        model_number=args.model_number,
        baudrate=args.baudrate,
    )
    try:
        port = emulator.start()
        print(port, flush=True)
        print(
            f'emulating {args.protocol} servos {args.ids} on {port} at {emulator.servo(args.ids[0]).baudrate} baud'
            + (f', not answering: {sorted(faults.missing_ids)}' if faults.missing_ids else '')
            + '; Ctrl-C to stop',
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
