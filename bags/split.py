"""A rosbag2 MCAP writer that splits a long recording into files, as ``ros2 bag record --max-bag-size``.

An eight-hour session of three cameras is hundreds of gigabytes. In one file, a crash or a full
disk near the end costs the index of all of it, and no tool can hand a part of it to a colleague.
Split, each file is closed (summary and index written) when it reaches `max_bytes` of message
data or `max_duration_s` of recording, and the bag's metadata.yaml is rewritten to list every
closed file, as rosbag2 lays out a split bag: ``OUT/OUT_0.mcap``, ``OUT/OUT_1.mcap``, ...
``ros2 bag``, rosbags and our BagReader read the directory as one bag.

The file being written lives in a subdirectory of its own (``OUT/OUT_<k>/OUT_<k>.mcap``, rosbags
writes one bag per directory) and is moved next to the others when closed. If the recorder dies,
the bag holds every closed file, and the open one is a bag of its own that BagReader salvages.

Without limits this is rosbags' Writer on ``OUT`` itself (``OUT/OUT.mcap``), unchanged.
"""

from __future__ import annotations

import shutil
from io import StringIO
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from ruamel.yaml import YAML


class SplitBagWriter:
    """Writes raw CDR messages to a rosbag2 MCAP bag at `path`, one file per `max_bytes`/`max_duration_s`."""

    def __init__(
        self,
        path: Path,
        *,
        compress: bool = False,
        max_bytes: int | None = None,
        max_duration_s: float | None = None,
        split_on_request: bool = False,
    ) -> None:
        for name, value in (('max_bytes', max_bytes), ('max_duration_s', max_duration_s)):
            if value is not None and not value > 0:
                raise ValueError(f'{name} must be > 0 (or None for no limit), got {value}')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path} exists already; a bag is only ever written to a new directory')
        self.compress = compress
        self.max_bytes = max_bytes
        self.max_duration_ns = None if max_duration_s is None else int(max_duration_s * 1e9)
        self.splitting = max_bytes is not None or max_duration_s is not None or split_on_request
        self.custom_data: dict[str, str] = {}
        self.closed_files: list[dict[str, Any]] = []  # metadata of each closed split, in order
        self._topics: list[tuple[str, str, str | None, str | None, list[Any]]] = []
        self._writer: Writer | None = None
        self._connections: dict[str, Any] = {}
        self._split_index = 0
        self._split_bytes = 0
        self._split_start_ns: int | None = None
        if self.splitting:
            self.path.mkdir(parents=True)
        self._open_split()

    @property
    def files(self) -> list[str]:
        """Names of the closed files, relative to the bag directory."""
        return [f['relative_file_paths'][0] for f in self.closed_files]

    def _split_dir(self) -> Path:
        return self.path / f'{self.path.name}_{self._split_index}' if self.splitting else self.path

    def _open_split(self) -> None:
        writer = Writer(self._split_dir(), version=9, storage_plugin=StoragePlugin.MCAP)
        if self.compress:
            writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        writer.open()
        self._writer = writer
        self._connections = {}
        for topic in self._topics:
            self._add(*topic)
        self._split_bytes = 0
        self._split_start_ns = None

    def _add(self, topic: str, type_name: str, msgdef: str | None, rihs01: str | None, offered: list[Any]) -> None:
        assert self._writer is not None
        self._connections[topic] = self._writer.add_connection(
            topic, type_name, msgdef=msgdef, rihs01=rihs01, offered_qos_profiles=offered
        )

    def add_connection(
        self, topic: str, type_name: str, *, msgdef: str | None, rihs01: str | None, offered: list[Any]
    ) -> None:
        """Declare a topic; every later file declares it again, so each file reads on its own."""
        self._topics.append((topic, type_name, msgdef, rihs01, list(offered)))
        self._add(*self._topics[-1])

    def set_custom_data(self, key: str, value: str) -> None:
        self.custom_data[key] = value

    def write(self, topic: str, stamp_ns: int, data: bytes) -> None:
        """Write one message; close this file first if it is full (size or duration)."""
        if self.splitting and self._split_start_ns is not None and self._full(stamp_ns):
            self._close_split()
            self._split_index += 1
            self._open_split()
        assert self._writer is not None
        self._writer.write(self._connections[topic], stamp_ns, data)
        self._split_bytes += len(data)
        if self._split_start_ns is None:
            self._split_start_ns = stamp_ns

    def split(self) -> None:
        """Close the open file now (if it holds a message) and start the next: what is written so far is
        listed in metadata.yaml and safe if the process dies (``record-episodes`` splits at every episode end)."""
        if self.splitting and self._split_start_ns is not None:
            self._close_split()
            self._split_index += 1
            self._open_split()

    def _full(self, stamp_ns: int) -> bool:
        if self.max_bytes is not None and self._split_bytes >= self.max_bytes:
            return True
        assert self._split_start_ns is not None
        return self.max_duration_ns is not None and stamp_ns - self._split_start_ns >= self.max_duration_ns

    def _close_split(self) -> None:
        """Finish the open file, move it next to the others, and list it in the bag's metadata.yaml."""
        writer, self._writer = self._writer, None
        assert writer is not None
        for key, value in self.custom_data.items():
            writer.set_custom_data(key, value)
        writer.close()
        if not self.splitting:
            return
        split_dir = writer.path
        info = YAML(typ='safe').load((split_dir / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
        (mcap,) = info['relative_file_paths']
        (split_dir / mcap).replace(self.path / mcap)
        shutil.rmtree(split_dir)
        self.closed_files.append(info)
        self._write_metadata()

    def _write_metadata(self) -> None:
        """metadata.yaml for the closed files: counts summed per topic, times spanning them all."""
        files = self.closed_files
        start = min(f['starting_time']['nanoseconds_since_epoch'] for f in files)
        end = max(f['starting_time']['nanoseconds_since_epoch'] + f['duration']['nanoseconds'] for f in files)
        topics: dict[str, dict[str, Any]] = {}
        for f in files:
            for entry in f['topics_with_message_count']:
                name = entry['topic_metadata']['name']
                if name in topics:
                    topics[name]['message_count'] += entry['message_count']
                else:
                    topics[name] = {'topic_metadata': entry['topic_metadata'], 'message_count': entry['message_count']}
        info = {
            **files[0],
            'relative_file_paths': [f['relative_file_paths'][0] for f in files],
            'duration': {'nanoseconds': end - start},
            'starting_time': {'nanoseconds_since_epoch': start},
            'message_count': sum(f['message_count'] for f in files),
            'topics_with_message_count': list(topics.values()),
            'files': [f['files'][0] for f in files],
            'custom_data': dict(self.custom_data) or None,
        }
        yaml = YAML(typ='safe')
        yaml.default_flow_style = False
        text = StringIO()
        yaml.dump({'rosbag2_bagfile_information': info}, text)
        tmp = self.path / 'metadata.yaml.tmp'
        tmp.write_text(text.getvalue())
        tmp.replace(self.path / 'metadata.yaml')

    def close(self) -> None:
        """Finish the last file and the bag's metadata.yaml (custom data included)."""
        if self._writer is not None:
            self._close_split()
