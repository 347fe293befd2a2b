"""Export bags to a LeRobot dataset, format v3.0, for fine-tuning with LeRobot or openpi.

Layout written (one file of each kind; LeRobot reads them as chunk 0, file 0)::

    meta/info.json                         codebase_version "v3.0", fps, features, path templates
    meta/stats.json                        per-feature min/max/mean/std/count + quantiles q01..q99
    meta/tasks.parquet                     task text (pandas index "task") -> task_index
    meta/subtasks.parquet                  subtask text -> subtask_index (our extra feature)
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, frame range,
                                               data/video file and time range, stats/<feature>/<stat>
    data/chunk-000/file-000.parquet        one row per frame (one row group per episode):
                                           observation.state, action, timestamp, frame_index,
                                           episode_index, index, task_index, subtask_index,
                                           language_persistent, language_events
    videos/observation.images.<cam>/chunk-000/file-000.mp4   every episode back to back

Frames are the dataset samples (:mod:`bimanual_vla.learning.dataset`) at ``fps`` with chunk size 1,
on each bag's own time base (``DatasetOptions.time_base``, default from the bag: a simulated
recording is sampled on sim time, so an episode of D seconds has D x fps frames): ``action`` is the
command in force at the frame (LeRobot builds chunks itself with ``delta_timestamps``). LeRobot
needs frames evenly spaced at ``fps`` within an episode, so where the dataset skips samples (a stale
camera mid-episode) the episode is split there, and the split is reported.

What LeRobot's own tools need, and where it comes from (huggingface/lerobot 7427f318, v0.6.2; see
docs/lerobot.md): videos encoded and described as LeRobot encodes them
(:mod:`bimanual_vla.learning.lerobot_video`: AV1 by default, a codec ``delete_episodes`` and
``split_dataset`` accept); statistics per episode and for the dataset as LeRobot's compute_stats
computes them, image quantiles included (:mod:`bimanual_vla.learning.lerobot_stats`); subtasks
both as our ``subtask_index`` and as current LeRobot's language columns: ``language_persistent``
holds on every frame the episode's rows ``{role: assistant, content: <subtask>, style: subtask,
timestamp: <first frame of it>, camera: null, tool_calls: null}`` (LeRobot resolves the subtask at
t as the newest row at or before t), ``language_events`` is empty, both declared in info.json as
``dtype: language`` (``src/lerobot/datasets/language.py``, the annotation pipeline's writer).
One data/video file per dataset: fine to a few hours of data; LeRobot's 100 MB / 500 MB per-file
splitting is not implemented. fps must be a whole number (LeRobot stores it as one).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bimanual_vla.learning import lerobot_stats
from bimanual_vla.learning.dataset import BagDataset, DatasetOptions
from bimanual_vla.learning.lerobot_video import VideoWriter, encoder_settings, video_info

CODEBASE_VERSION = 'v3.0'
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
VIDEO_PATH = 'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4'
EPISODES_PATH = 'meta/episodes/chunk-000/file-000.parquet'
LANGUAGE_PERSISTENT, LANGUAGE_EVENTS = 'language_persistent', 'language_events'
LANGUAGE_FEATURE = {'dtype': 'language', 'shape': [1], 'names': None}  # language.language_feature_info()


class ExportError(RuntimeError):
    """The export cannot be written as asked (the output exists, frame sizes change, ...)."""


def camera_key(camera: str) -> str:
    return f'observation.images.{camera}'


def subtask_row(text: str, timestamp: float) -> dict[str, Any]:
    """A ``language_persistent`` row of style subtask, keys in LeRobot's PERSISTENT_ROW_FIELDS order."""
    return {'role': 'assistant', 'content': text, 'style': 'subtask', 'timestamp': float(timestamp),
            'camera': None, 'tool_calls': None}  # fmt: skip


def _pandas_index_metadata(index_name: str, value_name: str) -> bytes:
    """pandas metadata so ``pd.read_parquet`` restores `index_name` as the index (as LeRobot writes it)."""
    columns = [
        {'name': value_name, 'field_name': value_name, 'pandas_type': 'int64', 'numpy_type': 'int64', 'metadata': None},
        {'name': index_name, 'field_name': index_name, 'pandas_type': 'unicode', 'numpy_type': 'object',
         'metadata': None},
    ]  # fmt: skip
    meta = {
        'index_columns': [index_name],
        'column_indexes': [{'name': None, 'field_name': None, 'pandas_type': 'unicode', 'numpy_type': 'object',
                            'metadata': {'encoding': 'UTF-8'}}],
        'columns': columns,
        'creator': {'library': 'pyarrow', 'version': ''},
        'pandas_version': '2.2.0',
    }  # fmt: skip
    return json.dumps(meta).encode()


def _write_lookup(path: Path, index_name: str, value_name: str, texts: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({value_name: pa.array(range(len(texts)), pa.int64()), index_name: pa.array(texts, pa.string())})
    table = table.replace_schema_metadata({b'pandas': _pandas_index_metadata(index_name, value_name)})
    pq.write_table(table, path)


def export_lerobot(
    bags: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    fps: float = 50,
    options: DatasetOptions | None = None,
    robot_type: str | None = None,
    progress: bool = False,
    vcodec: str = 'libsvtav1',
) -> dict[str, Any]:
    """Write the LeRobot v3.0 dataset of `bags` to `out`; return a summary (frames, episodes, splits)."""
    if not (math.isfinite(fps) and fps > 0 and float(fps).is_integer()):
        raise ValueError(f'fps must be a whole number > 0 (LeRobot stores fps as an integer), got {fps}')
    fps = int(fps)
    settings = encoder_settings(vcodec)
    try:
        import av  # noqa: F401
    except ImportError:
        raise ExportError('export-lerobot encodes its videos with PyAV: pip install av') from None
    out = Path(out).expanduser()
    if out.exists():
        raise ExportError(f'{out}: already exists (the export never overwrites)')
    opts = options or DatasetOptions()
    opts.chunk_size, opts.rate_hz, opts.sample_hz = 1, fps, fps
    dataset = BagDataset(bags, opts)
    tmp = out.with_name(out.name + '.partial')
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        summary = _write(dataset, tmp, fps, robot_type, progress, settings)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        dataset.close()
    summary['out'] = str(out)
    return summary


_COLUMNS = ('observation.state', 'action', 'timestamp', 'frame_index', 'episode_index', 'index', 'task_index',
            'subtask_index', LANGUAGE_PERSISTENT, LANGUAGE_EVENTS)  # fmt: skip
"""The data parquet's columns, in order."""
_VECTOR_FEATURES = ('observation.state', 'action')
_SCALAR_FEATURES = {'timestamp': np.float32, 'frame_index': np.int64, 'episode_index': np.int64, 'index': np.int64,
                    'task_index': np.int64, 'subtask_index': np.int64}  # fmt: skip
"""Per-frame scalars and their stored dtype (LeRobot computes their statistics in it)."""


def plan_episodes(dataset: BagDataset, fps: int) -> list[list[int]]:
    """Per dataset episode, the lengths of the exported episodes it becomes (split where samples skip)."""
    period_ns = 1e9 / fps
    plan = []
    for ep in dataset.episodes:
        times = np.asarray(ep.samples, dtype=np.int64)
        if not len(times):
            plan.append([])
            continue
        cuts = np.flatnonzero(np.diff(times) > 1.5 * period_ns) + 1  # a gap: LeRobot needs even spacing
        bounds = [0, *cuts.tolist(), len(times)]
        plan.append([b - a for a, b in zip(bounds, bounds[1:], strict=False)])
    return plan


@dataclass
class _Frames:
    """Everything the frame pass gathers: the data columns, episodes, lookups, video writers."""

    columns: dict[str, list] = field(default_factory=lambda: {k: [] for k in _COLUMNS})
    episodes: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)
    subtasks: dict[str, int] = field(default_factory=dict)
    videos: dict[str, VideoWriter] = field(default_factory=dict)
    splits: int = 0

    def open_episode(self, s: dict[str, Any], length: int, cameras: Sequence[str]) -> dict[str, Any]:
        start = len(self.columns['index'])
        return {'episode_index': len(self.episodes), 'tasks': [], 'length': 0, 'planned': length,
                'dataset_from_index': start, 'source': f'{s["bag"]}#{s["episode_label"]}', 'stats': {},
                'subtask_rows': [], 'last_subtask': None, 'stat_frames': set(lerobot_stats.sample_indices(length)),
                'image_stats': {c: lerobot_stats.ImageStats() for c in cameras}}  # fmt: skip

    def close_episode(self, ep: dict[str, Any]) -> None:
        """Finish `ep`: its language column and its statistics (LeRobot's compute_episode_stats)."""
        ep['dataset_to_index'] = ep['dataset_from_index'] + ep['length']
        lo, hi = ep['dataset_from_index'], ep['dataset_to_index']
        self.columns[LANGUAGE_PERSISTENT].extend([ep['subtask_rows']] * ep['length'])
        self.columns[LANGUAGE_EVENTS].extend([[] for _ in range(ep['length'])])
        for key in _VECTOR_FEATURES:
            ep['stats'][key] = lerobot_stats.feature_stats(np.asarray(self.columns[key][lo:hi], dtype=np.float32))
        for key, dtype in _SCALAR_FEATURES.items():
            ep['stats'][key] = lerobot_stats.feature_stats(np.asarray(self.columns[key][lo:hi], dtype=dtype))
        for cam, acc in ep.pop('image_stats').items():
            ep['stats'][camera_key(cam)] = acc.result()
        self.episodes.append(ep)

    def add(self, s: dict[str, Any], current: dict[str, Any], out: Path, fps: int, settings: dict[str, Any]) -> None:
        """Append one sample `s` to the columns, the episode `current` and the videos."""
        columns = self.columns
        task = self.tasks.setdefault(s['task'], len(self.tasks))
        if s['task'] not in current['tasks']:
            current['tasks'].append(s['task'])
        sub = self.subtasks.setdefault(s['subtask'], len(self.subtasks))
        k = current['length']
        if s['subtask'] != current['last_subtask'] and s['subtask']:
            current['subtask_rows'].append(subtask_row(s['subtask'], np.float32(k / fps)))
        current['last_subtask'] = s['subtask']
        columns['observation.state'].append(s['state'].tolist())
        columns['action'].append(s['actions'][0].tolist())
        columns['timestamp'].append(k / fps)
        columns['frame_index'].append(k)
        columns['episode_index'].append(current['episode_index'])
        columns['index'].append(len(columns['index']))
        columns['task_index'].append(task)
        columns['subtask_index'].append(sub)
        for cam, img in s['images'].items():
            if cam not in self.videos:
                path = out / VIDEO_PATH.format(video_key=camera_key(cam), chunk_index=0, file_index=0)
                self.videos[cam] = VideoWriter(path, fps, (img.shape[1], img.shape[0]), settings)
            writer = self.videos[cam]
            if (img.shape[1], img.shape[0]) != writer.size:
                import cv2

                img = cv2.resize(img, writer.size, interpolation=cv2.INTER_AREA)
            writer.write(img)
            if k in current['stat_frames']:  # LeRobot's image statistics sample these frames
                current['image_stats'][cam].add(img)
        current['length'] += 1


def _write(dataset: BagDataset, out: Path, fps: int, robot_type: str | None, progress: bool, settings: dict) -> dict:
    frames = _read_frames(dataset, out, fps, progress, settings)
    total = len(frames.columns['index'])
    if total == 0:
        raise ExportError('no frames to export')
    _write_data(frames, out / DATA_PATH.format(chunk_index=0, file_index=0), len(dataset.joint_names))
    _write_episodes(frames, dataset.cameras, out / EPISODES_PATH, fps)
    _write_lookup(out / 'meta/tasks.parquet', 'task', 'task_index', list(frames.tasks))
    _write_lookup(out / 'meta/subtasks.parquet', 'subtask', 'subtask_index', list(frames.subtasks))
    stats = lerobot_stats.aggregate_stats([e['stats'] for e in frames.episodes])
    (out / 'meta/stats.json').write_text(json.dumps(lerobot_stats.to_json(stats), indent=4))
    info = _info(frames, dataset, fps, robot_type)
    (out / 'meta/info.json').write_text(json.dumps(info, indent=4))
    codec = info['features'][camera_key(dataset.cameras[0])]['info']['video.codec'] if dataset.cameras else None
    return {
        'episodes': len(frames.episodes),
        'frames': total,
        'tasks': len(frames.tasks),
        'subtasks': len(frames.subtasks),
        'episodes_split_at_gaps': frames.splits,
        'skipped_samples': dict(sorted((k, v) for k, v in dataset.skipped.items() if v)),
        'time_bases': [tb.line(p) for tb, p in zip(dataset.time_bases, dataset.paths, strict=True)],
        'video_codec': f'{codec} ({settings["vcodec"]})',
    }


def _read_frames(dataset: BagDataset, out: Path, fps: int, progress: bool, settings: dict) -> _Frames:
    """One pass over the dataset's samples: columns and episodes in memory, videos written to `out`."""
    frames = _Frames()
    plan = plan_episodes(dataset, fps)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), unit='frame', desc='export')
    try:
        for e, lengths in enumerate(plan):
            frames.splits += max(0, len(lengths) - 1)
            pending = list(lengths)
            current: dict[str, Any] | None = None
            for s in dataset.iter_episode(e):
                if current is None:
                    current = frames.open_episode(s, pending.pop(0), dataset.cameras)
                frames.add(s, current, out, fps, settings)
                if current['length'] == current['planned']:
                    frames.close_episode(current)
                    current = None
                if bar is not None:
                    bar.update(1)
    finally:
        for writer in frames.videos.values():
            writer.close()
        if bar is not None:
            bar.close()
    return frames


def _write_data(frames: _Frames, data_path: Path, n_joints: int) -> None:
    """The frames' parquet, one row group per episode (as LeRobot's writers emit it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = frames.columns
    data_path.parent.mkdir(parents=True, exist_ok=True)
    vec = pa.list_(pa.float32(), n_joints)
    table = pa.table({
        'observation.state': pa.array(columns['observation.state'], vec),
        'action': pa.array(columns['action'], vec),
        'timestamp': pa.array(columns['timestamp'], pa.float32()),
        'frame_index': pa.array(columns['frame_index'], pa.int64()),
        'episode_index': pa.array(columns['episode_index'], pa.int64()),
        'index': pa.array(columns['index'], pa.int64()),
        'task_index': pa.array(columns['task_index'], pa.int64()),
        'subtask_index': pa.array(columns['subtask_index'], pa.int64()),
        # inferred, as LeRobot's LanguageColumnsWriter does (it casts them to its features on load)
        LANGUAGE_PERSISTENT: pa.array(columns[LANGUAGE_PERSISTENT]),
        LANGUAGE_EVENTS: pa.array(columns[LANGUAGE_EVENTS]),
    })  # fmt: skip
    with pq.ParquetWriter(str(data_path), table.schema, compression='snappy') as writer:
        for ep in frames.episodes:
            writer.write_table(table.slice(ep['dataset_from_index'], ep['length']))


def _write_episodes(frames: _Frames, cameras: Sequence[str], ep_path: Path, fps: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    episodes = frames.episodes
    ep_cols: dict[str, list] = {
        'episode_index': [e['episode_index'] for e in episodes],
        'tasks': [e['tasks'] for e in episodes],
        'length': [e['length'] for e in episodes],
        'data/chunk_index': [0] * len(episodes),
        'data/file_index': [0] * len(episodes),
        'dataset_from_index': [e['dataset_from_index'] for e in episodes],
        'dataset_to_index': [e['dataset_to_index'] for e in episodes],
    }
    for cam in cameras:
        key = camera_key(cam)
        ep_cols[f'videos/{key}/chunk_index'] = [0] * len(episodes)
        ep_cols[f'videos/{key}/file_index'] = [0] * len(episodes)
        ep_cols[f'videos/{key}/from_timestamp'] = [e['dataset_from_index'] / fps for e in episodes]
        ep_cols[f'videos/{key}/to_timestamp'] = [e['dataset_to_index'] / fps for e in episodes]
    ep_cols['meta/episodes/chunk_index'] = [0] * len(episodes)
    ep_cols['meta/episodes/file_index'] = [0] * len(episodes)
    for key in episodes[0]['stats']:
        for stat in lerobot_stats.STAT_KEYS:
            ep_cols[f'stats/{key}/{stat}'] = [np.asarray(e['stats'][key][stat]).tolist() for e in episodes]
    ep_cols['bimanual_vla/source'] = [e['source'] for e in episodes]
    ep_types = {'episode_index': pa.int64(), 'tasks': pa.list_(pa.string()), 'length': pa.int64()}
    ep_table = pa.table({
        k: pa.array(v, ep_types.get(k, pa.list_(pa.int64()) if k.endswith('/count') else None))
        for k, v in ep_cols.items()
    })  # fmt: skip
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(ep_table, ep_path)


def _info(frames: _Frames, dataset: BagDataset, fps: int, robot_type: str | None) -> dict[str, Any]:
    """meta/info.json: the features (videos, joint vectors, indices, language) and the dataset's totals."""
    n_joints = len(dataset.joint_names)
    features: dict[str, Any] = {}
    for cam in dataset.cameras:
        writer = frames.videos[cam]
        w, h = writer.size
        features[camera_key(cam)] = {
            'dtype': 'video',
            'shape': [h, w, 3],
            'names': ['height', 'width', 'channels'],
            'info': video_info(writer.path, writer.settings),
        }
    for key in _VECTOR_FEATURES:
        features[key] = {'dtype': 'float32', 'shape': [n_joints], 'names': list(dataset.joint_names)}
    features['timestamp'] = {'dtype': 'float32', 'shape': [1], 'names': None}
    for key in ('frame_index', 'episode_index', 'index', 'task_index', 'subtask_index'):
        features[key] = {'dtype': 'int64', 'shape': [1], 'names': None}
    features[LANGUAGE_PERSISTENT] = dict(LANGUAGE_FEATURE)
    features[LANGUAGE_EVENTS] = dict(LANGUAGE_FEATURE)
    rig = dataset.rig
    return {
        'codebase_version': CODEBASE_VERSION,
        'robot_type': robot_type or (rig.name if rig is not None else 'bimanual'),
        'total_episodes': len(frames.episodes),
        'total_frames': len(frames.columns['index']),
        'total_tasks': len(frames.tasks),
        'chunks_size': 1000,
        'data_files_size_in_mb': 100,
        'video_files_size_in_mb': 500,
        'fps': fps,
        'splits': {'train': f'0:{len(frames.episodes)}'},
        'data_path': DATA_PATH,
        'video_path': VIDEO_PATH,
        'features': features,
    }
