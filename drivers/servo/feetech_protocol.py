"""Feetech STS/SMS serial protocol (the "SCS" protocol of STS3215 servos): packet encode/decode.

Frame: ``FF FF id length code params... checksum`` where length = len(params) + 2,
``code`` is the instruction (requests) or the error byte (replies), and the
checksum is the inverted low byte of the sum of id, length, code and params.
An 8-bit sum is a weak check, which is why the bus also matches replies by id
and expected length and the parser bounds the length a header may claim.
"""

from __future__ import annotations

from bimanual_vla.drivers.servo.protocol_common import (
    BROADCAST_ID,
    CORRUPT,
    NEED_MORE,
    NOT_A_FRAME,
    OK,
    InstructionPacket,
    PacketError,
    ParsedPacket,
    Protocol,
    StatusPacket,
    describe_bits,
)

HEADER = b'\xff\xff'
MAX_STATUS_ERROR = 0x7F  # bit 7 is never set by a servo; a frame claiming it is noise

ERROR_BITS = {
    0: 'input voltage out of range',
    1: 'position sensor error',
    2: 'overheat',
    3: 'overcurrent',
    5: 'overload',
}


def checksum(body: bytes | bytearray) -> int:
    """Inverted low byte of the sum of ``body`` (id through last parameter)."""
    return ~sum(body) & 0xFF


class FeetechProtocol(Protocol):
    name = 'feetech'
    header = HEADER
    id_offset = 2
    max_id = 0xFD
    max_frame = 255 + 4
    status_overhead = 6
    addr_size = 1

    def frame(self, servo_id: int, code: int, params: bytes) -> bytes:
        length = len(params) + 2
        if length > 0xFF:
            raise PacketError(f'feetech: {len(params)} parameter bytes do not fit one packet (max 253)')
        body = bytes((servo_id, length, code)) + bytes(params)
        return HEADER + body + bytes((checksum(body),))

    def status(self, servo_id: int, error: int, params: bytes = b'') -> bytes:
        self._check_id(servo_id)
        return self.frame(servo_id, error, params)

    def judge_frame(
        self, buf: bytearray, start: int, kind: str, max_frame: int
    ) -> tuple[int, int, ParsedPacket | None]:
        avail = len(buf) - start
        if avail < 5:
            return NEED_MORE, 0, None
        servo_id = buf[start + 2]
        length = buf[start + 3]
        code = buf[start + 4]
        size = length + 4
        if kind == 'status':
            if servo_id > self.max_id or code > MAX_STATUS_ERROR:
                return NOT_A_FRAME, 0, None
        elif servo_id > BROADCAST_ID:
            return NOT_A_FRAME, 0, None
        if length < 2 or size > max_frame:
            return NOT_A_FRAME, 0, None
        if avail < size:
            return NEED_MORE, 0, None
        if buf[start + size - 1] != checksum(buf[start + 2 : start + size - 1]):
            return CORRUPT, size, None
        params = bytes(buf[start + 5 : start + size - 1])
        if kind == 'status':
            return OK, size, StatusPacket(servo_id, code, params)
        return OK, size, InstructionPacket(servo_id, code, params)

    def describe_error(self, error: int) -> list[str]:
        return describe_bits(error, ERROR_BITS)

    def instruction_failed(self, error: int) -> bool:
        # Every STS error bit is an alarm about the servo's state; the instruction was still executed.
        return False

    def ping_reply_params(self, model_number: int, firmware: int) -> bytes:
        return b''


FEETECH = FeetechProtocol()
