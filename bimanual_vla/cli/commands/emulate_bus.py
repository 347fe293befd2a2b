"""`bimanual-vla emulate-bus`: serve emulated Feetech or Dynamixel servos on a pseudo-terminal.

The first line printed is the pty path (flushed at once), so a script can start
this, read one line, and hand the path to an arm driver or a manufacturer's SDK.
It serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any


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
    p.add_argument(
        '--motion',
        default=None,
        metavar='FILE',
        help='move the servos along recorded angles (CSV/JSON, '
        'radians; a scripted hand on a leader arm: docs/teleop.md)',
    )
    p.add_argument(
        '--calibration', default=None, metavar='FILE', help='for --motion: maps joint-name columns to servos'
    )
    p.add_argument(
        '--loop', action='store_true', help='for --motion: start over at the end (default: hold the last pose)'
    )
    p.add_argument(
        '--link', default=None, metavar='PATH', help="also make PATH a symlink to the pty (a rig file's port)"
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
    player = _motion_player(args, emulator)
    link = Path(args.link).expanduser() if args.link else None
    try:
        port = emulator.start()
        if link is not None:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(port)
        if player is not None:
            player.start()
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
        if player is not None:
            player.stop()
        if link is not None and link.is_symlink() and os.readlink(link) == emulator.port:
            link.unlink()
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _motion_player(args: argparse.Namespace, emulator: Any) -> Any:
    """The --motion player for ``emulator``, or None; a bad motion or calibration file is a ConfigError (one line)."""
    if args.motion is None:
        if args.calibration or args.loop:
            from bimanual_vla.config import ConfigError

            raise ConfigError('--calibration and --loop go with --motion')
        return None
    from bimanual_vla.config import ConfigError
    from bimanual_vla.drivers.servo.calibration import CalibrationError, load_calibration
    from bimanual_vla.drivers.servo.emulated_motion import MotionError, MotionPlayer, load_motion

    try:
        calibration = load_calibration(args.calibration, protocol=args.protocol) if args.calibration else None
        return MotionPlayer(
            emulator, load_motion(args.motion), calibration=calibration, loop=args.loop, where=args.motion
        )
    except (MotionError, CalibrationError) as exc:
        raise ConfigError(str(exc)) from None
