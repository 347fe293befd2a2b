"""One serial servo bus (Feetech STS or Dynamixel 2.0) on pyserial, without the SDKs' traps.

What this does differently from the manufacturers' SDKs, and why:

* One lock per bus: every transaction (send + collect replies) is atomic, so a
  reader thread and a service callback can share a bus.
* Input is flushed before each transaction, and every reply is matched by servo
  id *and* expected length. When a servo misses its deadline its reply may still
  come later; the bus remembers that (id, length) and, for the next reads of
  that servo, asks for a different length, so a late reply can never pass for a
  fresh one. It is counted in ``late_replies`` and dropped.
* Deadlines come from ``time.monotonic()``: the bytes still on the wire plus the
  request and every expected reply at the configured baud rate, a per-reply
  allowance for the servo's return delay, and a margin. No 16 ms latency-timer
  guesses, no wall-clock time that jumps with NTP.
* Reads block in ``select`` until bytes arrive or the deadline passes: no
  ``timeout=0`` spin, so waiting costs no CPU.
* Sync reads give a result per servo. Servos answer in the order they were
  asked, so once the last one has answered the missing ones are known missing;
  one absent servo costs nothing extra unless it is the last, and then only the
  margin, never a fixed 34 ms per servo. Later servos are still read.
* ``broadcast_ping`` finds every servo on the bus at the current baud rate (what ``scan`` and
  ``setup-servo`` build on), listening as long as the SDKs do, since servos answer in id order.
* ping/read/write retry on timeouts and checksum errors (``retries``); sync reads
  do not (the next cycle is the retry, and it is not delayed by this one).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import serial

from bimanual_vla.drivers.servo.control_table import CONTROL_TABLES, ControlTable
from bimanual_vla.drivers.servo.protocol_common import (
    BROADCAST_ID,
    CorruptFrame,
    Instruction,
    PacketError,
    StatusPacket,
)
from bimanual_vla.drivers.servo.protocols import protocol_for

BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit

try:  # termios.error is not an OSError; a vanished pty raises it from tcflush
    import termios

    _PORT_FAILURES: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)
except ImportError:  # Windows
    _PORT_FAILURES = (serial.SerialException, OSError)


class BusError(Exception):
    """Base of every bus failure; the message says what happened and to which servo."""


class BusTimeout(BusError):
    """No complete, valid reply arrived before the deadline."""


class ChecksumError(BusError):
    """A reply arrived but failed its checksum/CRC."""


class ServoStatusError(BusError):
    """The servo answered, but its status says the instruction failed."""

    def __init__(self, message: str, servo_id: int, error_bits: int, description: str) -> None:
        super().__init__(message)
        self.servo_id = servo_id
        self.error_bits = error_bits
        self.description = description


class PortError(BusError):
    """The port cannot be opened or has gone away (unplugged adapter, closed pty)."""


@dataclass
class BusCounters:
    """Cumulative event counts, for diagnostics."""

    transactions: int = 0
    timeouts: int = 0  # expected replies (per servo) that did not arrive in time
    checksum_errors: int = 0
    retries: int = 0
    late_replies: int = 0  # valid replies that did not belong to the transaction they arrived in
    noise_bytes: int = 0  # bytes skipped while looking for a packet header
    port_errors: int = 0
    status_errors: int = 0  # replies with any error bit set (alarms included)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Outcome:
    """What one transaction produced: packets by servo id, and failures by servo id."""

    packets: dict[int, StatusPacket]
    errors: dict[int, BusError]


class ServoBus:
    """Transactions on one serial servo bus. Thread-safe; open with ``open()`` or ``with``."""

    def __init__(
        self,
        port: str,
        protocol: str,
        baudrate: int = 1_000_000,
        *,
        retries: int = 2,
        timeout_margin_s: float = 0.010,
        reply_latency_s: float = 0.0005,
        late_reply_memory_s: float = 1.0,
    ) -> None:
        """``reply_latency_s``: allowance per expected reply for the servo's return delay.

        ``late_reply_memory_s``: how long a timed-out servo is assumed to possibly still answer.
        """
        if retries < 0 or timeout_margin_s < 0 or baudrate <= 0:
            raise ValueError('retries and timeout_margin_s must be >= 0 and baudrate > 0')
        self.port = port
        self.protocol_name = protocol
        self.protocol = protocol_for(protocol)
        self.control_table: ControlTable = CONTROL_TABLES[protocol]
        self.baudrate = baudrate
        self.retries = retries
        self.timeout_margin_s = timeout_margin_s
        self.reply_latency_s = reply_latency_s
        self.late_reply_memory_s = late_reply_memory_s
        self.counters = BusCounters()
        self.last_error: str | None = None
        self.alarms: dict[int, list[str]] = {}  # latest non-fatal error bits per servo, in words
        self.last_sync_errors: dict[int, BusError] = {}  # why each None in the last sync_read is None
        self.broadcast_garbled = 0  # replies to the last broadcast_ping that failed their check
        self._byte_time = BITS_PER_BYTE / baudrate
        self._lock = threading.Lock()
        self._serial: serial.SerialBase | None = None
        self._fd: int | None = None
        self._wire_free_at = 0.0
        # servo id -> {reply parameter length: monotonic time until which a late reply may still arrive}
        self._late_possible: dict[int, dict[int, float]] = {}
        self._parser = self.protocol.parser('status')

    # ------------------------------------------------------------- lifecycle
    def open(self) -> None:
        with self._lock:
            if self._serial is not None:
                return
            try:
                ser = serial.serial_for_url(self.port, do_not_open=True)
                ser.baudrate = self.baudrate
                ser.timeout = 0.1
                ser.write_timeout = 1.0
                if isinstance(ser, serial.Serial) and hasattr(ser, 'fd'):
                    ser.exclusive = True  # a second process on the same bus would interleave packets
                ser.open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self.counters.port_errors += 1
                self.last_error = f'cannot open {self.port}: {exc}'
                raise PortError(self.last_error) from exc
            with contextlib.suppress(Exception):
                ser.set_low_latency_mode(True)  # FTDI adapters otherwise batch replies for 16 ms
            fd = getattr(ser, 'fd', None)
            self._fd = fd if isinstance(fd, int) and fd >= 0 else None
            self._serial = ser
            self._wire_free_at = 0.0
            self._late_possible.clear()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        ser, self._serial, self._fd = self._serial, None, None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def __enter__(self) -> ServoBus:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = 'open' if self.is_open else 'closed'
        return f'ServoBus({self.port!r}, {self.protocol_name!r}, {self.baudrate}, {state})'

    # ----------------------------------------------------------- public API
    def ping(self, servo_id: int) -> int:
        """The servo's model number; raises BusTimeout if it does not answer."""
        if self.protocol_name == 'dynamixel':
            params = self._single(servo_id, self.protocol.ping(servo_id), 3, 'ping')
            return params[0] | (params[1] << 8)
        # Feetech PING replies carry no data: confirm presence, then read the model number register.
        self._single(servo_id, self.protocol.ping(servo_id), 0, 'ping')
        reg = self.control_table.model_number
        return int.from_bytes(self.read(servo_id, reg.address, reg.length), 'little')

    def broadcast_ping(self, window_s: float | None = None) -> dict[int, int]:
        """Every servo that answers a PING to the broadcast id at this baud rate: ``{id: model number}``.

        Servos answer one after another in id order, so the bus listens for the whole window the
        manufacturers' SDKs allow (every possible id's status at this baud rate plus 3 ms per id,
        as ``broadcastPing`` in dynamixel_sdk) unless ``window_s`` says otherwise. Garbled replies
        (two servos sharing an id collide on the wire) are counted in ``broadcast_garbled``.
        Feetech statuses carry no data: the model number is read from each servo that answered.
        """
        proto = self.protocol
        n_params = 3 if self.protocol_name == 'dynamixel' else 0
        n_ids = proto.max_id + 1
        if window_s is None:
            window_s = n_ids * (proto.status_frame_size(n_params) * self._byte_time + 0.003) + 0.016
        found: dict[int, StatusPacket] = {}
        with self._lock:
            self.counters.transactions += 1
            parser = self._parser
            parser.reset()
            parser.max_frame = proto.status_frame_size(n_params) + 2
            noise0, corrupt0 = parser.noise_bytes, parser.checksum_errors
            self._send(self._build(lambda: proto.frame(BROADCAST_ID, Instruction.PING, b'')))
            deadline = time.monotonic() + window_s
            try:
                while (left := deadline - time.monotonic()) > 0:
                    for item in parser.feed(self._receive(left)):
                        if isinstance(item, StatusPacket) and len(item.params) == n_params:
                            found.setdefault(item.servo_id, item)
            finally:
                self.counters.noise_bytes += parser.noise_bytes - noise0
                self.counters.checksum_errors += parser.checksum_errors - corrupt0
                self.broadcast_garbled = parser.checksum_errors - corrupt0
            self._wire_free_at = time.monotonic()
        if n_params:
            return {i: p.params[0] | (p.params[1] << 8) for i, p in sorted(found.items())}
        reg = self.control_table.model_number
        return {i: self.control_table.decode(reg, self.read(i, reg.address, reg.length)) for i in sorted(found)}

    def read(self, servo_id: int, address: int, length: int) -> bytes:
        """``length`` bytes from ``address`` of one servo."""
        self._check_range(address, length)
        return self._single(servo_id, None, length, f'read of {length} bytes at {address}', address=address)

    def write(self, servo_id: int, address: int, data: bytes) -> None:
        """Write ``data`` at ``address`` and wait for the servo to acknowledge it."""
        self._check_range(address, len(data))
        packet = self._build(lambda: self.protocol.write(servo_id, address, bytes(data)))
        self._single(servo_id, packet, 0, f'write of {len(data)} bytes at {address}')

    def sync_read(self, ids: Sequence[int], address: int, length: int) -> dict[int, bytes | None]:
        """One SYNC READ: ``{id: data}`` for every id, None where that servo gave no valid reply this time."""
        ids = list(ids)
        if len(set(ids)) != len(ids):
            raise ValueError(f'sync_read ids must be unique, got {ids}')
        self._check_range(address, length)
        if not ids:
            return {}
        with self._lock:
            ask, ambiguous = self._choose_length(ids, address, length)
            packet = self._build(lambda: self.protocol.sync_read(address, ask, ids))
            outcome = self._transact(packet, {i: ask for i in ids}, ordered=ids, ambiguous=ambiguous, lone_ok=False)
            self.last_sync_errors = outcome.errors
        result: dict[int, bytes | None] = {}
        for i in ids:
            pkt = outcome.packets.get(i)
            result[i] = bytes(pkt.params[:length]) if pkt is not None else None
        if outcome.errors:
            self.last_error = str(next(iter(outcome.errors.values())))
        return result

    def sync_write(self, address: int, data: Mapping[int, bytes]) -> None:
        """One SYNC WRITE (broadcast, servos do not reply). All values must have the same length."""
        if not data:
            return
        packet = self._build(lambda: self.protocol.sync_write(address, {i: bytes(d) for i, d in data.items()}))
        self._check_range(address, len(next(iter(data.values()))))
        with self._lock:
            self.counters.transactions += 1
            self._send(packet)

    # ----------------------------------------------------------- internals
    def _build(self, make: Callable[[], bytes]) -> bytes:
        try:
            return make()
        except PacketError as exc:
            raise ValueError(str(exc)) from exc

    def _check_range(self, address: int, length: int) -> None:
        limit = 1 << (8 * self.protocol.addr_size)
        if not (0 <= address < limit and 1 <= length and address + length <= limit):
            raise ValueError(f'{self.protocol_name}: address {address} / length {length} out of range')

    def _choose_length(self, ids: Sequence[int], address: int, length: int) -> tuple[int, set[int]]:
        """A read length that no possibly-outstanding late reply of these servos has.

        Tries up to 8 extra bytes (reading past a register is harmless). If every length
        clashes, returns the least-clashing one and the servos it stays ambiguous for.
        """
        now = time.monotonic()
        best = (length, {i for i in ids if self._late_pending(i, length, now)})
        for ask in range(length + 1, length + 9):
            if not best[1] or address + ask > self.control_table.size:
                break
            clash = {i for i in ids if self._late_pending(i, ask, now)}
            if len(clash) < len(best[1]):
                best = (ask, clash)
        return best

    def _late_pending(self, servo_id: int, n_params: int, now: float) -> bool:
        pending = self._late_possible.get(servo_id)
        if not pending:
            return False
        until = pending.get(n_params)
        if until is None:
            return False
        if until < now:
            del pending[n_params]
            return False
        return True

    def _single(
        self,
        servo_id: int,
        packet: bytes | None,
        n_params: int,
        what: str,
        *,
        address: int = 0,
    ) -> bytes:
        """One request to one servo with the retry policy; returns the reply's parameters.

        ``packet`` None means a READ of ``n_params`` bytes at ``address``, whose length may be
        stretched to tell a fresh reply from a late one. PING and WRITE replies have a fixed
        shape; for those a lone reply of a possibly-late shape is accepted (the cost of a stale
        acknowledgement is small, and a second reply of the same shape still wins).
        """
        last: BusError | None = None
        attempt = 0
        for attempt in range(self.retries + 1):
            with self._lock:
                if packet is None:
                    ask, ambiguous = self._choose_length([servo_id], address, n_params)
                    pkt = self._build(lambda ask=ask: self.protocol.read(servo_id, address, ask))
                    lone_ok = False
                else:
                    ask, pkt, lone_ok = n_params, packet, True
                    ambiguous = {servo_id} if self._late_pending(servo_id, ask, time.monotonic()) else set()
                outcome = self._transact(pkt, {servo_id: ask}, ordered=[servo_id], ambiguous=ambiguous, lone_ok=lone_ok)
            reply = outcome.packets.get(servo_id)
            if reply is not None:
                return bytes(reply.params[:n_params])
            last = outcome.errors[servo_id]
            self.last_error = f'{what}: {last}'
            if isinstance(last, (BusTimeout, ChecksumError)) and attempt < self.retries:
                self.counters.retries += 1
                continue
            break
        assert last is not None
        if isinstance(last, ServoStatusError):
            raise last
        raise type(last)(f'{what} failed after {attempt + 1} attempt(s): {last}') from last

    def _send(self, packet: bytes) -> None:
        """Flush stale input, then write ``packet``. Caller holds the lock."""
        ser = self._serial
        if ser is None:
            raise PortError(f'{self.port}: bus is not open')
        try:
            ser.reset_input_buffer()
            if self._fd is not None:
                view = memoryview(packet)
                while view:
                    try:
                        view = view[os.write(self._fd, view) :]
                    except BlockingIOError:
                        select.select([], [self._fd], [], 0.1)
            else:
                ser.write(packet)
        except (*_PORT_FAILURES, ValueError, TypeError) as exc:
            self._port_failed(exc)
        now = time.monotonic()
        self._wire_free_at = max(self._wire_free_at, now) + len(packet) * self._byte_time

    def _port_failed(self, exc: BaseException) -> None:
        self.counters.port_errors += 1
        self.last_error = f'{self.port}: port failed: {exc}'
        self._close_locked()
        raise PortError(self.last_error) from exc

    def _receive(self, timeout: float) -> bytes:
        """Whatever bytes arrive within ``timeout`` seconds (b'' if none). Blocks; never spins."""
        try:
            if self._fd is not None:
                ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
                if not ready:
                    return b''
                data = os.read(self._fd, 4096)
                if not data:
                    raise OSError('end of file on serial port')
                return data
            ser = self._serial
            if ser is None:
                raise OSError('port closed')
            ser.timeout = max(0.0, timeout)
            return ser.read(max(1, ser.in_waiting))
        except BlockingIOError:
            return b''
        except (*_PORT_FAILURES, ValueError, TypeError) as exc:
            self._port_failed(exc)
            raise  # unreachable: _port_failed raises

    def _transact(
        self,
        packet: bytes,
        expected: dict[int, int],
        *,
        ordered: list[int],
        ambiguous: set[int],
        lone_ok: bool,
    ) -> _Outcome:
        """Send one instruction and collect the replies it asks for. Caller holds the lock.

        ``expected`` maps servo id to the parameter count of its reply; ``ordered`` is the
        order servos answer in. For ids in ``ambiguous`` a late reply of the expected shape
        may be on its way: the first matching packet is held, and a second one replaces it
        (the first was the late one). A lone held packet is accepted only if ``lone_ok``.
        """
        proto = self.protocol
        self.counters.transactions += 1
        parser = self._parser
        parser.reset()
        parser.max_frame = max(proto.status_frame_size(n) + n // 3 + 2 for n in expected.values())
        noise0, corrupt0 = parser.noise_bytes, parser.checksum_errors
        self._send(packet)
        deadline = self._reply_deadline(expected)
        budget_ms = 1000 * (deadline - time.monotonic())
        hold_s = 4 * proto.status_frame_size(max(expected.values())) * self._byte_time + 0.002
        packets: dict[int, StatusPacket] = {}
        errors: dict[int, BusError] = {}
        waiting = dict(expected)
        held: dict[int, StatusPacket] = {}
        suspect: set[int] = set()  # ids named by a frame that failed its check
        last_id = ordered[-1]
        hold_until = deadline
        try:
            while waiting:
                now = time.monotonic()
                until = deadline if any(i not in held for i in waiting) else min(deadline, hold_until)
                if now >= until:
                    break
                data = self._receive(until - now)
                if not data:
                    continue
                for item in parser.feed(data):
                    if isinstance(item, CorruptFrame):
                        if item.servo_id in waiting:
                            suspect.add(item.servo_id)
                        continue
                    sid = item.servo_id
                    if waiting.get(sid) != len(item.params):
                        # A valid reply nobody in this transaction is waiting for: it answers an earlier request.
                        self.counters.late_replies += 1
                        self._late_possible.get(sid, {}).pop(len(item.params), None)
                        continue
                    if sid in ambiguous and sid not in held:
                        held[sid] = item
                        hold_until = time.monotonic() + hold_s
                        continue
                    if sid in held:  # a second reply of the same shape: the held one was late
                        self.counters.late_replies += 1
                        del held[sid]
                    del waiting[sid]
                    # A servo answers in order, so nothing older from it can still be on the way.
                    self._late_possible.pop(sid, None)
                    self._take(item, packets, errors)
                # Replies come in request order: once the last servo has answered, the others are not coming.
                if last_id not in waiting or (last_id in suspect and not self._late_possible.get(last_id)):
                    break
        finally:
            self.counters.noise_bytes += parser.noise_bytes - noise0
            self.counters.checksum_errors += parser.checksum_errors - corrupt0
        # Replies (or their deadline) are behind us: nothing of ours is on the wire any more.
        now = self._wire_free_at = time.monotonic()
        self._settle_unanswered(now, waiting, held, suspect, lone_ok, budget_ms, packets, errors)
        return _Outcome(packets, errors)

    def _reply_deadline(self, expected: dict[int, int]) -> float:
        """When the replies to the instruction just sent are due at the latest (monotonic seconds)."""
        frame_bytes = sum(self.protocol.status_frame_size(n) for n in expected.values())
        return (
            self._wire_free_at
            + frame_bytes * self._byte_time
            + len(expected) * self.reply_latency_s
            + self.timeout_margin_s
        )

    def _settle_unanswered(
        self,
        now: float,
        waiting: dict[int, int],
        held: dict[int, StatusPacket],
        suspect: set[int],
        lone_ok: bool,
        budget_ms: float,
        packets: dict[int, StatusPacket],
        errors: dict[int, BusError],
    ) -> None:
        """After the deadline: accept a lone held reply where allowed, else record why each servo failed.

        A servo that did not answer may still answer late: its reply shape is remembered for
        ``late_reply_memory_s`` after `now` so a later transaction does not take it for its own.
        """
        for sid, n_params in waiting.items():
            if sid in held and lone_ok:
                self._late_possible.pop(sid, None)
                self._take(held[sid], packets, errors)
                continue
            self.counters.timeouts += 1
            self._late_possible.setdefault(sid, {})[n_params] = now + self.late_reply_memory_s
            if sid in held:
                errors[sid] = BusTimeout(
                    f'servo {sid}: only a reply that may be a late one arrived within {budget_ms:.1f} ms on {self.port}'
                )
            elif sid in suspect:
                errors[sid] = ChecksumError(f'servo {sid}: reply failed its checksum on {self.port}')
            else:
                errors[sid] = BusTimeout(f'servo {sid}: no reply within {budget_ms:.1f} ms on {self.port}')

    def _take(self, pkt: StatusPacket, packets: dict[int, StatusPacket], errors: dict[int, BusError]) -> None:
        servo_id = pkt.servo_id
        if pkt.error:
            self.counters.status_errors += 1
            words = self.protocol.describe_error(pkt.error)
            if self.protocol.instruction_failed(pkt.error):
                description = '; '.join(words)
                errors[servo_id] = ServoStatusError(
                    f'servo {servo_id}: {description} (error byte 0x{pkt.error:02x})', servo_id, pkt.error, description
                )
                return
            self.alarms[servo_id] = words
        else:
            self.alarms.pop(servo_id, None)
        packets[servo_id] = pkt
