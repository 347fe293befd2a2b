"""Packet codecs: the manufacturers' bytes reproduced exactly, and the stream parser under random and garbled input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bimanual_vla.drivers.servo.control_table import CONTROL_TABLES, DYNAMIXEL_X, FEETECH_STS
from bimanual_vla.drivers.servo.dynamixel_protocol import DYNAMIXEL, crc16, stuff, unstuff
from bimanual_vla.drivers.servo.feetech_protocol import FEETECH
from bimanual_vla.drivers.servo.protocol_common import CorruptFrame, InstructionPacket, PacketError, StatusPacket

# A copy of shared/vectors/servo_packets.json (bytes captured from the manufacturers' SDKs on a pty).
VECTORS = json.loads((Path(__file__).parents[2] / 'data' / 'servo_packets.json').read_text())

GOALS = {i: 1000 + 100 * i for i in range(1, 7)}  # 1100 .. 1600 as in the vectors
PROTOCOLS = {'feetech': FEETECH, 'dynamixel': DYNAMIXEL}
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text)


# ----------------------------------------------------------------- vectors
def test_feetech_instruction_vectors_byte_exact() -> None:
    v = VECTORS['feetech_sts']
    goal = FEETECH_STS.goal_position
    assert FEETECH.ping(1) == hexbytes(v['ping_id1'])
    assert FEETECH.read(1, 3, 2) == hexbytes(v['read_model_id1_addr3_len2'])
    assert FEETECH.read(1, 56, 2) == hexbytes(v['read_id1_addr56_len2'])
    assert FEETECH.sync_read(56, 2, [1, 2, 3, 4, 5, 6]) == hexbytes(v['sync_read_present56_len2_ids1to6'])
    sync_write = FEETECH.sync_write(42, {i: FEETECH_STS.encode(goal, g) for i, g in GOALS.items()})
    assert sync_write == hexbytes(v['sync_write_goal42_ids1to6_1100_to_1600'])
    assert FEETECH.write(1, 40, b'\x01') == hexbytes(v['write_torque40_id1_on'])


def test_dynamixel_instruction_vectors_byte_exact() -> None:
    v = VECTORS['dynamixel_2']
    goal = DYNAMIXEL_X.goal_position
    assert DYNAMIXEL.ping(1) == hexbytes(v['ping_id1'])
    assert DYNAMIXEL.read(1, 132, 4) == hexbytes(v['read_id1_addr132_len4'])
    assert DYNAMIXEL.sync_read(132, 4, range(1, 7)) == hexbytes(v['sync_read_present132_len4_ids1to6'])
    sync_write = DYNAMIXEL.sync_write(116, {i: DYNAMIXEL_X.encode(goal, g) for i, g in GOALS.items()})
    assert sync_write == hexbytes(v['sync_write_goal116_len4_ids1to6_1100_to_1600'])
    assert DYNAMIXEL.write(1, 64, b'\x01') == hexbytes(v['write_torque64_id1_on'])


def test_dynamixel_status_vector_encodes_and_parses() -> None:
    raw = hexbytes(VECTORS['dynamixel_2']['status_id1_position_1100'])
    assert DYNAMIXEL.status(1, 0, DYNAMIXEL_X.encode(DYNAMIXEL_X.present_position, 1100)) == raw
    packet = DYNAMIXEL.decode(raw)
    assert packet == StatusPacket(1, 0, b'\x4c\x04\x00\x00')
    assert DYNAMIXEL_X.decode(DYNAMIXEL_X.present_position, packet.params) == 1100
    assert DYNAMIXEL.parser().feed(b'\x00\x13' + raw + b'\xff') == [packet]


def test_vectors_parse_back_as_instructions() -> None:
    v = VECTORS['dynamixel_2']
    packet = DYNAMIXEL.decode(hexbytes(v['sync_write_goal116_len4_ids1to6_1100_to_1600']), 'instruction')
    assert isinstance(packet, InstructionPacket) and packet.servo_id == 0xFE
    address, items = DYNAMIXEL.split_sync_write(packet.params)
    assert address == 116
    assert {i: DYNAMIXEL_X.decode(DYNAMIXEL_X.goal_position, d) for i, d in items.items()} == GOALS
    packet = FEETECH.decode(hexbytes(VECTORS['feetech_sts']['sync_read_present56_len2_ids1to6']), 'instruction')
    assert FEETECH.split_sync_read(packet.params) == (56, 2, [1, 2, 3, 4, 5, 6])


def test_register_addresses_match_vectors() -> None:
    f, d = VECTORS['feetech_sts']['registers'], VECTORS['dynamixel_2']['registers']
    assert FEETECH_STS.model_number.address == f['model']
    assert FEETECH_STS.torque_enable.address == f['torque_enable']
    assert FEETECH_STS.goal_position.address == f['goal_position']
    assert FEETECH_STS.lock.address == f['lock']
    assert FEETECH_STS.present_position.address == f['present_position']
    assert FEETECH_STS.default_model_number == f['sts3215_model_number']
    assert DYNAMIXEL_X.model_number.address == d['model']
    assert DYNAMIXEL_X.homing_offset.address == d['homing_offset']
    assert DYNAMIXEL_X.torque_enable.address == d['torque_enable']
    assert DYNAMIXEL_X.goal_position.address == d['goal_position']
    assert DYNAMIXEL_X.present_position.address == d['present_position']
    assert DYNAMIXEL_X.default_model_number == d['xl430_w250_model_number']
    assert FEETECH_STS.resolution == f['resolution'] == DYNAMIXEL_X.resolution == d['resolution']


# ------------------------------------------------------- fixed examples
def test_crc16_known_value() -> None:
    # CRC of the PING id 1 packet body; its last two bytes (19 4e) are this CRC, low byte first.
    assert crc16(bytes.fromhex('ff ff fd 00 01 03 00 01')) == 0x4E19


def test_dynamixel_byte_stuffing_in_params() -> None:
    data = b'\xff\xff\xfd\x00'  # a goal that contains the header sequence
    packet = DYNAMIXEL.write(3, 116, data)
    # Stuffed on the wire: FF FF FD becomes FF FF FD FD, and the length counts the extra byte.
    assert b'\xff\xff\xfd\xfd' in packet[7:]
    assert packet[5] | (packet[6] << 8) == 1 + 2 + 4 + 1 + 2  # instruction, address, data, stuffing, CRC
    parsed = DYNAMIXEL.decode(packet, 'instruction')
    assert DYNAMIXEL.split_write(parsed.params) == (116, data)
    status = DYNAMIXEL.status(3, 0, data)
    assert DYNAMIXEL.parser().feed(status) == [StatusPacket(3, 0, data)]


def test_feetech_error_bits_in_words() -> None:
    assert FEETECH.describe_error(0) == []
    assert FEETECH.describe_error(0x21) == ['input voltage out of range', 'overload']
    assert not FEETECH.instruction_failed(0x20)  # an alarm: the servo still did what it was told


def test_dynamixel_error_in_words() -> None:
    assert DYNAMIXEL.describe_error(0x07) == [
        'access error: address is read-only, undefined, or EEPROM while torque is on'
    ]
    assert DYNAMIXEL.describe_error(0x80) == ['hardware alert: read Hardware Error Status (register 70)']
    assert DYNAMIXEL.instruction_failed(0x84) and not DYNAMIXEL.instruction_failed(0x80)


def test_decode_rejects_bad_packets_with_a_reason() -> None:
    good = FEETECH.status(1, 0, b'\x01\x02')
    with pytest.raises(PacketError, match='checksum'):
        FEETECH.decode(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(PacketError, match='truncated'):
        FEETECH.decode(good[:-2])
    with pytest.raises(PacketError, match='after the end'):
        FEETECH.decode(good + b'\x00')
    with pytest.raises(PacketError, match='header'):
        DYNAMIXEL.decode(good)
    with pytest.raises(PacketError, match='out of range'):
        FEETECH.ping(254)
    with pytest.raises(PacketError, match='equal'):
        DYNAMIXEL.sync_write(116, {1: b'\x00\x00', 2: b'\x00'})


@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])
def test_parser_resynchronises_after_garbage_and_corruption(protocol: str) -> None:
    proto = PROTOCOLS[protocol]
    a, b = proto.status(1, 0, b'\x10\x20'), proto.status(2, 0, b'\x30\x40')
    damaged = bytearray(proto.status(3, 0, b'\x50\x60'))
    damaged[-1] ^= 0x01
    parser = proto.parser()
    events = parser.feed(b'\xff\xff\x00' + a + b'\xff' + bytes(damaged) + b'\x13\xff\xff' + b)
    good = [e for e in events if isinstance(e, StatusPacket)]
    bad = [e for e in events if isinstance(e, CorruptFrame)]
    assert good == [StatusPacket(1, 0, b'\x10\x20'), StatusPacket(2, 0, b'\x30\x40')]
    assert len(bad) == 1 and bad[0].servo_id == 3
    assert parser.checksum_errors == 1 and parser.noise_bytes > 0


@pytest.mark.parametrize('protocol', ['feetech', 'dynamixel'])
def test_parser_bounds_claimed_length(protocol: str) -> None:
    """A noise header claiming a long frame must not swallow the real reply behind it."""
    proto = PROTOCOLS[protocol]
    reply = proto.status(4, 0, b'\x01\x02')
    fake = b'\xff\xff\x04\xf0' if protocol == 'feetech' else b'\xff\xff\xfd\x00\x04\xf0\x00'
    parser = proto.parser(max_frame=proto.status_frame_size(2) + 2)
    assert parser.feed(fake + reply) == [StatusPacket(4, 0, b'\x01\x02')]


def test_control_table_sign_encodings() -> None:
    f, d = FEETECH_STS, DYNAMIXEL_X
    assert f.encode(f.homing_offset, -5) == (0x805).to_bytes(2, 'little')  # sign bit 11
    assert f.decode(f.homing_offset, (0x805).to_bytes(2, 'little')) == -5
    assert f.encode(f.present_position, -1) == (0x8001).to_bytes(2, 'little')  # sign bit 15
    assert d.encode(d.homing_offset, -5) == (-5 & 0xFFFFFFFF).to_bytes(4, 'little')  # two's complement
    assert d.decode(d.present_position, b'\xff\xff\xff\xff') == -1
    with pytest.raises(ValueError, match='does not fit'):
        f.encode(f.homing_offset, 2048)
    with pytest.raises(ValueError, match='does not fit'):
        f.encode(f.torque_enable, 256)
    with pytest.raises(KeyError, match='no register'):
        d.register('lock')
    assert set(CONTROL_TABLES) == {'feetech', 'dynamixel'}


# ---------------------------------------------------- property-based tests
servo_ids = st.integers(0, 252)
params = st.binary(max_size=40)
protocols = st.sampled_from(['feetech', 'dynamixel'])


@HYPO
@given(protocols, st.binary(max_size=600), st.integers(1, 64))
def test_parser_never_crashes_and_only_emits_valid_packets(protocol: str, data: bytes, chunk: int) -> None:
    proto = PROTOCOLS[protocol]
    parser = proto.parser()
    for i in range(0, len(data), chunk):
        for event in parser.feed(data[i : i + chunk]):
            if isinstance(event, StatusPacket):
                # whatever came out re-encodes to a packet that decodes to itself: it passed the full check
                assert proto.decode(proto.status(event.servo_id, event.error, event.params)) == event
            else:
                assert isinstance(event, CorruptFrame)
                with pytest.raises(PacketError):
                    proto.decode(event.raw)
    assert parser.buffered <= max(len(data), 0)


@HYPO
@given(protocols, st.lists(st.tuples(servo_ids, st.integers(0, 0x7F), params), min_size=1, max_size=6), st.data())
def test_round_trip_through_any_chunking(protocol: str, packets: list, data: st.DataObject) -> None:
    proto = PROTOCOLS[protocol]
    assume(all(i <= proto.max_id for i, _, _ in packets))
    stream = b''.join(proto.status(i, e, p) for i, e, p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = proto.parser()
    out = []
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += parser.feed(stream[lo:hi])
    assert out == [StatusPacket(i, e, p) for i, e, p in packets]
    assert parser.noise_bytes == 0 and parser.checksum_errors == 0


@HYPO
@given(protocols, servo_ids, params, st.binary(max_size=50), st.binary(max_size=50))
def test_packet_found_between_garbage(protocol: str, servo_id: int, payload: bytes, before: bytes, after: bytes):
    proto = PROTOCOLS[protocol]
    assume(servo_id <= proto.max_id)
    packet = StatusPacket(servo_id, 0, payload)
    frame = proto.status(servo_id, 0, payload)
    # Bounded like the bus bounds it: a header may claim at most a little more than the reply expected.
    parser = proto.parser(max_frame=len(frame) + 2)
    events = parser.feed(before + frame + after)
    assert packet in events


@HYPO
@given(protocols, servo_ids, st.binary(min_size=1, max_size=20), st.data())
def test_any_single_bit_flip_is_never_accepted_as_the_original(
    protocol: str, servo_id: int, payload: bytes, data: st.DataObject
) -> None:
    proto = PROTOCOLS[protocol]
    assume(servo_id <= proto.max_id)
    frame = bytearray(proto.status(servo_id, 0, payload))
    index = data.draw(st.integers(0, len(frame) - 1))
    frame[index] ^= 1 << data.draw(st.integers(0, 7))
    events = proto.parser().feed(bytes(frame))
    # The damaged frame never comes out as a valid packet with the same id and length but other data.
    for e in events:
        if isinstance(e, StatusPacket) and e.servo_id == servo_id and len(e.params) == len(payload):
            assert e.params == payload and e.error == 0


@HYPO
@given(st.binary(max_size=64))
def test_dynamixel_stuffing_round_trip(payload: bytes) -> None:
    stuffed = stuff(payload)
    assert unstuff(stuffed) == payload
    assert b'\xff\xff\xfd' not in stuffed.replace(b'\xff\xff\xfd\xfd', b'')


@HYPO
@given(
    st.sampled_from(['feetech', 'dynamixel']),
    st.sampled_from(['homing_offset', 'goal_position', 'present_position', 'min_position_limit', 'torque_enable']),
    st.integers(-(1 << 31), (1 << 32) - 1),
)
def test_control_table_round_trip_or_clear_error(protocol: str, name: str, value: int) -> None:
    table = CONTROL_TABLES[protocol]
    reg = table.register(name)
    try:
        raw = table.encode(reg, value)
    except ValueError as exc:
        assert 'does not fit' in str(exc)
        return
    assert len(raw) == reg.length and table.decode(reg, raw) == value
