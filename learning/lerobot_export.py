"""Export bags to a LeRobot dataset, format v3.0, for fine-tuning with LeRobot or openpi.

Layout written (one file of each kind; LeRobot reads them as chunk 0, file 0)::

    meta/info.json                         codebase_version "v3.0", fps, features, path templates
    meta/stats.json                        per-feature min/max/mean/std/count + quantiles
    meta/tasks.parquet                     task text (pandas index "task") -> task_index
    meta/subtasks.parquet                  subtask text -> subtask_index (our extra feature)
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, frame range,
                                               data/video file and time range, per-episode stats
    data/chunk-000/file-000.parquet        one row per frame: observation.state, action,
                                           timestamp, frame_index, episode_index, index,
                                           task_index, subtask_index
    videos/observation.images.<cam>/chunk-000/file-000.mp4   every episode back to back

Frames are the dataset samples (:mod:`bimanual_vla.learning.dataset`) at ``fps`` with chunk size 1:
``action`` is the command in force at the frame (LeRobot builds chunks itself with
``delta_timestamps``). LeRobot needs frames evenly spaced at ``fps`` within an episode, so where
the dataset skips samples (a stale camera mid-episode) the episode is split there, and the
split is reported. Videos are encoded with OpenCV's FFmpeg backend as MPEG-4 Part 2 (``mp4v``),
the only mp4 encoder the opencv-python wheels ship; LeRobot's own recorder writes AV1 (or
h264), which is smaller for the same quality. LeRobot decodes mpeg4 too (pyav/torchcodec); to
re-encode, run ``ffmpeg -i file-000.mp4 -c:v libsvtav1 -pix_fmt yuv420p ...`` and update
``video.codec`` in info.json. One data/video file per dataset: fine to a few hours of data;
LeRobot's 100 MB / 500 MB per-file splitting is not implemented.
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

from bimanual_vla.learning.dataset import BagDataset, DatasetOptions

CODEBASE_VERSION = 'v3.0'
DATA_PATH = 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
VIDEO_PATH = 'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4'
EPISODES_PATH = 'meta/episodes/chunk-000/file-000.parquet'
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_IMAGE_STATS_EVERY = 5  # image statistics from every 5th frame (LeRobot subsamples too)


class ExportError(RuntimeError):
    """The export cannot be written as asked (the output exists, frame sizes change, ...)."""


def camera_key(camera: str) -> str:
    return f'observation.images.{camera}'


def _stats(values: np.ndarray) -> dict[str, Any]:
    """LeRobot-style statistics over axis 0 of (N, D) values."""
    out: dict[str, Any] = {
        'min': values.min(axis=0).tolist(),
        'max': values.max(axis=0).tolist(),
        'mean': values.mean(axis=0).tolist(),
        'std': values.std(axis=0).tolist(),
        'count': [int(len(values))],
    }
    for q in QUANTILES:
        out[f'q{round(q * 100):02d}'] = np.quantile(values, q, axis=0).tolist()
    return out


class _ImageStats:
    """Per-channel statistics of pixel values in [0, 1] (shape 3x1x1 as LeRobot stores them)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = np.zeros(3)
        self.sq = np.zeros(3)
        self.lo = np.full(3, np.inf)
        self.hi = np.full(3, -np.inf)
        self.frames = 0

    def add(self, rgb: np.ndarray) -> None:
        x = rgb.reshape(-1, 3).astype(np.float64) / 255.0
        self.n += len(x)
        self.sum += x.sum(axis=0)
        self.sq += (x**2).sum(axis=0)
        self.lo = np.minimum(self.lo, x.min(axis=0))
        self.hi = np.maximum(self.hi, x.max(axis=0))
        self.frames += 1

    def result(self) -> dict[str, Any]:
        mean = self.sum / self.n
        std = np.sqrt(np.maximum(self.sq / self.n - mean**2, 0.0))
        col = lambda v: [[[float(c)]] for c in v]  # noqa: E731
        return {'min': col(self.lo), 'max': col(self.hi), 'mean': col(mean), 'std': col(std), 'count': [self.frames]}


class _VideoWriter:
    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import cv2

        path.parent.mkdir(parents=True, exist_ok=True)
        self.size = size  # (width, height)
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, size)
        if not self.writer.isOpened():
            raise ExportError(f'{path}: OpenCV cannot open an mp4v video writer')
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        self.writer.release()


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
    fps: float = 50.0,
    options: DatasetOptions | None = None,
    robot_type: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the LeRobot v3.0 dataset of `bags` to `out`; return a summary (frames, episodes, splits)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f'fps must be > 0, got {fps}')
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
        summary = _write(dataset, tmp, fps, robot_type, progress, pa, pq)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        dataset.close()
    summary['out'] = str(out)
    return summary


_COLUMNS = ('observation.state', 'action', 'timestamp', 'frame_index', 'episode_index', 'index', 'task_index',
            'subtask_index')  # fmt: skip
"""The data parquet's columns, in order."""


@dataclass
class _Frames:
    """Everything the frame pass gathers: the data columns, episodes, lookups, video writers."""

    columns: dict[str, list] = field(default_factory=lambda: {k: [] for k in _COLUMNS})
    episodes: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)
    subtasks: dict[str, int] = field(default_factory=dict)
    videos: dict[str, _VideoWriter] = field(default_factory=dict)
    image_stats: dict[str, _ImageStats] = field(default_factory=dict)
    splits: int = 0

    def close_episode(self, ep: dict[str, Any] | None) -> None:
        if ep is None or ep['length'] == 0:
            return
        ep['dataset_to_index'] = ep['dataset_from_index'] + ep['length']
        lo, hi = ep['dataset_from_index'], ep['dataset_to_index']
        for key in ('observation.state', 'action'):
            ep['stats'][key] = _stats(np.asarray(self.columns[key][lo:hi], dtype=np.float64))
        self.episodes.append(ep)

    def add(self, s: dict[str, Any], current: dict[str, Any], out: Path, fps: float) -> None:
        """Append one sample `s` to the columns, the episode `current` and the videos."""
        columns = self.columns
        task = self.tasks.setdefault(s['task'], len(self.tasks))
        if s['task'] not in current['tasks']:
            current['tasks'].append(s['task'])
        sub = self.subtasks.setdefault(s['subtask'], len(self.subtasks))
        columns['observation.state'].append(s['state'].tolist())
        columns['action'].append(s['actions'][0].tolist())
        columns['timestamp'].append(current['length'] / fps)
        columns['frame_index'].append(current['length'])
        columns['episode_index'].append(current['episode_index'])
        columns['index'].append(len(columns['index']))
        columns['task_index'].append(task)
        columns['subtask_index'].append(sub)
        for cam, img in s['images'].items():
            if cam not in self.videos:
                path = out / VIDEO_PATH.format(video_key=camera_key(cam), chunk_index=0, file_index=0)
                self.videos[cam] = _VideoWriter(path, fps, (img.shape[1], img.shape[0]))
            self.videos[cam].write(img)
            if current['length'] % _IMAGE_STATS_EVERY == 0:
                self.image_stats[cam].add(img)
        current['length'] += 1


def _write(dataset: BagDataset, out: Path, fps: float, robot_type: str | None, progress: bool, pa, pq) -> dict:
    frames = _read_frames(dataset, out, fps, progress)
    total = len(frames.columns['index'])
    if total == 0:
        raise ExportError('no frames to export')
    _write_data(frames, out / DATA_PATH.format(chunk_index=0, file_index=0), len(dataset.joint_names), pa, pq)
    _write_episodes(frames, dataset.cameras, out / EPISODES_PATH, fps, pa, pq)
    _write_lookup(out / 'meta/tasks.parquet', 'task', 'task_index', list(frames.tasks))
    _write_lookup(out / 'meta/subtasks.parquet', 'subtask', 'subtask_index', list(frames.subtasks))
    (out / 'meta/stats.json').write_text(json.dumps(_dataset_stats(frames), indent=2))
    info = _info(frames, dataset, fps, robot_type)
    (out / 'meta/info.json').write_text(json.dumps(info, indent=4))
    return {
        'episodes': len(frames.episodes),
        'frames': total,
        'tasks': len(frames.tasks),
        'subtasks': len(frames.subtasks),
        'episodes_split_at_gaps': frames.splits,
        'skipped_samples': dict(sorted((k, v) for k, v in dataset.skipped.items() if v)),
        'video_codec': 'mpeg4 (OpenCV mp4v)',
    }


def _read_frames(dataset: BagDataset, out: Path, fps: float, progress: bool) -> _Frames:
    """One pass over the dataset's samples: columns and episodes in memory, videos written to `out`."""
    frames = _Frames(image_stats={c: _ImageStats() for c in dataset.cameras})
    period_ns = 1e9 / fps
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), unit='frame', desc='export')
    try:
        for e in range(len(dataset.episodes)):
            current: dict[str, Any] | None = None
            last_t = None
            for s in dataset.iter_episode(e):
                t = s['time_ns']
                if current is not None and t - last_t > 1.5 * period_ns:  # a gap: LeRobot needs even spacing
                    frames.close_episode(current)
                    current = None
                    frames.splits += 1
                last_t = t
                if current is None:
                    start = len(frames.columns['index'])
                    current = {'episode_index': len(frames.episodes), 'tasks': [], 'length': 0,
                               'dataset_from_index': start, 'source': f'{s["bag"]}#{s["episode_label"]}',
                               'stats': {}}  # fmt: skip
                frames.add(s, current, out, fps)
                if bar is not None:
                    bar.update(1)
            frames.close_episode(current)
    finally:
        for writer in frames.videos.values():
            writer.close()
        if bar is not None:
            bar.close()
    return frames


def _write_data(frames: _Frames, data_path: Path, n_joints: int, pa, pq) -> None:
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
    })  # fmt: skip
    pq.write_table(table, data_path)


def _write_episodes(frames: _Frames, cameras: Sequence[str], ep_path: Path, fps: float, pa, pq) -> None:
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
    for key in ('observation.state', 'action'):
        for stat in episodes[0]['stats'][key]:
            ep_cols[f'stats/{key}/{stat}'] = [e['stats'][key][stat] for e in episodes]
    ep_cols['bimanual_vla/source'] = [e['source'] for e in episodes]
    ep_types = {'episode_index': pa.int64(), 'tasks': pa.list_(pa.string()), 'length': pa.int64()}
    ep_table = pa.table({
        k: pa.array(v, ep_types.get(k, pa.list_(pa.int64()) if k.endswith('/count') else None))
        for k, v in ep_cols.items()
    })  # fmt: skip
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(ep_table, ep_path)


def _dataset_stats(frames: _Frames) -> dict[str, Any]:
    columns = frames.columns
    stats: dict[str, Any] = {
        'observation.state': _stats(np.asarray(columns['observation.state'], dtype=np.float64)),
        'action': _stats(np.asarray(columns['action'], dtype=np.float64)),
    }
    for key in ('timestamp', 'frame_index', 'episode_index', 'index', 'task_index', 'subtask_index'):
        stats[key] = _stats(np.asarray(columns[key], dtype=np.float64)[:, None])
    for cam, acc in frames.image_stats.items():
        if acc.frames:
            stats[camera_key(cam)] = acc.result()
    return stats


def _info(frames: _Frames, dataset: BagDataset, fps: float, robot_type: str | None) -> dict[str, Any]:
    """meta/info.json: the features (videos, joint vectors, indices) and the dataset's totals."""
    n_joints = len(dataset.joint_names)
    features: dict[str, Any] = {}
    for cam in dataset.cameras:
        w, h = frames.videos[cam].size
        features[camera_key(cam)] = {
            'dtype': 'video',
            'shape': [h, w, 3],
            'names': ['height', 'width', 'channels'],
            'info': {'video.height': h, 'video.width': w, 'video.codec': 'mpeg4', 'video.pix_fmt': 'yuv420p',
                     'video.is_depth_map': False, 'video.fps': fps, 'video.channels': 3, 'has_audio': False},
        }  # fmt: skip
    for key in ('observation.state', 'action'):
        features[key] = {'dtype': 'float32', 'shape': [n_joints], 'names': list(dataset.joint_names)}
    features['timestamp'] = {'dtype': 'float32', 'shape': [1], 'names': None}
    for key in ('frame_index', 'episode_index', 'index', 'task_index', 'subtask_index'):
        features[key] = {'dtype': 'int64', 'shape': [1], 'names': None}
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
        'fps': fps if fps != int(fps) else int(fps),
        'splits': {'train': f'0:{len(frames.episodes)}'},
        'data_path': DATA_PATH,
        'video_path': VIDEO_PATH,
        'features': features,
    }
