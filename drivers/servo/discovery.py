"""Finding servos on a new bus and giving one its id and baud rate: what `scan` and `setup-servo` run.

A new bus is unknown: servos may sit at any rate of their family's baud table, at any id, and
factory-fresh ones all share id 1. ``scan_bus`` tries every rate with a broadcast PING (servos
answer one by one in id order) and reports id, model and firmware of each servo found.
``setup_servo`` does what LeRobot's ``MotorsBus.setup_motor`` does for one servo alone on the bus:
torque off, new id, new baud rate, then a PING at the new id and rate to prove it took. The
EEPROM is written as each family needs: torque off first (a Dynamixel refuses EEPROM writes with
torque on), and on Feetech the Lock register (55) opened before and closed after, or the values
would not survive a power cycle.

No ROS, no printing: the CLI commands are thin over this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bimanual_vla.drivers.servo.bus import BusError, ServoBus
from bimanual_vla.drivers.servo.control_table import CONTROL_TABLES, Register
from bimanual_vla.drivers.servo.protocols import protocol_for
from bimanual_vla.servo_baud_rates import BAUD_RATES, baud_register_value


class SetupError(Exception):
    """The bus is not in a state ``setup_servo`` can work with (no servo, several servos, no confirmation)."""


@dataclass(frozen=True)
class FoundServo:
    """One servo that answered a broadcast PING."""

    protocol: str
    baudrate: int
    id: int
    model_number: int
    firmware: str

    @property
    def model(self) -> str:
        return CONTROL_TABLES[self.protocol].model_name(self.model_number)

    def describe(self) -> str:
        return f'id {self.id:3d}  {self.model} (model {self.model_number})  firmware {self.firmware}'


@dataclass(frozen=True)
class ScanResult:
    """What one scan found, and the rates where replies were garbled (servos sharing an id)."""

    servos: list[FoundServo]
    garbled: dict[tuple[str, int], int]  # (protocol, baud rate) -> garbled replies there
    tried: list[tuple[str, int]]


def baud_rates(protocol: str) -> list[int]:
    """The family's baud table, fastest first (1 Mbaud, the usual setting, early)."""
    return sorted(BAUD_RATES[protocol].values(), reverse=True)


def scan_bus(
    port: str,
    protocols: Iterable[str],
    baudrates: Iterable[int] | None = None,
    *,
    window_s: float | None = None,
    bus_factory: Callable[[str, str, int], ServoBus] = ServoBus,
    progress: Callable[[str, int], None] | None = None,
) -> ScanResult:
    """Broadcast-PING ``port`` at each rate of each protocol's table (or only ``baudrates``).

    ``progress(protocol, rate)`` is called before each rate is tried (about a second each).
    Raises PortError (a BusError) if the port cannot be opened.
    """
    servos: list[FoundServo] = []
    garbled: dict[tuple[str, int], int] = {}
    tried: list[tuple[str, int]] = []
    rates = None if baudrates is None else list(baudrates)
    for protocol in protocols:
        for rate in baud_rates(protocol) if rates is None else rates:
            tried.append((protocol, rate))
            if progress is not None:
                progress(protocol, rate)
            with bus_factory(port, protocol, rate) as bus:
                models = bus.broadcast_ping(window_s)
                if bus.broadcast_garbled:
                    garbled[(protocol, rate)] = bus.broadcast_garbled
                for sid, model in models.items():
                    servos.append(FoundServo(protocol, rate, sid, model, read_firmware(bus, sid)))
    return ScanResult(servos, garbled, tried)


def read_firmware(bus: ServoBus, servo_id: int) -> str:
    """The servo's firmware version ('3.10' on an STS3215, '46' on a Dynamixel X); '?' if unreadable."""
    table = bus.control_table

    def read(reg: Register) -> int:
        return table.decode(reg, bus.read(servo_id, reg.address, reg.length))

    try:
        return table.firmware(read)
    except BusError:
        return '?'


@dataclass(frozen=True)
class SetupResult:
    before: FoundServo
    after: FoundServo


def setup_servo(
    port: str,
    protocol: str,
    new_id: int,
    new_baudrate: int,
    *,
    window_s: float | None = None,
    bus_factory: Callable[[str, str, int], ServoBus] = ServoBus,
) -> SetupResult:
    """Give the one servo on ``port`` id ``new_id`` and baud rate ``new_baudrate``; verify it answers there.

    SetupError if no servo or more than one answers (at any rate of the table), or if the
    servo does not answer at its new id and rate; ValueError for an id or rate the family
    cannot take; BusError for a bus failure on the way.
    """
    table = CONTROL_TABLES[protocol]
    baud_value = baud_register_value(protocol, new_baudrate)
    max_id = protocol_for(protocol).max_id
    if not 0 <= new_id <= max_id:
        raise ValueError(f'{protocol} servo ids are 0..{max_id}, not {new_id}')
    scan = scan_bus(port, [protocol], window_s=window_s, bus_factory=bus_factory)
    if scan.garbled:
        where = ', '.join(f'{rate} baud' for _, rate in scan.garbled)
        raise SetupError(
            f'garbled replies on {port} at {where}: more than one servo is connected (factory-fresh servos all '
            'have id 1); connect only the servo to set up'
        )
    if not scan.servos:
        raise SetupError(
            f'no {protocol} servo answered on {port} at any of {baud_rates(protocol)} baud; '
            'check power, wiring and --protocol'
        )
    if len(scan.servos) > 1:
        listed = '; '.join(f'id {s.id} at {s.baudrate} baud' for s in scan.servos)
        raise SetupError(f'{len(scan.servos)} servos answer on {port} ({listed}); connect only the servo to set up')
    (old,) = scan.servos
    with bus_factory(port, protocol, old.baudrate) as bus:
        bus.write(old.id, table.torque_enable.address, table.encode(table.torque_enable, 0))
        _unlock(bus, old.id, locked=False)
        if new_id != old.id:
            # The acknowledgement still comes from the old id; the servo answers to the new one from then on.
            bus.write(old.id, table.id.address, table.encode(table.id, new_id))
        if new_baudrate != old.baudrate:
            # Acknowledged at the old rate; the servo listens at the new one from then on.
            bus.write(new_id, table.baud_rate.address, table.encode(table.baud_rate, baud_value))
    with bus_factory(port, protocol, new_baudrate) as bus:
        try:
            model = bus.ping(new_id)
            _unlock(bus, new_id, locked=True)
            stored_baud = table.decode(table.baud_rate, bus.read(new_id, table.baud_rate.address, 1))
        except BusError as exc:
            raise SetupError(
                f'the servo does not answer at id {new_id}, {new_baudrate} baud after set-up ({exc}); '
                f'run `bimanual-vla scan --port {port}` to see where it is'
            ) from None
        if stored_baud != baud_value:
            raise SetupError(f'servo {new_id}: Baud_Rate register holds {stored_baud}, expected {baud_value}')
        after = FoundServo(protocol, new_baudrate, new_id, model, read_firmware(bus, new_id))
    return SetupResult(old, after)


def _unlock(bus: ServoBus, servo_id: int, *, locked: bool) -> None:
    """Feetech: open (0) or close (1) the EEPROM Lock register; Dynamixel has none (torque off is its lock)."""
    table = bus.control_table
    if table.lock is not None:
        bus.write(servo_id, table.lock.address, table.encode(table.lock, 1 if locked else 0))
