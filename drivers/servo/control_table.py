"""Register maps of the servos we drive (Feetech STS3215, Dynamixel X-series) and their value encodings.

The two families disagree on how negative numbers are stored: Feetech uses
sign-magnitude with the sign in a register-specific bit (bit 11 for the homing
offset, bit 15 for positions), Dynamixel uses plain two's complement. Keeping
that knowledge here, next to the addresses, means the bus, the emulator and the
calibration code can all say ``table.decode(table.present_position, data)`` and
never repeat a bit trick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Register:
    """One control-table entry: where it is, how wide, and whether it holds a signed value."""

    address: int
    length: int  # bytes
    signed: bool = False
    # Feetech only: the bit carrying the sign of a sign-magnitude value (None: the top bit).
    sign_bit: int | None = None


@dataclass(frozen=True)
class ControlTable:
    """The registers the stack uses on one servo family, plus value encode/decode for them."""

    protocol: str  # 'feetech' | 'dynamixel'
    model_number: Register
    id: Register
    baud_rate: Register
    homing_offset: Register
    min_position_limit: Register
    max_position_limit: Register
    torque_enable: Register
    goal_position: Register
    present_position: Register
    resolution: int = 4096  # ticks per revolution
    # Registers beyond the agreed minimum; None where the family has no such register.
    operating_mode: Register | None = None
    present_velocity: Register | None = None
    lock: Register | None = None  # Feetech: 1 = EEPROM writes are not kept over power cycles
    return_delay: Register | None = None  # reply delay in units of 2 us (both families)
    # Firmware version, read-only: Feetech keeps major and minor in two registers (LeRobot reads them
    # as "major.minor" and refuses a bus whose servos differ); Dynamixel has one Firmware_Version byte.
    firmware_major: Register | None = None
    firmware_minor: Register | None = None
    firmware_version: Register | None = None
    drive_mode: Register | None = None  # Dynamixel Drive_Mode: bit 0 set = reverse (the servo counts the other way)
    # What the servo's drive is doing, read with the position every cycle for the stall guard:
    # Feetech Present_Load (0.1 % of full drive, sign in bit 10); Dynamixel X Present_Current
    # (a current in model units, full scale = Current_Limit), which the XL430/XC430 models
    # (``load_models``) report as Present_Load in 0.1 % at the same address instead.
    present_load: Register | None = None
    present_current: Register | None = None
    current_limit: Register | None = None
    load_full_scale: int = 1000  # Present_Load value at 100 %
    load_models: frozenset[int] = frozenset()
    size: int = 256  # bytes of register space the emulator models
    eeprom_end: int = 0  # Dynamixel refuses writes below this address while torque is on
    default_model_number: int = 0
    default_baud_value: int = 0  # baud_rate register value meaning 1 Mbaud
    # What a servo of this family holds out of the box (the emulator's factory-fresh servo).
    factory_baudrate: int = 1_000_000
    factory_return_delay: int = 250  # 500 us
    factory_firmware: tuple[int, int] = (0, 0)  # (major, minor); Dynamixel: (version, 0)
    model_names: tuple[tuple[int, str], ...] = ()  # model number -> name, for `scan`

    def model_name(self, model_number: int) -> str:
        """The servo model called ``model_number`` (e.g. 'sts3215'), or 'unknown model N'."""
        return dict(self.model_names).get(model_number, f'unknown model {model_number}')

    def firmware(self, read: Callable[[Register], int]) -> str:
        """The firmware version as 'major.minor' (Feetech) or 'N' (Dynamixel), from ``read(register)``."""
        if self.firmware_major is not None and self.firmware_minor is not None:
            return f'{read(self.firmware_major)}.{read(self.firmware_minor)}'
        if self.firmware_version is not None:
            return str(read(self.firmware_version))
        return '?'

    def register(self, name: str) -> Register:
        """The register called ``name`` (a field name of this class); KeyError if there is none."""
        value = getattr(self, name, None) if name in _REGISTER_FIELDS else None
        if not isinstance(value, Register):
            raise KeyError(f'{self.protocol} control table has no register {name!r}; known: {self.register_names()}')
        return value

    def register_names(self) -> tuple[str, ...]:
        """Names of the registers this family has."""
        return tuple(n for n in _REGISTER_FIELDS if isinstance(getattr(self, n), Register))

    @property
    def effort(self) -> Register | None:
        """The register saying how hard the servo drives: present load (Feetech) or present current (Dynamixel)."""
        return self.present_load if self.present_load is not None else self.present_current

    def reports_load(self, model_number: int) -> bool:
        """True: ``effort`` is a load, ``load_full_scale`` at 100 %; False: a current, ``current_limit`` at 100 %."""
        return self.present_current is None or model_number in self.load_models

    def state_block(self) -> tuple[int, int]:
        """(address, length) of one read covering present position and, where the family has one, ``effort``."""
        regs = [self.present_position] + ([self.effort] if self.effort is not None else [])
        start = min(r.address for r in regs)
        return start, max(r.address + r.length for r in regs) - start

    def decode_at(self, reg: Register, block: bytes, block_address: int) -> int:
        """The value of ``reg`` inside ``block``, a read that started at ``block_address``."""
        offset = reg.address - block_address
        return self.decode(reg, block[offset : offset + reg.length])

    def encode(self, reg: Register, value: int) -> bytes:
        """``value`` as the register's little-endian bytes; ValueError if it does not fit."""
        value = int(value)
        bits = 8 * reg.length
        if not reg.signed:
            if not 0 <= value < (1 << bits):
                raise ValueError(f'{value} does not fit unsigned {reg.length}-byte register at {reg.address}')
            raw = value
        elif self.protocol == 'feetech':
            sign_bit = bits - 1 if reg.sign_bit is None else reg.sign_bit
            if abs(value) >= (1 << sign_bit):
                raise ValueError(
                    f'{value} does not fit register at {reg.address} (sign-magnitude, sign bit {sign_bit})'
                )
            raw = abs(value) | ((1 << sign_bit) if value < 0 else 0)
        else:
            if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
                raise ValueError(f'{value} does not fit signed {reg.length}-byte register at {reg.address}')
            raw = value & ((1 << bits) - 1)
        return raw.to_bytes(reg.length, 'little')

    def decode(self, reg: Register, data: bytes) -> int:
        """The value stored in ``data`` (exactly ``reg.length`` bytes, little endian)."""
        if len(data) != reg.length:
            raise ValueError(f'register at {reg.address} is {reg.length} bytes, got {len(data)}')
        raw = int.from_bytes(data, 'little')
        if not reg.signed:
            return raw
        bits = 8 * reg.length
        if self.protocol == 'feetech':
            sign_bit = bits - 1 if reg.sign_bit is None else reg.sign_bit
            magnitude = raw & ((1 << sign_bit) - 1)
            return -magnitude if raw & (1 << sign_bit) else magnitude
        return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


_REGISTER_FIELDS = tuple(f.name for f in fields(ControlTable) if 'Register' in str(f.type))

# Feetech STS3215 (SMS/STS memory map; EEPROM below 40, SRAM from 40).
FEETECH_STS = ControlTable(
    protocol='feetech',
    firmware_major=Register(0, 1),
    firmware_minor=Register(1, 1),
    model_number=Register(3, 2),
    id=Register(5, 1),
    baud_rate=Register(6, 1),
    return_delay=Register(7, 1),
    min_position_limit=Register(9, 2),
    max_position_limit=Register(11, 2),
    homing_offset=Register(31, 2, signed=True, sign_bit=11),
    operating_mode=Register(33, 1),
    torque_enable=Register(40, 1),
    goal_position=Register(42, 2, signed=True, sign_bit=15),
    lock=Register(55, 1),
    present_position=Register(56, 2, signed=True, sign_bit=15),
    present_velocity=Register(58, 2, signed=True, sign_bit=15),
    present_load=Register(60, 2, signed=True, sign_bit=10),
    size=128,
    default_model_number=777,  # STS3215
    default_baud_value=0,  # 0 = 1 Mbaud
    factory_baudrate=1_000_000,  # STS3215 out of the box: id 1, 1 Mbaud
    # 3.10: what LeRobot's SO-100/SO-101 set-up expects (STS3215 on 3.9 fail its handshake, lerobot#1010).
    factory_firmware=(3, 10),
    # Model numbers as LeRobot's feetech/tables.py MODEL_NUMBER_TABLE has them.
    model_names=((777, 'sts3215'), (2825, 'sts3250'), (11272, 'sm8512bl'), (1284, 'scs0009')),
)

# Dynamixel X-series, protocol 2.0 (XL430-W250, XL330-M288, XM430, ...).
DYNAMIXEL_X = ControlTable(
    protocol='dynamixel',
    model_number=Register(0, 2),
    firmware_version=Register(6, 1),
    id=Register(7, 1),
    baud_rate=Register(8, 1),
    return_delay=Register(9, 1),
    drive_mode=Register(10, 1),
    operating_mode=Register(11, 1),
    homing_offset=Register(20, 4, signed=True),
    current_limit=Register(38, 2),
    max_position_limit=Register(48, 4),
    min_position_limit=Register(52, 4),
    torque_enable=Register(64, 1),
    goal_position=Register(116, 4, signed=True),
    present_current=Register(126, 2, signed=True),
    present_velocity=Register(128, 4, signed=True),
    present_position=Register(132, 4, signed=True),
    size=256,
    eeprom_end=64,
    # Present_Load (0.1 %) at 126 instead of a current: XL430-W250, XC430-W150, XC430-W240, 2XL430-W250, 2XC430-W250.
    load_models=frozenset({1060, 1070, 1080, 1090, 1160}),
    default_model_number=1060,  # XL430-W250 (XL330-M288 is 1200)
    default_baud_value=3,  # 3 = 1 Mbaud
    factory_baudrate=57_600,  # X series out of the box: id 1, 57600 baud
    factory_firmware=(46, 0),
    # ROBOTIS model numbers (e-Manual; the ones LeRobot's dynamixel/tables.py knows, and their siblings).
    model_names=(
        (1020, 'xm430-w350'),
        (1030, 'xm430-w210'),
        (1060, 'xl430-w250'),
        (1070, 'xc430-w150'),
        (1080, 'xc430-w240'),
        (1090, '2xl430-w250'),
        (1110, 'xh540-w150'),
        (1120, 'xm540-w270'),
        (1160, '2xc430-w250'),
        (1190, 'xl330-m077'),
        (1200, 'xl330-m288'),
        (1210, 'xc330-t181'),
        (1220, 'xc330-t288'),
    ),
)

CONTROL_TABLES: dict[str, ControlTable] = {'feetech': FEETECH_STS, 'dynamixel': DYNAMIXEL_X}
