"""Read rosbag2 bags (MCAP or sqlite3) for replay, evaluation and training data.

Normal bags are read with the ``rosbags`` library (any rosbag2 version, storage,
compression, split files). A bag that ``rosbags`` cannot open or finish reading
(recorder killed before it wrote the MCAP summary, a truncated copy, flipped bytes)
is read by a salvage scanner that walks the MCAP records from the start, keeps every
message whose record is intact, resynchronises on the next chunk after a damaged
one, and lists what it could not read in :attr:`BagReader.problems` -- so one bad
chunk costs that chunk, not the bag.

Messages decode with ``rclpy.serialization.deserialize_message`` when the type is
installed (rclpy's CDR can carry trailing alignment bytes that rosbags' strict
deserializer rejects, see DESIGN.md "Known pitfalls"); types not installed here
decode with rosbags from the definition stored in the bag.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos

from bimanual_vla.bags.message_types import UnknownMessageTypeError, message_class

log = logging.getLogger(__name__)

EPISODE_TOPIC_SUFFIX = '/record/episode'
"""std_msgs/String markers the recorder writes (under the rig namespace): a label starts an episode, '' ends it."""
EPISODES_CUSTOM_DATA_KEY = 'bimanual_vla.episodes'
"""metadata.yaml custom_data key holding the episodes as JSON."""

_MCAP_MAGIC = b'\x89MCAP0\r\n'
_MAX_TRAILING_PAD = 8  # CDR aligns to at most 8 bytes; rclpy/Fast DDS may append that much padding.


class BagError(RuntimeError):
    """A bag cannot be read as asked; the message names the bag and the problem."""


class MissingTopicError(BagError):
    """The bag lacks topics the caller needs (e.g. a camera)."""


class BagDecodeError(BagError):
    """One message could not be decoded (unknown type, or corrupt bytes)."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    type: str
    count: int
    offered_qos: tuple[Qos, ...] = ()
    type_hash: str = ''
    msgdef: str = ''


@dataclass(frozen=True)
class BagMessage:
    topic: str
    type: str
    timestamp_ns: int
    data: bytes


@dataclass(frozen=True)
class Episode:
    index: int
    label: str
    start_ns: int
    end_ns: int | None  # None: still open when the recording ended


@dataclass
class _Channel:
    id: int
    topic: str
    type: str
    encoding: str
    msgdef: str
    qos: tuple[Qos, ...]
    count: int = 0


@dataclass
class _Scan:
    """What the salvage scanner learnt in its first pass."""

    channels: dict[int, _Channel] = field(default_factory=dict)
    start_ns: int = 2**63 - 1
    end_ns: int = 0
    problems: list[str] = field(default_factory=list)


def _find_mcap_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise BagError(f'{path}: no such bag (neither a rosbag2 directory nor an .mcap file)')
    files = sorted(path.glob('*.mcap'))
    return files


class BagReader:
    """A rosbag2 bag opened for reading. Use as a context manager or call close()."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.problems: list[str] = []
        self._reader: Any = None  # rosbags Reader, when it could open the bag
        self._scan: _Scan | None = None
        self._mcap_files: list[Path] = []
        self._custom: dict[str, str] = {}
        self._open()
        self.topics: dict[str, TopicInfo] = self._topic_infos()
        self.episodes: list[Episode] = self._load_episodes()

    # ------------------------------------------------------------------ open

    def _open(self) -> None:
        from rosbags.rosbag2 import Reader, ReaderError

        if self.path.is_dir() and (self.path / 'metadata.yaml').is_file():
            try:
                reader = Reader(self.path)
                reader.open()
            except (ReaderError, OSError, ValueError, KeyError, struct.error) as exc:
                self.problems.append(f'rosbags could not open the bag ({exc}); salvaging what is readable')
            else:
                self._reader = reader
                self._custom = _custom_data(self.path / 'metadata.yaml')
                return
        elif self.path.is_dir():
            self.problems.append('metadata.yaml is missing (recording did not finish?); salvaging the .mcap files')
        self._mcap_files = _find_mcap_files(self.path)
        if not self._mcap_files:
            detail = '; '.join(self.problems)
            raise BagError(f'{self.path}: no readable bag here (no .mcap files{"; " + detail if detail else ""})')
        self._scan = _Scan()
        for file in self._mcap_files:
            _salvage_pass(file, self._scan, sink=None)
        self.problems.extend(self._scan.problems)
        if not self._scan.channels:
            raise BagError(f'{self.path}: nothing readable: ' + '; '.join(self.problems))
        for problem in self.problems:
            log.warning('%s: %s', self.path, problem)

    def _topic_infos(self) -> dict[str, TopicInfo]:
        infos: dict[str, TopicInfo] = {}
        if self._reader is not None:
            for conn in self._reader.connections:
                prev = infos.get(conn.topic)
                qos = tuple(getattr(conn.ext, 'offered_qos_profiles', ()) or ())
                count = conn.msgcount + (prev.count if prev else 0)
                infos[conn.topic] = TopicInfo(conn.topic, conn.msgtype, count, qos, conn.digest, conn.msgdef.data)
            return infos
        assert self._scan is not None
        for ch in self._scan.channels.values():
            prev = infos.get(ch.topic)
            count = ch.count + (prev.count if prev else 0)
            infos[ch.topic] = TopicInfo(ch.topic, ch.type, count, ch.qos, '', ch.msgdef)
        return infos

    def _load_episodes(self) -> list[Episode]:
        raw = self._custom.get(EPISODES_CUSTOM_DATA_KEY)
        if raw:
            try:
                return [Episode(**e) for e in json.loads(raw)]
            except (ValueError, TypeError) as exc:
                self.problems.append(f'custom_data {EPISODES_CUSTOM_DATA_KEY} is not valid ({exc}); using markers')
        marker_topics = [t for t in self.topics if t.endswith(EPISODE_TOPIC_SUFFIX)]
        if not marker_topics:
            return []
        markers = []
        for msg in self.messages(marker_topics):
            try:
                markers.append((msg.timestamp_ns, self.decode(msg).data))
            except BagDecodeError as exc:
                self.problems.append(str(exc))
        return episodes_from_markers(markers)

    # ------------------------------------------------------------ properties

    @property
    def start_ns(self) -> int:
        if self._reader is not None:
            return int(self._reader.start_time)
        assert self._scan is not None
        return self._scan.start_ns if self._scan.end_ns else 0

    @property
    def end_ns(self) -> int:
        """Timestamp of the last message (inclusive)."""
        if self._reader is not None:
            return int(self._reader.end_time) - 1 if self._reader.message_count else 0
        assert self._scan is not None
        return self._scan.end_ns

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) * 1e-9

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics.values())

    @property
    def custom_data(self) -> dict[str, str]:
        return dict(self._custom)

    # ------------------------------------------------------------- messages

    def require_topics(self, names: Iterable[str]) -> None:
        """Raise MissingTopicError naming every topic of `names` the bag lacks (or holds no message of)."""
        wanted = [_absolute(n) for n in names]
        missing = [n for n in wanted if n not in self.topics or self.topics[n].count == 0]
        if missing:
            have = ', '.join(sorted(self.topics)) or 'none'
            raise MissingTopicError(f'{self.path}: missing topic(s) {", ".join(missing)} (the bag has: {have})')

    def messages(
        self, topics: Iterable[str] | None = None, start_ns: int | None = None, stop_ns: int | None = None
    ) -> Iterator[BagMessage]:
        """Messages of `topics` (all if None) with start_ns <= t < stop_ns, in time order.

        Unknown topic names are ignored here (use require_topics to insist). If the bag turns
        out to be damaged part-way, the rest is read by the salvage scanner and the damage is
        added to `problems`.
        """
        wanted = None if topics is None else {_absolute(t) for t in topics}
        if self._reader is None:
            yield from self._salvage_messages(wanted, start_ns, stop_ns)
            return
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        last_ts: int | None = None
        seen_at_last: set[tuple[str, bytes]] = set()
        try:
            for conn, ts, data in self._reader.messages(connections=conns, start=start_ns, stop=stop_ns):
                data = bytes(data)
                if ts != last_ts:
                    last_ts, seen_at_last = ts, set()
                seen_at_last.add((conn.topic, data))
                yield BagMessage(conn.topic, conn.msgtype, ts, data)
        except Exception as exc:  # ReaderError, zstd/lz4 errors, struct.error: all mean a damaged file
            if not self._reader.path.is_dir():
                raise BagError(f'{self.path}: {exc}') from exc
            problem = f'damaged while reading ({exc}); continuing with the salvage scanner'
            self.problems.append(problem)
            log.warning('%s: %s', self.path, problem)
            resume = start_ns if last_ts is None else last_ts
            for msg in self._salvage_messages(wanted, resume, stop_ns):
                if msg.timestamp_ns == last_ts and (msg.topic, msg.data) in seen_at_last:
                    continue
                yield msg

    def _salvage_messages(
        self, wanted: set[str] | None, start_ns: int | None, stop_ns: int | None
    ) -> Iterator[BagMessage]:
        files = self._mcap_files or _find_mcap_files(self.path)
        scan = _Scan()
        lo = -1 if start_ns is None else start_ns
        hi = 2**64 if stop_ns is None else stop_ns
        for file in files:
            batch: list[BagMessage] = []

            def sink(channel: _Channel, ts: int, data: bytes, batch: list[BagMessage] = batch) -> None:
                if lo <= ts < hi and (wanted is None or channel.topic in wanted):
                    batch.append(BagMessage(channel.topic, channel.type, ts, data))

            for _ in _salvage_pass(file, scan, sink=sink, chunkwise=True):
                batch.sort(key=lambda m: m.timestamp_ns)
                yield from batch
                batch.clear()
        for problem in scan.problems:
            if problem not in self.problems:
                self.problems.append(problem)

    # --------------------------------------------------------------- decode

    def decode(self, message: BagMessage) -> Any:
        """The message as an rclpy object (or, for types not installed here, a rosbags dataclass)."""
        try:
            cls = message_class(message.type)
        except UnknownMessageTypeError:
            return self._decode_with_bag_definition(message)
        from rclpy.serialization import deserialize_message

        try:
            return deserialize_message(message.data, cls)
        except Exception as exc:  # rclpy raises bare RuntimeError/ValueError subclasses on bad CDR
            raise BagDecodeError(
                f'{self.path}: cannot decode {message.type} on {message.topic} at t={message.timestamp_ns} ns: {exc}'
            ) from exc

    def decoded(
        self, topics: Iterable[str] | None = None, start_ns: int | None = None, stop_ns: int | None = None
    ) -> Iterator[tuple[BagMessage, Any]]:
        for message in self.messages(topics, start_ns, stop_ns):
            yield message, self.decode(message)

    def _decode_with_bag_definition(self, message: BagMessage) -> Any:
        info = self.topics.get(message.topic)
        if info is None or not info.msgdef:
            raise BagDecodeError(
                f'{self.path}: unknown message type {message.type} on {message.topic}: not installed here '
                'and the bag stores no definition for it'
            )
        store = _bag_store(message.type, info.msgdef)
        return _deserialize_tolerant(store, message, self.path)

    # ------------------------------------------------------------- lifecycle

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bag(path: str | Path) -> BagReader:
    return BagReader(path)


def episodes_from_markers(markers: list[tuple[int, str]]) -> list[Episode]:
    """Episodes from (timestamp, label) markers: a label opens one (closing any open one), '' closes."""
    episodes: list[Episode] = []
    open_label: tuple[int, str] | None = None
    for ts, label in sorted(markers, key=lambda m: m[0]):
        if open_label is not None:
            episodes.append(Episode(len(episodes), open_label[1], open_label[0], ts))
            open_label = None
        if label:
            open_label = (ts, label)
    if open_label is not None:
        episodes.append(Episode(len(episodes), open_label[1], open_label[0], None))
    return episodes


def _custom_data(metadata_path: Path) -> dict[str, str]:
    import yaml

    try:
        info = yaml.safe_load(metadata_path.read_text(encoding='utf-8'))['rosbag2_bagfile_information']
        return {str(k): str(v) for k, v in (info.get('custom_data') or {}).items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return {}


def _absolute(topic: str) -> str:
    return topic if topic.startswith('/') else '/' + topic


_BAG_STORES: dict[tuple[str, str], Any] = {}


def _bag_store(type_name: str, msgdef: str) -> Any:
    key = (type_name, msgdef)
    if key not in _BAG_STORES:
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        store = get_typestore(Stores.EMPTY)
        is_idl = msgdef.startswith('=' * 80 + '\nIDL: ')
        store.register(get_types_from_idl(msgdef) if is_idl else get_types_from_msg(msgdef, type_name))
        _BAG_STORES[key] = store
    return _BAG_STORES[key]


def _deserialize_tolerant(store: Any, message: BagMessage, path: Path) -> Any:
    """rosbags deserialisation that accepts up to 8 trailing alignment bytes (rclpy writes them)."""
    raw = message.data
    where = f'{path}: cannot decode {message.type} on {message.topic} at t={message.timestamp_ns} ns'
    if len(raw) < 4 or raw[:2] not in (b'\x00\x00', b'\x00\x01'):
        raise BagDecodeError(f'{where}: invalid CDR encapsulation header')
    msgdef = store.get_msgdef(message.type)
    func = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
    try:
        obj, pos = func(raw[4:], 0, msgdef.cls, store)
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise BagDecodeError(f'{where}: {exc}') from exc
    if len(raw) - 4 - pos > _MAX_TRAILING_PAD:
        raise BagDecodeError(f'{where}: {len(raw) - 4 - pos} unexplained trailing bytes')
    return obj


# ------------------------------------------------------------ salvage scanner


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
    buf: Any, off: int, end: int, scan: _Scan, schemas: dict[int, tuple[str, str, str]], sink: Any
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
                scan.channels[cid] = _Channel(cid, topic, name, enc, data, qos)
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


def _salvage_pass(file: Path, scan: _Scan, sink: Any, chunkwise: bool = False) -> Iterator[None]:
    """Walk `file`'s MCAP records; yields after each chunk if `chunkwise` (else runs to the end).

    Every damaged region becomes one line in scan.problems naming the file and byte offset.
    """
    gen = _salvage_walk(file, scan, sink)
    if chunkwise:
        return gen
    for _ in gen:
        pass
    return iter(())


def _salvage_walk(file: Path, scan: _Scan, sink: Any) -> Iterator[None]:
    size = file.stat().st_size
    if size < len(_MCAP_MAGIC):
        scan.problems.append(f'{file.name}: empty or cut before the MCAP header ({size} bytes)')
        return
    with file.open('rb') as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:8] != _MCAP_MAGIC:
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
