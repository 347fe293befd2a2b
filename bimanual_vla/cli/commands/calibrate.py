"""`bimanual-vla calibrate --rig FILE --arm NAME`: calibrate one arm, or import a LeRobot file.

Interactive on a real arm (over the serial bus, torque off):

1. Move the arm to the middle of its range -- the pose the URDF calls all zeros -- and press
   Enter. Each servo's homing offset is set so this pose reads mid-scale, and that reading
   becomes the joint's zero.
2. Move every joint through its whole range and press Enter; the extremes are recorded.
3. If the arm has a gripper: close it and press Enter; closed becomes 0 rad, opening positive.

Then each servo's own position-limit registers get the rig's joint limits in the new ticks,
so the servo itself keeps goals inside them (the driver checks them again on every connect).
The file is written atomically; nothing is written if any step fails or is interrupted.
``--import-lerobot FILE`` converts a LeRobot calibration (current or legacy format) instead.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bimanual_vla.config import ArmConfig, ConfigError, load_rig

if TYPE_CHECKING:
    from bimanual_vla.drivers.servo.bus import ServoBus

MIN_RANGE_TICKS = 20  # a joint whose extremes differ by less was not moved
# Calibration is interactive, not real time: each reply may take this long past its wire time, and each
# transaction is tried this many times more, so a USB adapter with a 16 ms latency timer or a busy host
# (the twin's servos answer from a simulator process) does not abort it. The driver keeps the bus's tight
# control-rate defaults.
REPLY_MARGIN_S = 0.1
RETRIES = 4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        'calibrate',
        help="calibrate one arm's joints (interactive, on the real arm) or import a LeRobot calibration",
        description='Guide through calibrating one arm over its servo bus (torque is turned off), or with '
        "--import-lerobot convert a LeRobot calibration file. Writes the arm's calibration JSON "
        "(the rig's `calibration:` path unless --output is given).",
    )
    p.add_argument('--rig', required=True, metavar='FILE', help='rig YAML path or shipped rig name')
    p.add_argument('--arm', required=True, metavar='NAME', help='which arm of the rig')
    p.add_argument('--import-lerobot', metavar='FILE', help='convert this LeRobot calibration JSON; no bus access')
    p.add_argument('--output', metavar='FILE', help="where to write (default: the arm's calibration path in the rig)")
    p.add_argument('--port', help="serial port (default: the arm's port in the rig)")
    p.add_argument(
        '--reverse',
        default='',
        metavar='JOINTS',
        help='comma-separated joints whose angle grows as the servo ticks decrease (to match the URDF)',
    )
    p.add_argument('--force', action='store_true', help='overwrite an existing calibration file')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rig = load_rig(args.rig)
    arm = rig.arm(args.arm)
    output = args.output or arm.calibration
    if not output:
        raise ConfigError(f'arm {arm.name!r} has no `calibration:` path in the rig; give --output FILE')
    out_path = Path(output).expanduser()
    if out_path.exists() and not args.force:
        print(f'error: {out_path} exists; pass --force to overwrite it', file=sys.stderr)
        return 1
    reverse = {r.strip() for r in args.reverse.split(',') if r.strip()}
    unknown = reverse - set(arm.joint_names)
    if unknown:
        raise ConfigError(f'--reverse: unknown joint(s) {sorted(unknown)}; arm {arm.name!r} has {arm.joint_names}')

    from bimanual_vla.drivers.servo.calibration import CalibrationError, load_calibration

    try:
        if args.import_lerobot:
            calibration = load_calibration(args.import_lerobot, arm=arm)
            if reverse:
                print('note: --reverse is ignored with --import-lerobot (drive_mode in the file decides)')
        else:
            if arm.protocol == 'sim':
                raise ConfigError(f'arm {arm.name!r} is simulated; there is nothing to calibrate')
            calibration = interactive(arm, args.port or arm.port, reverse, sys.stdin, sys.stdout)
            if calibration is None:
                return 1
        warnings = calibration.check_against(arm)
    except CalibrationError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    path = calibration.save(out_path)
    print(summary(arm, calibration))
    for warning in warnings:
        print(f'warning: {warning}')
    print(f'wrote {path}')
    return 0


def summary(arm: ArmConfig, calibration) -> str:
    lines = [f'calibration of arm {arm.name} ({calibration.source}):']
    for j in arm.joints:
        c = calibration.joints[j.name]
        low, high = calibration.range_radians(j.name)
        lines.append(
            f'  {j.name:<14s} id {c.id:3d}  offset {c.homing_offset:+6d}  ticks [{c.range_min}, {c.range_max}]  '
            f'zero {c.zero_ticks:g}  dir {c.direction:+d}  -> [{low:+.3f}, {high:+.3f}] rad'
        )
    return '\n'.join(lines)


# ---------------------------------------------------------------------------- interactive


class _RangeRecorder:
    """Samples present positions in the background while the user moves the joints."""

    def __init__(self, bus, ids: list[int], names: dict[int, str], out: TextIO, period_s: float = 0.02) -> None:
        self.bus, self.ids, self.names, self.out, self.period_s = bus, ids, names, out, period_s
        self.low: dict[int, int] = {}
        self.high: dict[int, int] = {}
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='calibrate_ranges', daemon=True)
        self._live = out.isatty()

    def __enter__(self) -> _RangeRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        if self._live:
            self.out.write('\n')

    def _run(self) -> None:
        ct = self.bus.control_table
        reg = ct.present_position
        last_draw = 0.0
        while not self._stop.is_set():
            try:
                replies = self.bus.sync_read(self.ids, reg.address, reg.length)
            except Exception as exc:  # reported by the main thread
                self.error = exc
                return
            changed = []
            for sid, data in replies.items():
                if data is None:
                    continue
                ticks = ct.decode(reg, data)
                if ticks < self.low.get(sid, ticks + 1):
                    self.low[sid] = ticks
                    changed.append(sid)
                if ticks > self.high.get(sid, ticks - 1):
                    self.high[sid] = ticks
                    changed.append(sid)
            now = time.monotonic()
            if self._live and now - last_draw > 0.1:
                last_draw = now
                cells = [f'{self.names[s]} {self.low.get(s, "?")}..{self.high.get(s, "?")}' for s in self.ids]
                self.out.write('\r  ' + ' | '.join(cells))
                self.out.flush()
            elif not self._live:
                for sid in dict.fromkeys(changed):
                    self.out.write(f'  range {self.names[sid]}: min {self.low[sid]} max {self.high[sid]}\n')
                self.out.flush()
            self._stop.wait(self.period_s)


def _prompt(message: str, stdin: TextIO, out: TextIO) -> str:
    out.write(message)
    out.flush()
    line = stdin.readline()
    if not line:
        raise EOFError('input closed')
    return line.strip()


def _read_ticks(bus, ids: list[int]) -> dict[int, int]:
    ct = bus.control_table
    reg = ct.present_position
    replies = bus.sync_read(ids, reg.address, reg.length)
    missing = [sid for sid in ids if replies.get(sid) is None]
    if missing:
        from bimanual_vla.drivers.servo.bus import BusError

        raise BusError(f'servo(s) {missing} did not answer the position read')
    return {sid: ct.decode(reg, replies[sid]) for sid in ids}


def interactive(arm: ArmConfig, port: str, reverse: set[str], stdin: TextIO, out: TextIO):
    """Run the guided calibration; returns the ArmCalibration, or None after a reported failure."""
    from bimanual_vla.drivers.servo.bus import BusError, ServoBus
    from bimanual_vla.drivers.servo.calibration import ArmCalibration, JointCalibration, now_iso

    ids = [j.id for j in arm.joints]
    names = {j.id: j.name for j in arm.joints}
    try:
        with ServoBus(port, arm.protocol, arm.baudrate, retries=RETRIES, timeout_margin_s=REPLY_MARGIN_S) as bus:
            ct = bus.control_table
            missing = []
            for sid in ids:
                try:
                    bus.ping(sid)
                except BusError:
                    missing.append(sid)
            if missing:
                print(f'error: servo(s) {missing} do not answer on {port}; calibration needs every joint', file=out)
                return None
            for sid in ids:
                bus.write(sid, ct.torque_enable.address, ct.encode(ct.torque_enable, 0))
            out.write(f'Arm {arm.name} on {port}: {len(ids)} servos found, torque is OFF (support the arm).\n')

            offsets, zero = _step_zero_pose(bus, ids, names, stdin, out)
            low, high = _step_ranges(bus, ids, names, zero, stdin, out)
            zero_ticks = {s: float(zero[s]) for s in ids}
            direction = {s: (-1 if names[s] in reverse else 1) for s in ids}
            _step_gripper(bus, arm, low, high, zero_ticks, direction, stdin, out)

            joints = {
                names[s]: JointCalibration(
                    id=s,
                    homing_offset=offsets[s],
                    range_min=low[s],
                    range_max=high[s],
                    direction=direction[s],
                    zero_ticks=zero_ticks[s],
                )
                for s in ids
            }
            calibration = ArmCalibration(
                arm=arm.name,
                protocol=arm.protocol,
                resolution=ct.resolution,
                source='calibrate',
                created=now_iso(),
                joints=joints,
            )
            write_position_limits(bus, arm, calibration, out)
    except EOFError:
        print('error: input ended before calibration finished; nothing written', file=out)
        return None
    except (BusError, OSError) as exc:
        print(f'error: bus failure during calibration ({exc}); nothing written', file=out)
        return None
    return calibration


def _step_zero_pose(
    bus: ServoBus, ids: list[int], names: dict[int, str], stdin: TextIO, out: TextIO
) -> tuple[dict[int, int], dict[int, int]]:
    """Step 1: homing offsets that put the arm's middle pose at mid-scale; returns (offsets, zero pose ticks)."""
    from bimanual_vla.drivers.servo.arm_controller import write_eeprom

    ct = bus.control_table
    half = (ct.resolution - 1) // 2
    _prompt(
        'Step 1/3: move the arm to the MIDDLE of its range (the pose the URDF calls all zeros) and press Enter... ',
        stdin,
        out,
    )
    for sid in ids:  # read the raw angle without any offset, then centre it
        write_eeprom(bus, sid, 'homing_offset', 0)
        if ct.drive_mode is not None:  # Dynamixel: count forward (direction is --reverse's job; the file says 0)
            mode = ct.decode(ct.drive_mode, bus.read(sid, ct.drive_mode.address, ct.drive_mode.length))
            if mode & 1:
                write_eeprom(bus, sid, 'drive_mode', mode & ~1)
    raw = _read_ticks(bus, ids)
    offsets = {}
    for sid in ids:
        if ct.protocol == 'feetech':  # STS: present = actual - offset; 11-bit magnitude
            offsets[sid] = max(-2047, min(2047, raw[sid] - half))
        else:  # Dynamixel: present = actual + offset
            offsets[sid] = half - raw[sid]
        write_eeprom(bus, sid, 'homing_offset', offsets[sid])
    zero = _read_ticks(bus, ids)
    out.write('  zero pose recorded: ' + ', '.join(f'{names[s]} {zero[s]}' for s in ids) + '\n')
    return offsets, zero


def _step_ranges(
    bus: ServoBus, ids: list[int], names: dict[int, str], zero: dict[int, int], stdin: TextIO, out: TextIO
) -> tuple[dict[int, int], dict[int, int]]:
    """Step 2: each joint's range as the user moves it (including the zero pose); returns (low, high) ticks."""
    out.write('Step 2/3: move EVERY joint slowly through its whole range (end stop to end stop), then press Enter.\n')
    with _RangeRecorder(bus, ids, names, out) as recorder:
        while True:
            answer = _prompt('  press Enter when done... ', stdin, out)
            if recorder.error is not None:
                raise recorder.error
            still = [names[s] for s in ids if recorder.high.get(s, 0) - recorder.low.get(s, 0) < MIN_RANGE_TICKS]
            if not still or answer.lower() == 'accept':
                break
            out.write(f'  joint(s) {still} barely moved; move them too (or type "accept" and Enter).\n')
    low = {s: min(recorder.low.get(s, zero[s]), zero[s]) for s in ids}
    high = {s: max(recorder.high.get(s, zero[s]), zero[s]) for s in ids}
    for s in ids:
        if high[s] - low[s] < MIN_RANGE_TICKS:
            high[s] = low[s] + MIN_RANGE_TICKS  # accepted unmoved joint: keep the file valid
    return low, high


def _step_gripper(
    bus: ServoBus,
    arm: ArmConfig,
    low: dict[int, int],
    high: dict[int, int],
    zero_ticks: dict[int, float],
    direction: dict[int, int],
    stdin: TextIO,
    out: TextIO,
) -> None:
    """Step 3: the gripper's zero is fully closed and opening is positive; updates the dicts in place."""
    if not arm.gripper:
        out.write('Step 3/3: no gripper on this arm.\n')
        return
    gid = next(j.id for j in arm.joints if j.name == arm.gripper)
    _prompt(f'Step 3/3: CLOSE the gripper ({arm.gripper}) fully and press Enter... ', stdin, out)
    closed = _read_ticks(bus, [gid])[gid]
    low[gid], high[gid] = min(low[gid], closed), max(high[gid], closed)
    zero_ticks[gid] = float(closed)
    # Opening is positive: away from the closed end of the range.
    direction[gid] = 1 if closed - low[gid] <= high[gid] - closed else -1


def write_position_limits(bus, arm: ArmConfig, calibration, out: TextIO) -> None:
    """Put the joint limits, in this calibration's ticks, into each servo's own Min/Max_Position_Limit.

    The servo then refuses (Dynamixel) or cuts short (Feetech) any goal outside them, whatever the
    host sends. EEPROM: torque is already off (Dynamixel refuses the write otherwise), and
    ``write_eeprom`` unlocks the Feetech EEPROM around it.
    """
    from bimanual_vla.drivers.servo.arm_controller import write_eeprom

    for j in arm.joints:
        low, high = calibration.position_limit_ticks(j.name, j.lower, j.upper)
        write_eeprom(bus, j.id, 'min_position_limit', 0)  # whatever the old limits, never min > max in between
        write_eeprom(bus, j.id, 'max_position_limit', high)
        write_eeprom(bus, j.id, 'min_position_limit', low)
        out.write(f'  {j.name}: servo position limits [{low}, {high}] ticks ({j.lower:+.3f}..{j.upper:+.3f} rad)\n')
