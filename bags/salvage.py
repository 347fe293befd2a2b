"""Salvage scanner: read the intact records of an MCAP file that no MCAP reader will open.

A recorder killed before it wrote the summary, a truncated copy or flipped bytes leave a file
without (or with a wrong) index. This walks the records from the magic bytes on, keeps every
message whose record is intact, resynchronises on the next plausible chunk after a damaged region,
and writes one line per damaged region (file and byte offset) to :attr:`Scan.problems`, so one bad
chunk costs that chunk, not the file. `bags.read.BagReader` uses it when rosbags cannot read a bag.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos

MCAP_MAGIC = b'\x89MCAP0\r\n'


@dataclass
class Channel:
    id: int
    topic: str
    type: str
    encoding: str
    msgdef: str
    qos: tuple[Qos, ...]
    count: int = 0


@dataclass
class Scan:
    """What the salvage scanner learnt in its first pass."""

    channels: dict[int, Channel] = field(default_factory=dict)
    start_ns: int = 2**63 - 1
    end_ns: int = 0
    problems: list[str] = field(default_factory=list)


Sink = Callable[[Channel, int, bytes], None]
"""Called with (channel, timestamp ns, CDR bytes) for every intact message, in file order."""


class _Truncated(Exception):
    pass


def _u16(buf: Any, off: int) -> int:
    return struct.unpack_from('<H', buf, off)[0]


def _u32(buf: Any, off: int) -> int:
    return struct.unpack_from('<I', buf, off)[0]


def _u64(buf: Any, off: int) -> int:
    return struct.unpack_from('<Q', buf, off)[0]


def _str(buf: Any, off: int, end: int) -> tuple[str, int]:
    n = _u32(buf, off)
    if off + 4 + n > end:
        raise _Truncated('string runs past its record')
    return bytes(buf[off + 4 : off + 4 + n]).decode('utf-8'), off + 4 + n


def _parse_records(
    buf: Any, off: int, end: int, scan: Scan, schemas: dict[int, tuple[str, str, str]], sink: Sink | None
) -> int:
    """Parse schema/channel/message records in buf[off:end]; return the number of messages seen.

    Raises _Truncated (with the offset reached) at the first record that does not fit.
    """
    from rosbags.rosbag2.storage_mcap import get_qos

    count = 0
    while off < end:
        if off + 9 > end:
            raise _Truncated(f'record header cut at offset {off}')
        op, length = buf[off], _u64(buf, off + 1)
        body, nxt = off + 9, off + 9 + length
        if nxt > end:
            raise _Truncated(f'record (opcode 0x{op:02x}) at offset {off} claims {length} bytes past the end')
        if op == 0x03:
            sid = _u16(buf, body)
            name, p = _str(buf, body + 2, nxt)
            enc, p = _str(buf, p, nxt)
            data, _ = _str(buf, p, nxt)
            schemas[sid] = (name, enc, data)
        elif op == 0x04:
            cid, sid = _u16(buf, body), _u16(buf, body + 2)
            topic, p = _str(buf, body + 4, nxt)
            enc, p = _str(buf, p, nxt)
            mlen = _u32(buf, p)
            meta, q = {}, p + 4
            while q < p + 4 + mlen:
                k, q = _str(buf, q, nxt)
                v, q = _str(buf, q, nxt)
                meta[k] = v
            name, _, data = schemas.get(sid, ('', '', ''))
            qos = tuple(get_qos(_meta_bytes(meta))) if 'offered_qos_profiles' in meta else ()
            if cid not in scan.channels:
                scan.channels[cid] = Channel(cid, topic, name, enc, data, qos)
        elif op == 0x05:
            if length < 22:
                raise _Truncated(f'message record at offset {off} is too short ({length} bytes)')
            cid, ts = _u16(buf, body), _u64(buf, body + 6)
            channel = scan.channels.get(cid)
            if channel is None:
                scan.problems.append(f'message at offset {off} on unknown channel {cid} skipped')
            else:
                channel.count += 1
                scan.start_ns = min(scan.start_ns, ts)
                scan.end_ns = max(scan.end_ns, ts)
                count += 1
                if sink is not None:
                    sink(channel, ts, bytes(buf[body + 22 : nxt]))
        off = nxt
    return count


def _meta_bytes(meta: dict[str, str]) -> bytes:
    out = b''
    for k, v in meta.items():
        for s in (k, v):
            b = s.encode()
            out += struct.pack('<I', len(b)) + b
    return out


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == '':
        return data
    if compression == 'zstd':
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]
        return zstd.decompress(data)
    if compression == 'lz4':
        from lz4.frame import decompress  # type: ignore[import-untyped]

        return decompress(data)
    raise _Truncated(f'unsupported chunk compression {compression!r}')


def _plausible_chunk(buf: Any, off: int, size: int) -> bool:
    """Whether a chunk record header starts at `off` (used to resynchronise after damage)."""
    if off + 9 + 40 > size or buf[off] != 0x06:
        return False
    length = _u64(buf, off + 1)
    body = off + 9
    clen = _u32(buf, body + 28)
    if clen > 8 or off + 9 + length > size:
        return False
    try:
        comp = bytes(buf[body + 32 : body + 32 + clen]).decode('ascii')
    except UnicodeDecodeError:
        return False
    if comp not in ('', 'zstd', 'lz4'):
        return False
    records_len = _u64(buf, body + 32 + clen)
    return length == 28 + 4 + clen + 8 + records_len


def salvage_pass(file: Path, scan: Scan, sink: Sink | None, chunkwise: bool = False) -> Iterator[None]:
    """Walk `file`'s MCAP records; yields after each chunk if `chunkwise` (else runs to the end).

    Every damaged region becomes one line in scan.problems naming the file and byte offset.
    """
    gen = _salvage_walk(file, scan, sink)
    if chunkwise:
        return gen
    for _ in gen:
        pass
    return iter(())


def _salvage_walk(file: Path, scan: Scan, sink: Sink | None) -> Iterator[None]:
    size = file.stat().st_size
    if size < len(MCAP_MAGIC):
        scan.problems.append(f'{file.name}: empty or cut before the MCAP header ({size} bytes)')
        return
    with file.open('rb') as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:8] != MCAP_MAGIC:
            scan.problems.append(f'{file.name}: not an MCAP file (bad magic)')
            return
        schemas: dict[int, tuple[str, str, str]] = {}
        off = 8
        saw_end = False
        while off < size:
            if off + 9 > size:
                scan.problems.append(f'{file.name}: file cut at byte {size} (inside a record header at {off})')
                break
            op, length = buf[off], _u64(buf, off + 1)
            body, nxt = off + 9, off + 9 + length
            try:
                if nxt > size:
                    raise _Truncated(f'record (opcode 0x{op:02x}) at byte {off} runs past the end of the file')
                if op == 0x06:
                    uncompressed = _u64(buf, body + 16)
                    crc = _u32(buf, body + 24)
                    comp, p = _str(buf, body + 28, nxt)
                    rlen = _u64(buf, p)
                    if p + 8 + rlen > nxt:
                        raise _Truncated(f'chunk at byte {off}: payload runs past its record')
                    data = None
                    try:
                        data = _decompress(bytes(buf[p + 8 : p + 8 + rlen]), comp, uncompressed)
                    except Exception as exc:  # the framing is intact: lose this chunk, go on with the next
                        scan.problems.append(f'{file.name}: chunk at byte {off} does not decompress ({exc}); skipped')
                    if data is not None and crc and zlib.crc32(data) != crc:
                        scan.problems.append(f'{file.name}: chunk at byte {off} fails its CRC check; skipped')
                        data = None
                    if data is not None:
                        try:
                            _parse_records(data, 0, len(data), scan, schemas, sink)
                        except (_Truncated, struct.error, UnicodeDecodeError) as exc:
                            scan.problems.append(
                                f'{file.name}: chunk at byte {off} damaged ({exc}); rest of it skipped'
                            )
                    yield
                elif op in (0x03, 0x04, 0x05):
                    _parse_records(buf, off, nxt, scan, schemas, sink)
                    if op == 0x05:
                        yield
                elif op in (0x0F, 0x02):  # data end / footer: the summary section follows
                    saw_end = True
                    break
                off = nxt
            except (_Truncated, struct.error, UnicodeDecodeError) as exc:
                resync = off + 1
                while resync < size and not _plausible_chunk(buf, resync, size):
                    resync = buf.find(b'\x06', resync + 1)
                    if resync < 0:
                        resync = size
                if resync >= size:
                    scan.problems.append(f'{file.name}: {exc}; nothing readable after byte {off}')
                    break
                scan.problems.append(f'{file.name}: {exc}; skipped bytes {off}..{resync}')
                off = resync
        if not saw_end and not any(file.name in p for p in scan.problems):
            scan.problems.append(f'{file.name}: no MCAP summary/footer (recording was not closed cleanly)')
