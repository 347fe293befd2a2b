"""Dynamixel protocol 2.0: packet encode/decode with CRC-16 and byte stuffing.

Frame: ``FF FF FD 00 id len_l len_h instruction params... crc_l crc_h``. The
length counts instruction, parameters and CRC *after* byte stuffing: wherever
``FF FF FD`` occurs from the instruction byte on, an extra ``FD`` is inserted so
the payload can never contain a header. The CRC (polynomial 0x8005, initial
value 0, not reflected) covers the whole frame as sent, stuffing included.
Forgetting either half of the stuffing works until the day a goal or present
position happens to contain those bytes.
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
)

HEADER = b'\xff\xff\xfd'
STATUS_INSTRUCTION = 0x55
_STUFF_FROM = b'\xff\xff\xfd'
_STUFF_TO = b'\xff\xff\xfd\xfd'

ALERT_BIT = 0x80
ERROR_NUMBERS = {
    1: 'result fail: the instruction could not be processed',
    2: 'instruction error: undefined instruction, or REG WRITE missing before ACTION',
    3: 'CRC error: the servo received a damaged packet',
    4: 'data range error: value out of range for this register',
    5: 'data length error: fewer bytes than the register needs',
    6: 'data limit error: value exceeds the limit register',
    7: 'access error: address is read-only, undefined, or EEPROM while torque is on',
}


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16 as Dynamixel 2.0 uses it (poly 0x8005, init 0, MSB first, no final xor)."""
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ b]
    return crc


def stuff(payload: bytes) -> bytes:
    """Insert FD after every FF FF FD in ``payload`` (instruction + parameters)."""
    return payload.replace(_STUFF_FROM, _STUFF_TO)


def unstuff(payload: bytes) -> bytes:
    """Undo :func:`stuff`."""
    return payload.replace(_STUFF_TO, _STUFF_FROM)


class DynamixelProtocol(Protocol):
    name = 'dynamixel'
    header = HEADER
    id_offset = 4
    max_id = 0xFC
    max_frame = 1024
    status_overhead = 11
    addr_size = 2

    def frame(self, servo_id: int, code: int, params: bytes) -> bytes:
        payload = stuff(bytes((code,)) + bytes(params))
        length = len(payload) + 2
        if length + 7 > self.max_frame:
            raise PacketError(f'dynamixel: packet of {length + 7} bytes exceeds {self.max_frame}')
        head = HEADER + bytes((0, servo_id, length & 0xFF, length >> 8))
        crc = crc16(payload, crc16(head))
        return head + payload + bytes((crc & 0xFF, crc >> 8))

    def status(self, servo_id: int, error: int, params: bytes = b'') -> bytes:
        self._check_id(servo_id)
        return self.frame(servo_id, STATUS_INSTRUCTION, bytes((error,)) + bytes(params))

    def judge_frame(
        self, buf: bytearray, start: int, kind: str, max_frame: int
    ) -> tuple[int, int, ParsedPacket | None]:
        avail = len(buf) - start
        if avail < 4:
            return NEED_MORE, 0, None
        if buf[start + 3] != 0:  # reserved byte; FD here means a stuffed FF FF FD FD, not a header
            return NOT_A_FRAME, 0, None
        if avail < 8:
            return NEED_MORE, 0, None
        servo_id = buf[start + 4]
        length = buf[start + 5] | (buf[start + 6] << 8)
        code = buf[start + 7]
        size = length + 7
        if kind == 'status':
            if servo_id > self.max_id or code != STATUS_INSTRUCTION or length < 4:
                return NOT_A_FRAME, 0, None
        elif servo_id > BROADCAST_ID or code == STATUS_INSTRUCTION or length < 3:
            return NOT_A_FRAME, 0, None
        if size > max_frame:
            return NOT_A_FRAME, 0, None
        if avail < size:
            return NEED_MORE, 0, None
        end = start + size
        if crc16(buf[start : end - 2]) != buf[end - 2] | (buf[end - 1] << 8):
            return CORRUPT, size, None
        payload = unstuff(bytes(buf[start + 7 : end - 2]))
        if kind == 'status':
            return OK, size, StatusPacket(servo_id, payload[1], payload[2:])
        return OK, size, InstructionPacket(servo_id, code, payload[1:])

    def describe_error(self, error: int) -> list[str]:
        words = []
        number = error & 0x7F
        if number:
            words.append(ERROR_NUMBERS.get(number, f'unknown error number {number}'))
        if error & ALERT_BIT:
            words.append('hardware alert: read Hardware Error Status (register 70)')
        return words

    def instruction_failed(self, error: int) -> bool:
        return bool(error & 0x7F)

    def ping_reply_params(self, model_number: int, firmware: int) -> bytes:
        return bytes((model_number & 0xFF, model_number >> 8, firmware))


DYNAMIXEL = DynamixelProtocol()
