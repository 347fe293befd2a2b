"""Training samples decoded once into a compact on-disk cache, so the data loader costs nothing.

`BagDataset` reads frames from MCAP chunks and decodes full-size images; doing that for every
training step would keep both cores busy with I/O instead of learning. `build_cache` walks every
episode once (sequentially, each frame decoded once), resizes each distinct camera frame to the
model size with the same crop and `resize_with_pad` the policy uses at run time, and stores:

* ``frames_<cam>.npy``   uint8 (n_frames, H, W, 3), memory-mapped when training
* ``arrays.npz``         per sample: frame index per camera, state, actions, actions_is_pad,
                         task id, subtask id, episode, intervention (inside a human takeover);
                         plus the task/subtask string tables
* ``cache.json``         what the cache was built from (bags with sizes and mtimes, options)

Each bag gets a cache of its own, keyed by a hash of that bag's files and the options that shape
the samples, and reused by later runs on the same bag: adding a bag to a run decodes only the new
one. A cache holds every episode of its bag; `build_cache` leaves out the skipped and failed ones
when it joins the per-bag caches in memory (frames stay memory-mapped, per bag), so changing
`--skip-episode` or `--keep-failed` decodes nothing again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bimanual_vla.policy_node.preprocess import model_rgb

if TYPE_CHECKING:
    from bimanual_vla.learning.dataset import BagDataset

log = logging.getLogger(__name__)

# 2: every episode decoded, labels listed; skipping happens when joining; 3: commands padded at takeover switches
CACHE_VERSION = 3


class StackedFrames:
    """Several bags' memory-mapped frame arrays of one camera, indexed as one (n_frames, H, W, 3) array.

    Joining the per-bag caches this way costs no copy: a 260-episode run holds ~3 GB of frames.
    """

    def __init__(self, parts: list[np.ndarray]) -> None:
        if not parts:
            raise ValueError('no frame arrays to stack')
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) != 1:
            raise ValueError(f'frame arrays of different sizes cannot be stacked: {sorted(shapes)}')
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        i = int(index)
        if not 0 <= i < self.shape[0]:
            raise IndexError(f'frame {i} out of range for {self.shape[0]} frames')
        part = int(np.searchsorted(self.starts, i, side='right')) - 1
        return self.parts[part][i - self.starts[part]]


@dataclass
class CachedSamples:
    """Everything a training step needs, as arrays (frames memory-mapped)."""

    directory: Path
    cameras: list[str]
    joint_names: list[str]
    frames: dict[str, np.ndarray | StackedFrames]  # cam -> (n_frames, H, W, 3) uint8
    frame_index: np.ndarray  # (N, n_cam) int64 into frames[cam]
    state: np.ndarray  # (N, J) float32, rig units
    actions: np.ndarray  # (N, H, J) float32, rig units
    actions_is_pad: np.ndarray  # (N, H) bool
    task_id: np.ndarray  # (N,) int64 into tasks
    subtask_id: np.ndarray  # (N,) int64 into subtasks
    episode: np.ndarray  # (N,) int64
    tasks: list[str]
    subtasks: list[str]
    info: dict[str, Any]
    intervention: np.ndarray | None = None  # (N,) bool: inside a recorded human takeover (None: none recorded)
    # (N,) bool: inside a move the collection's coach asked of the expert (`collect --coach`); its label is
    # an instruction, not what the scene shows, so the text is not trained to predict it (None: none)
    coached: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.intervention is None:
            self.intervention = np.zeros(len(self.state), dtype=bool)
        if self.coached is None:
            self.coached = np.zeros(len(self.state), dtype=bool)

    def __len__(self) -> int:
        return int(self.state.shape[0])

    @property
    def chunk_size(self) -> int:
        return int(self.actions.shape[1])

    def images(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (B, n_cam, H, W, 3) for the given sample indices."""
        return np.stack(
            [np.stack([self.frames[c][self.frame_index[i, k]] for k, c in enumerate(self.cameras)]) for i in indices]
        )


def cache_key(bags: list[Path], options: dict[str, Any]) -> str:
    """A hash of the bags (path, size, mtime of every file) and the options that shape the samples."""
    h = hashlib.sha256()
    h.update(json.dumps({'version': CACHE_VERSION, 'options': options}, sort_keys=True).encode())
    for bag in bags:
        for f in sorted(p for p in bag.rglob('*') if p.is_file() and p.suffix in ('.mcap', '.db3', '.yaml')):
            st = f.stat()
            h.update(f'{f.resolve()}:{st.st_size}:{st.st_mtime_ns}'.encode())
    return h.hexdigest()[:16]


def build_cache(
    bags: list[str | Path],
    cache_root: str | Path,
    *,
    rig: str,
    image_size: tuple[int, int],
    chunk_size: int,
    cameras: list[str] | None = None,
    time_base: str = 'auto',
    default_task: str = '',
    skip_episodes: list[str] | None = None,
    keep_failed: bool = False,
    crops: dict[str, tuple[int, int, int, int]] | None = None,
    progress: bool = True,
    action_source: str = 'commands',
) -> CachedSamples:
    """Decode `bags` into per-bag caches under `cache_root` (each reused if it exists) and join them.

    Episodes whose label is in `skip_episodes` are left out, and so are episodes a `collect.json`
    beside the bag (written by `bimanual-vla collect`) reports as failed, unless `keep_failed`.
    `crops` (camera -> x, y, width, height) are cut out of the frames before resizing, exactly as
    the policy does with a checkpoint's ``image_crops``. The bags must agree on cameras, joints and
    control rate; a bag whose episodes are all left out contributes nothing. `action_source`
    ('commands': the followers' ``arms/<arm>/joint_command``; 'leader': the teleop leaders'
    ``leader/<arm>/joint_states``) says what the actions are; episodes a ``record/discard`` marker
    discards are never decoded (`bimanual_vla.bags.episodes`).
    """
    paths = [Path(b).expanduser().resolve() for b in bags]
    if not paths:
        raise ValueError('no bags to decode')
    options = {
        'rig': rig,
        'image_size': list(image_size),
        'chunk_size': chunk_size,
        'cameras': cameras,
        'time_base': time_base,
        'default_task': default_task,
    }
    if action_source != 'commands':  # only then part of the key, so existing caches stay valid
        options['action_source'] = action_source
    crops = {c: tuple(int(v) for v in box) for c, box in (crops or {}).items()}
    if crops:  # only then part of the key, so caches built before crops existed stay valid
        options['crops'] = {c: list(box) for c, box in sorted(crops.items())}
    parts = []
    for path in paths:
        # the bag's own time base, resolved before the key: a cache built with it named stays valid
        bag_options = {**options, 'time_base': _bag_time_base(path, time_base)}
        directory = Path(cache_root).expanduser() / cache_key([path], bag_options)
        if (directory / 'cache.json').is_file():
            log.info('reusing sample cache %s for %s', directory, path)
        else:
            _decode_bag(path, directory, bag_options, crops, progress)
        skip = set(skip_episodes or [])
        part = load_cache(directory)
        summary = collect_summary(path)
        if summary is not None:
            if not keep_failed:
                skip |= failed_labels(summary)
            suspect = suspect_episode_labels(part.info['episode_labels'], summary)
            for label, why in sorted(suspect.items()):
                log.warning('%s: leaving out episode %r: %s', path, label, why)
            skip |= set(suspect)
            part = dataclasses.replace(part, coached=coached_samples(part, coached_windows(summary)))
        parts.append(leave_out_episodes(part, skip))
    kept = [p for p in parts if len(p)]
    if not kept:
        raise ValueError('no episodes left to train on after skipping failed/excluded ones')
    joined = kept[0] if len(kept) == 1 else join_caches(kept)
    left_out = [label for p in parts for label in p.info['episodes_left_out']]  # bags left out whole too
    return dataclasses.replace(joined, info={**joined.info, 'episodes_left_out': left_out})


def _bag_time_base(path: Path, requested: str) -> str:
    """'header' or 'receive': `requested`, or for 'auto' the bag's own (logged in one line)."""
    from bimanual_vla.bags.read import BagReader
    from bimanual_vla.bags.time_base import resolve_time_base

    with BagReader(path) as bag:
        resolved = resolve_time_base(bag, requested)
    log.info('%s', resolved.line(path))
    return resolved.base


def _decode_bag(
    path: Path, directory: Path, options: dict[str, Any], crops: dict[str, tuple[int, int, int, int]], progress: bool
) -> None:
    """Decode one bag into `directory` (written under a temporary name, renamed when complete)."""
    from bimanual_vla.learning.dataset import BagDataset

    rig, chunk_size, cameras = options['rig'], options['chunk_size'], options['cameras']
    time_base, default_task = options['time_base'], options['default_task']
    ds = BagDataset(
        [path], rig=rig, chunk_size=chunk_size, cameras=cameras, time_base=time_base, default_task=default_task,
        action_source=options.get('action_source', 'commands'),
    )  # fmt: skip
    kept = list(range(len(ds.episodes)))
    cams = list(ds.cameras)
    unknown = sorted(set(crops) - set(cams))
    if unknown:
        raise ValueError(f'crop for camera(s) {unknown} the data does not have; it has {cams}')
    tmp = directory.with_name(directory.name + '.partial')
    tmp.mkdir(parents=True, exist_ok=True)
    image_size = tuple(options['image_size'])
    decoded = _decode_samples(ds, kept, crops, (image_size[0], image_size[1]), chunk_size, progress, path.name)
    h, w = image_size
    for cam in cams:
        empty = np.zeros((0, h, w, 3), dtype=np.uint8)
        frames = decoded.frame_lists[cam]
        np.save(tmp / f'frames_{cam}.npy', np.stack(frames) if frames else empty)
    np.savez(tmp / 'arrays.npz', **decoded.arrays)
    info = {
        'version': CACHE_VERSION,
        'bags': [str(path)],
        'options': options,
        'cameras': cams,
        'joint_names': list(ds.joint_names),
        'rate_hz': ds.rate_hz,
        'samples': len(decoded.arrays['state']),
        'episodes': len(kept),
        'episode_labels': [ds.episodes[e].label for e in kept],  # by the `episode` ids of the samples
        'episodes_left_out': [],
        'tasks': list(decoded.tasks),
        'subtasks': list(decoded.subtasks),
        'skipped': dict(ds.skipped),
    }
    (tmp / 'cache.json').write_text(json.dumps(info, indent=2) + '\n')
    ds.close()
    tmp.rename(directory)


@dataclass
class _DecodedSamples:
    """One bag's samples as the cache stores them: each distinct frame once, arrays indexing them."""

    frame_lists: dict[str, list[np.ndarray]]  # camera -> model-ready frames, each source frame once
    arrays: dict[str, np.ndarray]  # arrays.npz, by name
    tasks: dict[str, int]  # task text -> task_id
    subtasks: dict[str, int]  # subtask text -> subtask_id


def _decode_samples(
    ds: BagDataset,
    kept: list[int],
    crops: dict[str, tuple[int, int, int, int]],
    image_size: tuple[int, int],
    chunk_size: int,
    progress: bool,
    name: str,
) -> _DecodedSamples:
    """Every sample of the episodes `kept` of BagDataset `ds`, images cropped and resized for the model."""
    cams = list(ds.cameras)
    n = sum(len(ds.episode_range(e)) for e in kept)
    frame_lists: dict[str, list[np.ndarray]] = {c: [] for c in cams}
    frame_index = np.zeros((n, len(cams)), dtype=np.int64)
    state = np.zeros((n, len(ds.joint_names)), dtype=np.float32)
    actions = np.zeros((n, chunk_size, len(ds.joint_names)), dtype=np.float32)
    is_pad = np.zeros((n, chunk_size), dtype=bool)
    task_id = np.zeros(n, dtype=np.int64)
    subtask_id = np.zeros(n, dtype=np.int64)
    episode = np.zeros(n, dtype=np.int64)
    intervention = np.zeros(n, dtype=bool)
    tasks: dict[str, int] = {}
    subtasks: dict[str, int] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit='sample', desc=f'decoding {name}')
    i = 0
    for e in kept:
        last: dict[str, tuple[int, int]] = {}  # cam -> (source frame number, cache index)
        ep = ds.episodes[e]
        for k, s in enumerate(ds.iter_episode(e)):
            for c_i, cam in enumerate(cams):
                src = int(ep.frames[cam][k])
                if cam not in last or last[cam][0] != src:
                    frame_lists[cam].append(model_rgb(cam, s['images'][cam], image_size, crops.get(cam)))
                    last[cam] = (src, len(frame_lists[cam]) - 1)
                frame_index[i, c_i] = last[cam][1]
            state[i] = s['state']
            actions[i] = s['actions']
            is_pad[i] = s['actions_is_pad']
            task_id[i] = tasks.setdefault(s['task'], len(tasks))
            subtask_id[i] = subtasks.setdefault(s['subtask'], len(subtasks))
            episode[i] = e
            intervention[i] = s['intervention']
            i += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if i != n:
        raise RuntimeError(f'expected {n} samples from the bags, decoded {i}')
    arrays = {
        'frame_index': frame_index,
        'state': state,
        'actions': actions,
        'actions_is_pad': is_pad,
        'task_id': task_id,
        'subtask_id': subtask_id,
        'episode': episode,
        'intervention': intervention,
    }
    return _DecodedSamples(frame_lists, arrays, tasks, subtasks)


def leave_out_episodes(part: CachedSamples, labels: set[str]) -> CachedSamples:
    """`part` without the samples of episodes labelled one of `labels` (frames stay, unreferenced)."""
    episode_labels = part.info['episode_labels']
    left_out = sorted({label for label in episode_labels if label in labels})
    if not left_out:
        return part
    log.info('leaving out %d episode(s) of %s: %s', len(left_out), part.info['bags'][0], ', '.join(left_out))
    drop = np.array([label in labels for label in episode_labels], dtype=bool)
    keep = ~drop[part.episode]
    return dataclasses.replace(
        part,
        frame_index=part.frame_index[keep],
        state=part.state[keep],
        actions=part.actions[keep],
        actions_is_pad=part.actions_is_pad[keep],
        task_id=part.task_id[keep],
        subtask_id=part.subtask_id[keep],
        episode=part.episode[keep],
        intervention=part.intervention[keep],
        coached=part.coached[keep],
        info={
            **part.info,
            'samples': int(keep.sum()),
            'episodes': len(set(part.episode[keep].tolist())),
            'episodes_left_out': left_out,
        },
    )


def join_caches(parts: list[CachedSamples]) -> CachedSamples:
    """One `CachedSamples` over several per-bag caches: indices offset, task/subtask tables merged."""
    first = parts[0]
    for p in parts[1:]:
        for key in ('cameras', 'joint_names', 'rate_hz'):
            if p.info[key] != first.info[key]:
                raise ValueError(
                    f'bags {first.info["bags"]} and {p.info["bags"]} differ in {key}: '
                    f'{first.info[key]} against {p.info[key]}; train on them apart'
                )
    tasks = list(dict.fromkeys(t for p in parts for t in p.tasks))
    subtasks = list(dict.fromkeys(t for p in parts for t in p.subtasks))
    frame_index, task_id, subtask_id, episode = [], [], [], []
    frame_offset = np.zeros(len(first.cameras), dtype=np.int64)
    episode_offset = 0
    for p in parts:
        frame_index.append(p.frame_index + frame_offset)
        frame_offset += [len(p.frames[c]) for c in p.cameras]
        task_id.append(np.array([tasks.index(t) for t in p.tasks], dtype=np.int64)[p.task_id])
        subtask_id.append(np.array([subtasks.index(t) for t in p.subtasks], dtype=np.int64)[p.subtask_id])
        episode.append(p.episode + episode_offset)
        episode_offset += int(p.episode.max()) + 1
    skipped: dict[str, int] = {}
    for p in parts:
        for key, count in p.info.get('skipped', {}).items():
            skipped[key] = skipped.get(key, 0) + int(count)
    info = {
        **first.info,
        'bags': [b for p in parts for b in p.info['bags']],
        'parts': [str(p.directory) for p in parts],
        'samples': sum(len(p) for p in parts),
        'episodes': sum(int(p.info['episodes']) for p in parts),
        'episodes_left_out': [e for p in parts for e in p.info['episodes_left_out']],
        'tasks': tasks,
        'subtasks': subtasks,
        'skipped': skipped,
    }
    return CachedSamples(
        directory=first.directory.parent,
        cameras=list(first.cameras),
        joint_names=list(first.joint_names),
        frames={c: StackedFrames([p.frames[c] for p in parts]) for c in first.cameras},
        frame_index=np.concatenate(frame_index),
        state=np.concatenate([p.state for p in parts]),
        actions=np.concatenate([p.actions for p in parts]),
        actions_is_pad=np.concatenate([p.actions_is_pad for p in parts]),
        task_id=np.concatenate(task_id),
        subtask_id=np.concatenate(subtask_id),
        episode=np.concatenate(episode),
        intervention=np.concatenate([p.intervention for p in parts]),
        coached=np.concatenate([p.coached for p in parts]),
        tasks=tasks,
        subtasks=subtasks,
        info=info,
    )


COACHED_PAD_S = 0.1  # around a coached move: the sample clock starts within a tick or two of the episode's


def coached_windows(summary: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Per episode label, the (start, end) seconds after its start of every coached move a `collect.json` lists
    (its episodes' ``events`` rows ``[t, 'coach', subtask, move_s]``; none before format 3)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for episode in summary.get('episodes', []):
        for event in episode.get('events', []):
            if len(event) >= 4 and event[1] == 'coach':
                out.setdefault(episode['label'], []).append((float(event[0]), float(event[0]) + float(event[3])))
    return out


def coached_samples(part: CachedSamples, windows: dict[str, list[tuple[float, float]]]) -> np.ndarray:
    """(N,) bool: the samples of `part` inside a coached move (samples are one per control tick from the
    episode's first, so a sample's time is its index in the episode over the rate), padded by COACHED_PAD_S."""
    coached = part.coached.copy()
    if not windows:
        return coached
    rate = float(part.info.get('rate_hz', 50.0))
    labels = part.info['episode_labels']
    starts = np.r_[0, np.flatnonzero(part.episode[1:] != part.episode[:-1]) + 1]
    ends = np.r_[starts[1:], len(part.episode)]
    for a, b in zip(starts, ends, strict=True):
        for t0, t1 in windows.get(labels[int(part.episode[a])], []):
            t = np.arange(b - a) / rate
            coached[a:b] |= (t >= t0 - COACHED_PAD_S) & (t <= t1 + COACHED_PAD_S)
    return coached


def collect_summary(bag: str | Path) -> dict[str, Any] | None:
    """The `collect.json` that `bimanual-vla collect` wrote beside a bag; None for a bag recorded otherwise."""
    summary = Path(bag).expanduser() / 'collect.json'
    return json.loads(summary.read_text()) if summary.is_file() else None


def suspect_episode_labels(episode_labels: list[str], summary: dict[str, Any]) -> dict[str, str]:
    """Episodes of a `collect` bag that `collect` did not record as it says (label -> why).

    A second collection on the same ROS domain sends episode markers of its own into the recording:
    an episode `collect.json` does not list, or a label recorded twice, is not the demonstration the
    summary describes (and for a twice-recorded label nobody can tell which one is).
    """
    listed = {e['label'] for e in summary.get('episodes', [])}
    out = {label: 'not in collect.json (another collection on this ROS domain?)' for label in episode_labels}
    out = {label: why for label, why in out.items() if label not in listed}
    for label in set(episode_labels):
        if episode_labels.count(label) > 1:
            out[label] = f'recorded {episode_labels.count(label)} times (another collection on this ROS domain?)'
    return out


def failed_episode_labels(bags: list[Path]) -> set[str]:
    """Labels of the episodes `bimanual-vla collect` recorded as failed (from each bag's collect.json).

    Episodes during which another node published on the collection's own topics (a second sim on the
    same ROS domain, `foreign_publishers`) count as failed too: their bag holds that node's messages.
    """
    labels: set[str] = set()
    for bag in bags:
        data = collect_summary(bag)
        if data is not None:
            labels |= failed_labels(data)
    return labels


def failed_labels(summary: dict[str, Any]) -> set[str]:
    """The labels one `collect.json` marks failed or recorded beside another node (`failed_episode_labels`).

    A collection cut short (`collect --episode-s`, its `episode_s`) holds partial demonstrations (the reach
    phase, say): none of them could succeed, so not succeeding is no failure there, and they are kept.
    """
    episodes = summary.get('episodes', [])
    cut = summary.get('episode_s') is not None
    return {e['label'] for e in episodes if (not cut and not e.get('success', True)) or e.get('foreign_publishers')}


def action_time_offset_s(bags: list[str | Path], rate_hz: float) -> float:
    """How long after they took effect these bags stamped their commands (CheckpointMetadata's field).

    A rig's recorder stamps a command when it is sent, and so does the sim rig wherever `collect.json`
    says ``"command_stamps": "issued"``: 0. A `collect.json` without ``command_stamps`` is the oldest
    collect format, whose bags stamped each command with the end of the tick it acted in, one control
    tick late: the policy node must start chunks of a model trained on them one tick earlier, or every
    chunk runs a tick late (docs/experiments/2026-11-30-chunk-start-anchor.md). Mixing both kinds is
    refused: no single offset fits both.
    """
    late, issued = [], []
    for bag in bags:
        data = collect_summary(bag)
        if data is None:
            issued.append(str(bag))  # recorded on a rig (or by hand): commands stamped when sent
            continue
        stamps = data.get('command_stamps')
        if stamps is None:
            late.append(str(bag))
        elif stamps == 'issued':
            issued.append(str(bag))
        else:
            raise ValueError(f"{bag}/collect.json: unknown command_stamps {stamps!r} (this code knows 'issued')")
    if late and issued:
        raise ValueError(
            f'bags {late} were collected before commands were stamped when issued (one tick late) and {issued} '
            'after: no single action_time_offset_s fits both; collect the older ones again or train on them apart'
        )
    return round(1.0 / rate_hz, 9) if late else 0.0


def expert_approach(bags: list[str | Path]) -> str | None:
    """How the scripted expert reached above the cube in these bags (CheckpointMetadata's field).

    From each bag's `collect.json`; bags collected before the key existed used the straight line
    ('cartesian'). None when a bag was not collected from the sim (a rig's recording) or the bags
    mix both approaches: then there is no single expert motion to compare the policy with.
    """
    approaches = set()
    for bag in bags:
        data = collect_summary(bag)
        if data is None:
            return None
        approaches.add(data.get('expert_approach', 'cartesian'))
    return approaches.pop() if len(approaches) == 1 else None


def load_cache(directory: str | Path) -> CachedSamples:
    directory = Path(directory)
    info = json.loads((directory / 'cache.json').read_text())
    arrays = np.load(directory / 'arrays.npz', allow_pickle=False)
    cams = list(info['cameras'])
    return CachedSamples(
        directory=directory,
        cameras=cams,
        joint_names=list(info['joint_names']),
        frames={c: np.load(directory / f'frames_{c}.npy', mmap_mode='r', allow_pickle=False) for c in cams},
        frame_index=arrays['frame_index'],
        state=arrays['state'],
        actions=arrays['actions'],
        actions_is_pad=arrays['actions_is_pad'],
        task_id=arrays['task_id'],
        subtask_id=arrays['subtask_id'],
        episode=arrays['episode'],
        tasks=list(info['tasks']),
        subtasks=list(info['subtasks']),
        info=info,
        intervention=arrays['intervention'] if 'intervention' in arrays.files else None,
    )
