"""What the Feetech STS and Dynamixel 2.0 packet codecs share: packet types, instruction codes, the stream parser.

Both protocols frame a packet as ``header, id, length, instruction-or-error, parameters, check``
and differ only in header bytes, field widths and the check. The incremental
parser here owns the hard part once (finding frames in a byte stream that
carries noise, truncated packets and stale replies, and resynchronising one byte
after a bad header); each protocol module supplies how to judge one frame.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum

BROADCAST_ID = 0xFE


class Instruction(IntEnum):
    """Instruction codes; identical in Feetech STS and Dynamixel 2.0."""

    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83


class PacketError(ValueError):
    """A packet cannot be built (bad argument) or a byte string is not a valid packet."""


@dataclass(frozen=True)
class StatusPacket:
    """A servo's reply: who sent it, its error byte, and its parameter bytes (the data read, if any)."""

    servo_id: int
    error: int
    params: bytes


@dataclass(frozen=True)
class InstructionPacket:
    """A controller's request, as the emulator receives it."""

    servo_id: int
    instruction: int
    params: bytes


@dataclass(frozen=True)
class CorruptFrame:
    """A frame whose header looked right but whose checksum/CRC failed.

    ``servo_id`` is what the damaged frame claims; it may itself be a damaged byte.
    """

    servo_id: int
    raw: bytes


ParsedPacket = StatusPacket | InstructionPacket


class FrameParser:
    """Incremental parser: feed it bytes as they arrive, get whole packets back.

    It never raises on input. Bytes that cannot start a frame are counted in
    ``noise_bytes``; frames that fail their check are reported as ``CorruptFrame``
    (and counted in ``checksum_errors``) and scanning resumes one byte after
    their header, so a real packet hidden behind a false header is still found.
    ``max_frame`` bounds the length a header may claim: a noise header claiming
    a long frame would otherwise swallow the real reply behind it.
    """

    def __init__(self, protocol: Protocol, kind: str, max_frame: int | None = None) -> None:
        if kind not in ('status', 'instruction'):
            raise ValueError(f"kind must be 'status' or 'instruction', not {kind!r}")
        self.protocol = protocol
        self.kind = kind
        self.max_frame = protocol.max_frame if max_frame is None else max_frame
        self.noise_bytes = 0
        self.checksum_errors = 0
        self._buf = bytearray()

    def reset(self) -> None:
        """Forget buffered bytes (counters are kept)."""
        self._buf.clear()

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[ParsedPacket | CorruptFrame]:
        buf = self._buf
        buf += data
        out: list[ParsedPacket | CorruptFrame] = []
        header = self.protocol.header
        pos = 0
        while True:
            start = buf.find(header, pos)
            if start < 0:
                keep = _partial_header_len(buf, header, pos)
                self.noise_bytes += len(buf) - pos - keep
                pos = len(buf) - keep
                break
            self.noise_bytes += start - pos
            verdict, size, packet = self.protocol.judge_frame(buf, start, self.kind, self.max_frame)
            if verdict == NEED_MORE:
                pos = start
                break
            if verdict == NOT_A_FRAME:
                self.noise_bytes += 1
                pos = start + 1
                continue
            if verdict == CORRUPT:
                self.checksum_errors += 1
                out.append(CorruptFrame(buf[start + self.protocol.id_offset], bytes(buf[start : start + size])))
                self.noise_bytes += 1
                pos = start + 1
                continue
            assert packet is not None
            out.append(packet)
            pos = start + size
        if pos:
            del buf[:pos]
        return out


def _partial_header_len(buf: bytearray, header: bytes, pos: int) -> int:
    """Length of the longest tail of buf[pos:] that is a proper prefix of ``header``."""
    for n in range(min(len(header) - 1, len(buf) - pos), 0, -1):
        if buf.endswith(header[:n]):
            return n
    return 0


# verdicts of Protocol.judge_frame
NEED_MORE, NOT_A_FRAME, CORRUPT, OK = range(4)


class Protocol(abc.ABC):
    """One servo protocol's packet codec; stateless, so one module-level instance serves everyone."""

    name: str
    header: bytes
    id_offset: int  # index of the id byte in a frame
    max_id: int  # largest id a servo may have
    max_frame: int  # longest frame the parser accepts by default
    status_overhead: int  # bytes of a status frame beyond its parameters
    addr_size: int  # bytes of an address / length field in instructions

    # ----------------------------------------------------------- to implement
    @abc.abstractmethod
    def frame(self, servo_id: int, code: int, params: bytes) -> bytes:
        """A complete packet: header, id, length, ``code`` (instruction or status marker), params, check."""

    @abc.abstractmethod
    def status(self, servo_id: int, error: int, params: bytes = b'') -> bytes:
        """A status packet (what a servo sends back)."""

    @abc.abstractmethod
    def judge_frame(
        self, buf: bytearray, start: int, kind: str, max_frame: int
    ) -> tuple[int, int, ParsedPacket | None]:
        """Verdict on the frame whose header is at ``buf[start]``: (verdict, frame size, packet if OK)."""

    @abc.abstractmethod
    def describe_error(self, error: int) -> list[str]:
        """The error byte of a status packet in words (empty list: no error)."""

    @abc.abstractmethod
    def instruction_failed(self, error: int) -> bool:
        """True if the error byte says the instruction was not carried out (the data is not valid).

        False for alarm-only bits (overload, overheat...): the servo did what was asked and
        its data is valid, it only reports a condition worth a diagnostic.
        """

    @abc.abstractmethod
    def ping_reply_params(self, model_number: int, firmware: int) -> bytes:
        """Parameters of a servo's reply to PING."""

    # ---------------------------------------------------------- shared logic
    def _u(self, value: int) -> bytes:
        """An address or length field."""
        if not 0 <= value < (1 << (8 * self.addr_size)):
            raise PacketError(f'{self.name}: address/length {value} out of range')
        return value.to_bytes(self.addr_size, 'little')

    def _check_id(self, servo_id: int) -> None:
        if not 0 <= servo_id <= self.max_id:
            raise PacketError(f'{self.name}: servo id {servo_id} out of range 0..{self.max_id}')

    def ping(self, servo_id: int) -> bytes:
        self._check_id(servo_id)
        return self.frame(servo_id, Instruction.PING, b'')

    def read(self, servo_id: int, address: int, length: int) -> bytes:
        self._check_id(servo_id)
        if length < 1:
            raise PacketError(f'{self.name}: read length must be >= 1, got {length}')
        return self.frame(servo_id, Instruction.READ, self._u(address) + self._u(length))

    def write(self, servo_id: int, address: int, data: bytes) -> bytes:
        self._check_id(servo_id)
        if not data:
            raise PacketError(f'{self.name}: write needs at least one data byte')
        return self.frame(servo_id, Instruction.WRITE, self._u(address) + bytes(data))

    def sync_read(self, address: int, length: int, ids: Sequence[int]) -> bytes:
        if length < 1 or not ids:
            raise PacketError(f'{self.name}: sync read needs length >= 1 and at least one id')
        for i in ids:
            self._check_id(i)
        return self.frame(BROADCAST_ID, Instruction.SYNC_READ, self._u(address) + self._u(length) + bytes(ids))

    def sync_write(self, address: int, data: Mapping[int, bytes]) -> bytes:
        lengths = {len(d) for d in data.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise PacketError(f'{self.name}: sync write needs equal, non-empty data for every id, got {lengths}')
        (length,) = lengths
        body = bytearray(self._u(address) + self._u(length))
        for servo_id, d in data.items():
            self._check_id(servo_id)
            body.append(servo_id)
            body += d
        return self.frame(BROADCAST_ID, Instruction.SYNC_WRITE, bytes(body))

    def status_frame_size(self, n_params: int) -> int:
        """Bytes on the wire of a status packet with ``n_params`` parameters (before any byte stuffing)."""
        return self.status_overhead + n_params

    def parser(self, kind: str = 'status', max_frame: int | None = None) -> FrameParser:
        return FrameParser(self, kind, max_frame)

    def decode(self, frame: bytes, kind: str = 'status') -> ParsedPacket:
        """Exactly one whole packet from ``frame``; PacketError names what is wrong."""
        buf = bytearray(frame)
        if not buf.startswith(self.header):
            raise PacketError(f'{self.name}: packet does not start with header {self.header.hex(" ")}')
        verdict, size, packet = self.judge_frame(buf, 0, kind, max(self.max_frame, len(buf)))
        if verdict == NEED_MORE:
            raise PacketError(f'{self.name}: packet is truncated ({len(buf)} bytes)')
        if verdict == NOT_A_FRAME:
            raise PacketError(f'{self.name}: header fields are invalid for a {kind} packet')
        if verdict == CORRUPT:
            raise PacketError(f'{self.name}: checksum mismatch')
        if size != len(buf):
            raise PacketError(f'{self.name}: {len(buf) - size} bytes after the end of the packet')
        assert packet is not None
        return packet

    # ---- parameter layouts of instructions (the emulator's side)
    def split_read(self, params: bytes) -> tuple[int, int]:
        """(address, length) of a READ or the head of a SYNC READ."""
        a = self.addr_size
        if len(params) < 2 * a:
            raise PacketError(f'{self.name}: read parameters too short')
        return int.from_bytes(params[:a], 'little'), int.from_bytes(params[a : 2 * a], 'little')

    def split_write(self, params: bytes) -> tuple[int, bytes]:
        a = self.addr_size
        if len(params) <= a:
            raise PacketError(f'{self.name}: write parameters too short')
        return int.from_bytes(params[:a], 'little'), bytes(params[a:])

    def split_sync_read(self, params: bytes) -> tuple[int, int, list[int]]:
        address, length = self.split_read(params)
        return address, length, list(params[2 * self.addr_size :])

    def split_sync_write(self, params: bytes) -> tuple[int, dict[int, bytes]]:
        address, length = self.split_read(params)
        body = params[2 * self.addr_size :]
        if length < 1 or len(body) % (length + 1):
            raise PacketError(f'{self.name}: sync write body of {len(body)} bytes is not a multiple of {length + 1}')
        return address, {body[i]: bytes(body[i + 1 : i + 1 + length]) for i in range(0, len(body), length + 1)}


def describe_bits(error: int, names: Mapping[int, str]) -> list[str]:
    """Words for the set bits of ``error`` (unknown bits named by number)."""
    return [names.get(bit, f'unknown error bit {bit}') for bit in range(8) if error & (1 << bit)]
