"""A servo bus on a pseudo-terminal: Feetech STS or Dynamixel 2.0 servos answering at the byte level.

Drivers and the manufacturers' SDKs open the pty's slave path exactly as they
would open /dev/ttyACM0, so everything above the serial port runs unmodified
against it. Each emulated servo keeps a register file and moves its present
position toward its goal at a limited speed while torque is on (computed lazily
from elapsed time, so no ticking thread is needed) and reports the load its drive
puts out. Faults can be switched on at run time: missing servos, slow replies,
corrupted bytes, replies that arrive one transaction late, line noise, and
obstacles that block a joint.

Position limits are honoured as the manufacturers document their firmware (not checked
on hardware here): a Feetech STS bounds the goal by Min/Max_Position_Limit (the servo runs
to the nearer limit; both limits 0 is the multi-turn setting, no limit); a Dynamixel X in
position control accepts Goal Position only within its limits and answers a goal outside
them with Data Limit Error (protocol 2.0 status error 6), keeping its previous goal
(through a sync write, which has no reply, the goal is silently dropped).

Discovery works as on a real bus. A servo hears only instructions sent at the baud rate its
Baud_Rate register selects (the emulator reads the line speed the host set on the pty), so a
scan over the baud table finds it at its rate only. A PING to the broadcast id 0xFE is answered
by every servo, one status each, in id order, each after its Return_Delay_Time (2 us units):
Dynamixel 2.0 puts model number and firmware version in it, Feetech STS an empty status, as
LeRobot's ``broadcast_ping`` (and so ``scan_port`` and motor set-up) expect. The firmware
registers hold a realistic version (STS3215 3.10, Dynamixel X 46) and are read-only.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import math
import os
import random
import select
import struct
import threading
import time
import tty
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bimanual_vla.drivers.servo.control_table import CONTROL_TABLES, ControlTable, Register
from bimanual_vla.drivers.servo.dynamixel_protocol import DYNAMIXEL
from bimanual_vla.drivers.servo.protocol_common import BROADCAST_ID, Instruction, InstructionPacket, PacketError
from bimanual_vla.drivers.servo.protocols import protocol_for
from bimanual_vla.servo_baud_rates import BAUD_RATES, baud_register_value

DXL_ERR_INSTRUCTION = 2
DXL_ERR_DATA_LENGTH = 5
DXL_ERR_DATA_LIMIT = 6
DXL_ERR_ACCESS = 7
RETURN_DELAY_UNIT_S = 2e-6  # Return_Delay_Time counts 2 us steps on both families

# Linux termios2: the line speed a host set, standard or not (pyserial sets 1 Mbaud, 250 kbaud... this way).
_TCGETS2 = 0x802C542A
_TERMIOS2_SPEED_OFFSET = 4 * 4 + 1 + 19  # c_iflag, c_oflag, c_cflag, c_lflag, c_line, c_cc[19]

# Load model: a servo pushing against an obstacle drives in proportion to its remaining goal
# error, at full scale from LOAD_SATURATION_TICKS on; one moving freely drives FREE_LOAD_FRACTION.
LOAD_SATURATION_TICKS = 100
FREE_LOAD_FRACTION = 0.03
DEFAULT_CURRENT_LIMIT = 1750  # Dynamixel Current_Limit of an XL330-M288 (mA): full scale of Present_Current


@dataclass
class FaultConfig:
    """Faults the emulator injects; mutable while it runs."""

    missing_ids: set[int] = field(default_factory=set)  # servos that never answer (and ignore writes)
    reply_delay_s: float = 0.0  # wait before every reply
    corrupt_rate: float = 0.0  # probability a reply has one bit flipped (it frames, but fails its check)
    late_reply_rate: float = 0.0  # probability a reply is withheld and sent before the next instruction's replies
    noise_rate: float = 0.0  # probability of 1..8 random bytes before a reply
    seed: int = 0
    alarm_bits: dict[int, int] = field(default_factory=dict)  # servo id -> error bits it reports in every reply
    # servo id -> present-position tick the joint cannot move past, from whichever side it is on
    # (a hard stop, or an object in the gripper); pushing into it raises the present load.
    obstacles: dict[int, int] = field(default_factory=dict)


class EmulatedServo:
    """One servo's register file and motion. Thread-safe through its emulator's lock."""

    def __init__(
        self,
        table: ControlTable,
        servo_id: int,
        model_number: int,
        max_speed_ticks_per_s: float,
        lock: threading.RLock,
        owner: ServoBusEmulator,
        baud_value: int | None = None,
        return_delay: int = 0,
    ) -> None:
        self.table = table
        self.max_speed = float(max_speed_ticks_per_s)
        self._lock = lock
        self._owner = owner
        self._regs = bytearray(table.size)
        self._put('model_number', model_number)
        self._put('id', servo_id)
        self._put('baud_rate', table.default_baud_value if baud_value is None else baud_value)
        if table.return_delay is not None:
            self._put('return_delay', return_delay)
        major, minor = table.factory_firmware
        if table.firmware_major is not None and table.firmware_minor is not None:
            self._put('firmware_major', major)
            self._put('firmware_minor', minor)
        if table.firmware_version is not None:
            self._put('firmware_version', major)
        self._put('min_position_limit', 0)
        self._put('max_position_limit', table.resolution - 1)
        if table.current_limit is not None:
            self._put('current_limit', DEFAULT_CURRENT_LIMIT)
        center = table.resolution // 2
        self._put('goal_position', center)
        self._position = float(center)
        self._obstacle_side = 0  # -1: below its obstacle, +1: above, 0: not known yet
        self._last_update = time.monotonic()
        self._put('present_position', center)

    # ------------------------------------------------------------- raw access
    def _put(self, name: str, value: int) -> None:
        reg = self.table.register(name)
        self._regs[reg.address : reg.address + reg.length] = self.table.encode(reg, value)

    def _get(self, name: str) -> int:
        reg = self.table.register(name)
        return self.table.decode(reg, bytes(self._regs[reg.address : reg.address + reg.length]))

    def _advance(self) -> None:
        """Move present position toward the goal for the time elapsed since the last look."""
        now = time.monotonic()
        dt = now - self._last_update
        self._last_update = now
        if self._owner.external_motion or not self._regs[self.table.torque_enable.address]:
            self._store_load(0.0)  # limp, or moved by a simulator that models the forces itself
            return
        goal = self._get('goal_position')
        step = self.max_speed * dt
        delta = goal - self._position
        position = float(goal) if abs(delta) <= step else self._position + (step if delta > 0 else -step)
        obstacle = self._owner.faults.obstacles.get(self._get('id'))
        side = 0
        if obstacle is not None:
            if self._position != obstacle:
                self._obstacle_side = 1 if self._position > obstacle else -1
            side = self._obstacle_side
            position = max(position, obstacle) if side > 0 else min(position, obstacle) if side < 0 else position
        self._position = position
        self._store_position()
        error = goal - self._position
        if error == 0:
            self._store_load(0.0)
        elif obstacle is not None and self._position == obstacle and error * side < 0:  # pushing into it
            self._store_load(math.copysign(min(1.0, abs(error) / LOAD_SATURATION_TICKS), error))
        else:
            self._store_load(math.copysign(FREE_LOAD_FRACTION, error))

    def _store_load(self, fraction: float) -> None:
        """Present load (Feetech, and Dynamixel load models) or current as ``fraction`` of full scale, signed."""
        table = self.table
        reg = table.effort
        if reg is None:
            return
        if table.reports_load(self._get('model_number')):
            value = round(fraction * table.load_full_scale)
        else:
            value = round(fraction * self._get('current_limit'))
        self._regs[reg.address : reg.address + reg.length] = table.encode(reg, value)

    def _store_position(self) -> None:
        reg = self.table.present_position
        limit = 1 << (8 * reg.length - 1) if self.table.protocol == 'dynamixel' else (1 << 15)
        ticks = max(-limit + 1, min(limit - 1, round(self._position)))
        self._regs[reg.address : reg.address + reg.length] = self.table.encode(reg, ticks)

    def read_bytes(self, address: int, length: int) -> bytes:
        with self._lock:
            self._advance()
            data = bytes(self._regs[address : address + length])
            return data + bytes(length - len(data))

    def write_bytes(self, address: int, data: bytes) -> int:
        """Apply a WRITE as the servo would; returns the protocol error code (0 = accepted)."""
        table = self.table
        with self._lock:
            self._advance()
            if address + len(data) > table.size:
                return DXL_ERR_ACCESS if table.protocol == 'dynamixel' else 0
            identity = [r for r in (table.model_number, table.firmware_version) if r is not None]
            if table.protocol == 'dynamixel' and any(_overlaps(r, address, address + len(data)) for r in identity):
                return DXL_ERR_ACCESS  # read-only registers: the X series refuses the write whole
            torque_on = self._regs[table.torque_enable.address]
            if table.eeprom_end and torque_on and address < table.eeprom_end:
                return DXL_ERR_ACCESS
            end = address + len(data)
            touches_offset = _overlaps(table.homing_offset, address, end)
            touches_id = _overlaps(table.id, address, end)
            old_offset = self._get('homing_offset') if touches_offset else 0
            old_id = self._get('id') if touches_id else 0
            before = bytes(self._regs[address:end])
            read_only = [r for r in self._read_only() if r is not None]
            if any(_overlaps(r, address, end) for r in read_only):
                for i, b in enumerate(data):
                    a = address + i
                    if not any(r.address <= a < r.address + r.length for r in read_only):  # measurements
                        self._regs[a] = b
            else:
                self._regs[address:end] = data
            if _overlaps(table.goal_position, address, end):
                goal = self._get('goal_position')
                lo, hi = self._get('min_position_limit'), self._get('max_position_limit')
                if table.protocol == 'dynamixel' and not lo <= goal <= hi:
                    self._regs[address:end] = before  # refused whole: nothing of the write is applied
                    return DXL_ERR_DATA_LIMIT
                if table.protocol == 'feetech' and (lo, hi) != (0, 0) and lo <= hi:
                    goal = max(lo, min(hi, goal))
                    self._put('goal_position', goal)
                if self._owner.on_goal is not None:
                    self._owner.on_goal(self._get('id'), goal)
            new_offset = self._get('homing_offset') if touches_offset else 0
            if new_offset != old_offset:
                # Present position is reported relative to the homing offset: Dynamixel adds it, Feetech subtracts.
                shift = new_offset - old_offset
                self._position += shift if table.protocol == 'dynamixel' else -shift
                self._store_position()
            new_id = self._get('id') if touches_id else 0
            if new_id != old_id:
                self._owner._rekey(old_id, new_id)
            return 0

    def _read_only(self) -> tuple[Register | None, ...]:
        """Registers a write leaves alone: measurements, model number and firmware version."""
        t = self.table
        return (t.present_position, t.effort, t.model_number, t.firmware_major, t.firmware_minor, t.firmware_version)

    @property
    def baudrate(self) -> int:
        """The line speed this servo listens at, from its Baud_Rate register."""
        return BAUD_RATES[self.table.protocol].get(self._get('baud_rate'), 0)

    @property
    def return_delay_s(self) -> float:
        return self._get('return_delay') * RETURN_DELAY_UNIT_S if self.table.return_delay is not None else 0.0

    # ------------------------------------------------------------ for tests
    def read_register(self, name: str) -> int:
        reg = self.table.register(name)
        return self.table.decode(reg, self.read_bytes(reg.address, reg.length))

    def write_register(self, name: str, value: int) -> None:
        reg = self.table.register(name)
        if reg == self.table.present_position:
            self.set_present_position(value)
            return
        error = self.write_bytes(reg.address, self.table.encode(reg, value))
        if error:
            raise ValueError(f'servo refused write of {name}={value}: {DYNAMIXEL.describe_error(error)}')

    def set_present_position(self, ticks: int) -> None:
        with self._lock:
            self._advance()
            self._position = float(ticks)
            self._store_position()

    @property
    def present_position(self) -> int:
        return self.read_register('present_position')

    @property
    def goal_position(self) -> int:
        return self.read_register('goal_position')

    @property
    def torque_enabled(self) -> bool:
        return bool(self.read_register('torque_enable'))


def _overlaps(reg: Register, start: int, end: int) -> bool:
    return start < reg.address + reg.length and end > reg.address


class ServoBusEmulator:
    """Servos of one protocol behind a pty; ``start()`` returns the path a driver opens."""

    def __init__(
        self,
        protocol: str,
        ids: Iterable[int],
        *,
        faults: FaultConfig | None = None,
        max_speed_ticks_per_s: float = 3000.0,
        model_number: int | None = None,
        baudrate: int | None = None,
        return_delay: int = 0,
    ) -> None:
        """``baudrate``: the rate the servos' Baud_Rate registers select (default 1 Mbaud; a factory-fresh
        Dynamixel X is at 57600, ``table.factory_baudrate``). ``return_delay``: their Return_Delay_Time
        (2 us units; 0 as LeRobot configures them, 250 out of the box).
        """
        self.protocol = protocol_for(protocol)
        self.table = CONTROL_TABLES[protocol]
        self.faults = faults if faults is not None else FaultConfig()
        self.on_goal: Callable[[int, int], None] | None = None
        self.external_motion = False
        self.port = ''
        self.instructions_received = 0
        self._lock = threading.RLock()
        model = self.table.default_model_number if model_number is None else model_number
        baud_value = None if baudrate is None else baud_register_value(self.table.protocol, baudrate)
        self._servos: dict[int, EmulatedServo] = {}
        for servo_id in ids:
            if not 0 <= servo_id <= self.protocol.max_id:
                raise ValueError(f'servo id {servo_id} out of range 0..{self.protocol.max_id}')
            self._servos[servo_id] = EmulatedServo(
                self.table, servo_id, model, max_speed_ticks_per_s, self._lock, self, baud_value, return_delay
            )
        self._line_baud: int | None = None  # what the host set on the pty; None: unknown, every servo hears
        self._rng = random.Random(self.faults.seed)
        self._seed = self.faults.seed
        self._late: list[bytes] = []
        self._master = self._slave = -1
        self._wake_r = self._wake_w = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> str:
        if self._thread is not None:
            return self.port
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF translation: a serial line carries raw bytes
        tty.setraw(self._master)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f'servo-emulator-{self.port}', daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        os.write(self._wake_w, b'x')
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = self._wake_r = self._wake_w = -1

    def __enter__(self) -> ServoBusEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- access
    def servo(self, servo_id: int) -> EmulatedServo:
        with self._lock:
            try:
                return self._servos[servo_id]
            except KeyError:
                raise KeyError(f'no emulated servo with id {servo_id}; ids: {sorted(self._servos)}') from None

    @property
    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._servos)

    def set_present_position(self, servo_id: int, ticks: int) -> None:
        self.servo(servo_id).set_present_position(ticks)

    def _rekey(self, old_id: int, new_id: int) -> None:
        with self._lock:
            servo = self._servos.pop(old_id)
            self._servos[new_id] = servo

    # --------------------------------------------------------------- serving
    def _serve(self) -> None:
        parser = self.protocol.parser('instruction')
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                return
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError:
                # EIO: no process has the slave open right now (we keep one open, so this is transient)
                if self._stop.wait(0.01):
                    return
                continue
            self._line_baud = self._read_line_baud()
            for packet in parser.feed(data):
                if isinstance(packet, InstructionPacket):
                    self.instructions_received += 1
                    if packet.instruction == Instruction.PING and packet.servo_id == BROADCAST_ID:
                        self._broadcast_ping()
                        continue
                    replies = self._handle(packet)
                    if replies:
                        self._send(replies)

    def _read_line_baud(self) -> int | None:
        """The baud rate the host set on the pty (Linux TCGETS2); None where it cannot be read."""
        buf = array.array('B', bytes(64))
        try:
            fcntl.ioctl(self._slave, _TCGETS2, buf)
        except OSError:
            return None
        return struct.unpack_from('I', buf.tobytes(), _TERMIOS2_SPEED_OFFSET)[0] or None

    def _hears(self, servo_id: int) -> bool:
        """Whether servo ``servo_id`` exists, is not faulted missing, and listens at the line's baud rate."""
        servo = self._servos.get(servo_id)
        if servo is None or servo_id in self.faults.missing_ids:
            return False
        return self._line_baud is None or servo.baudrate == self._line_baud

    def _broadcast_ping(self) -> None:
        """Every servo answers, in id order, each after its own return delay (so replies never collide)."""
        with self._lock:
            replies = []
            for i in sorted(self._servos):
                if self._hears(i):
                    servo = self._servos[i]
                    params = self.protocol.ping_reply_params(servo._get('model_number'), self._firmware(servo))
                    replies.append((servo.return_delay_s, self._status(i, 0, params)))
        for delay, reply in replies:
            if delay > 0 and self._stop.wait(delay):
                return
            self._send([reply])

    def _firmware(self, servo: EmulatedServo) -> int:
        reg = self.table.firmware_version
        return servo._get('firmware_version') if reg is not None else 0

    def _handle(self, packet: InstructionPacket) -> list[bytes]:
        """Carry out one instruction; the status packets it produces, in bus order."""
        proto = self.protocol
        code, params, target = packet.instruction, packet.params, packet.servo_id
        try:
            with self._lock:
                if code == Instruction.SYNC_READ and target == BROADCAST_ID:
                    address, length, ids = proto.split_sync_read(params)
                    return [
                        self._status(i, 0, self._servos[i].read_bytes(address, length)) for i in ids if self._hears(i)
                    ]
                if code == Instruction.SYNC_WRITE and target == BROADCAST_ID:
                    address, items = proto.split_sync_write(params)
                    for i, data in items.items():
                        if self._hears(i):
                            self._servos[i].write_bytes(address, data)
                    return []
                if not self._hears(target):
                    return []
                servo = self._servos[target]
                if code == Instruction.PING:
                    model = servo._get('model_number')
                    return [self._status(target, 0, proto.ping_reply_params(model, self._firmware(servo)))]
                if code == Instruction.READ:
                    address, length = proto.split_read(params)
                    if self.table.protocol == 'dynamixel' and address + length > self.table.size:
                        return [self._status(target, DXL_ERR_ACCESS)]
                    return [self._status(target, 0, servo.read_bytes(address, length))]
                if code == Instruction.WRITE:
                    address, data = proto.split_write(params)
                    return [self._status(target, servo.write_bytes(address, data))]
                if self.table.protocol == 'dynamixel':
                    return [self._status(target, DXL_ERR_INSTRUCTION)]
                return []
        except PacketError:
            if self.table.protocol == 'dynamixel' and target in self._servos:
                return [self._status(target, DXL_ERR_DATA_LENGTH)]
            return []

    def _status(self, servo_id: int, error: int, params: bytes = b'') -> bytes:
        return self.protocol.status(servo_id, error | self.faults.alarm_bits.get(servo_id, 0), params)

    def _send(self, replies: list[bytes]) -> None:
        faults = self.faults
        if faults.seed != self._seed:
            self._rng = random.Random(faults.seed)
            self._seed = faults.seed
        rng = self._rng
        out = bytearray()
        for late in self._late:
            out += late
        self._late = []
        for reply in replies:
            if faults.noise_rate and rng.random() < faults.noise_rate:
                out += rng.randbytes(rng.randint(1, 8))
            if faults.corrupt_rate and rng.random() < faults.corrupt_rate:
                reply = self._corrupt(reply, rng)
            if faults.late_reply_rate and rng.random() < faults.late_reply_rate:
                self._late.append(reply)
                continue
            out += reply
        if faults.reply_delay_s > 0 and self._stop.wait(faults.reply_delay_s):
            return
        if out:
            try:
                os.write(self._master, out)
            except OSError:
                pass  # nobody is reading and the pty buffer is full: on a real bus these bytes would be lost too

    def _corrupt(self, reply: bytes, rng: random.Random) -> bytes:
        """Flip one bit after the error byte, so the frame still parses but fails its checksum/CRC."""
        first = 5 if self.table.protocol == 'feetech' else 9
        damaged = bytearray(reply)
        index = rng.randrange(first, len(damaged))
        damaged[index] ^= 1 << rng.randrange(8)
        return bytes(damaged)
