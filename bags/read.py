"""Read rosbag2 bags (MCAP or sqlite3) for replay, evaluation and training data.

Normal bags are read with the ``rosbags`` library (any rosbag2 version, storage,
compression, split files). A bag that ``rosbags`` cannot open or finish reading
(recorder killed before it wrote the MCAP summary, a truncated copy, flipped bytes)
is read by the salvage scanner (:mod:`bimanual_vla.bags.salvage`), which keeps every
message whose record is intact; what it could not read is listed in
:attr:`BagReader.problems` -- so one bad chunk costs that chunk, not the bag.

Messages decode with ``rclpy.serialization.deserialize_message`` when the type is
installed (rclpy's CDR can carry trailing alignment bytes that rosbags' strict
deserializer rejects); types not installed here
decode with rosbags from the definition stored in the bag.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.interfaces import Qos

from bimanual_vla.bags.message_types import UnknownMessageTypeError, message_class
from bimanual_vla.bags.salvage import Channel, Scan, salvage_pass

log = logging.getLogger(__name__)

EPISODE_TOPIC_SUFFIX = '/record/episode'
"""std_msgs/String markers the recorder writes (under the rig namespace): a label starts an episode, '' ends it."""
EPISODES_CUSTOM_DATA_KEY = 'bimanual_vla.episodes'
"""metadata.yaml custom_data key holding the episodes as JSON."""

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
        self._scan: Scan | None = None
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
        self._scan = Scan()
        for file in self._mcap_files:
            salvage_pass(file, self._scan, sink=None)
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
        scan = Scan()
        lo = -1 if start_ns is None else start_ns
        hi = 2**64 if stop_ns is None else stop_ns
        for file in files:
            batch: list[BagMessage] = []

            def sink(channel: Channel, ts: int, data: bytes, batch: list[BagMessage] = batch) -> None:
                if lo <= ts < hi and (wanted is None or channel.topic in wanted):
                    batch.append(BagMessage(channel.topic, channel.type, ts, data))

            for _ in salvage_pass(file, scan, sink=sink, chunkwise=True):
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
