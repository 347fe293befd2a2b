"""Training samples from bags: a ``torch.utils.data.Dataset`` streamed from disk.

A sample at time ``t`` (one control tick of an episode) holds

* ``images``: the latest frame of every camera at or before ``t`` (uint8, 3 x H x W, RGB).
  A frame older than ``camera_max_age_s`` makes the sample invalid: it is skipped and counted
  in :attr:`BagDataset.skipped` (the live policy node would not act on it either);
* ``state``: every joint's position at ``t``, ``state_mode='latest'`` (default: the newest
  reading at or before ``t``, what the policy node sees live) or ``'interpolate'`` (linear
  between the readings around ``t``); older than ``joint_max_age_s`` -> skipped, counted;
* ``actions`` (H x J) and ``actions_is_pad`` (H): the commanded joint positions at
  ``t + k / rate_hz``, k = 0..H-1, merged across arms into the joint order. With
  ``action_source='commands'`` they are read from ``arms/<arm>/joint_command`` (or any
  per-arm topic via ``command_topic``) and held between messages (a position command is in
  force until the next one); ``action_source='leader'`` does the same with the teleop leaders'
  positions, ``leader/<arm>/joint_states`` (follower joint names, already mapped). With
  ``action_source='joint_states'`` the future measured positions are used (interpolated):
  the choice for bags that hold no commands. Steps past the end of the episode's actions are
  padded with the last action and flagged in ``actions_is_pad`` (as LeRobot does). Around a
  recorded takeover's start and end the command topic switches publisher (the policy's last
  command, teleop's first, which can be far apart), so with ``action_source='commands'`` the
  steps from the first one within ``switch_guard_s`` of a switch on to the chunk's end are
  padded too: the model is never taught the jump between two sources;
* ``task`` (latest ``policy/task``), ``subtask`` (latest label of ``policy/subtask`` or the
  sim expert's ``sim/expert_subtask``, whichever the bag has), ``episode`` (index over all
  bags), ``episode_label``, ``timestamp`` (seconds since the episode's first sample), ``bag``,
  ``intervention`` (True inside a human takeover recorded on ``teleop/intervention``).

Samples never cross episode boundaries: episodes come from the recorder's ``record/episode``
markers (or metadata); a bag without markers is one episode. Several bags concatenate. Episodes
a ``record/discard`` marker discards (re-recorded takes, :mod:`bimanual_vla.bags.episodes`) are
left out and counted in :attr:`BagDataset.skipped` as ``discarded_episode``.

Strategy and cost. Opening builds a light index in one pass over each bag: every message of
the topics used is read once, but camera frames are not decoded (only the 8-byte header
stamp is parsed from the CDR), so indexing costs roughly the disk read of the bag. Kept in
RAM: per camera two int64 per frame, per joint two float64 per reading, per arm the command
positions (about 10 MB per hour of a 14-joint, 50 Hz rig) and per sample its time plus one
frame number per camera. ``__getitem__`` computes state and actions from those arrays and
reads each camera frame with an indexed MCAP time-range read: one chunk read + decompress +
decode per camera (chunks are ~1 MiB), independent of bag length. Readers are opened lazily
per process, so DataLoader workers each get their own. A damaged bag that is read by the
salvage scanner has no index: each frame read then scans the file (slow; re-record or
re-index such a bag before training on it).

Time base: ``'auto'`` (default) takes it from each bag (:mod:`bimanual_vla.bags.time_base`: the
metadata ``collect`` writes, else inferred from the joint states' stamps) and logs one line per bag
saying which and why (also in :attr:`BagDataset.time_bases`); ``'receive'`` uses the recorder's
receive timestamps for everything (one clock, robust: live rigs); ``'header'`` uses
``header.stamp`` of images, joint states and commands (capture times; needed for sims run faster
than real time, whose stamps are sim time). Unstamped topics (task, subtask) are then placed at
the stamp of the joint state received just before them.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from bimanual_vla import topics as T
from bimanual_vla.bags.episodes import in_interventions, intervention_segments, kept_episodes, source_switches
from bimanual_vla.bags.read import BagError, BagReader, MissingTopicError
from bimanual_vla.bags.time_base import AUTO, TimeBase, check_time_base, header_stamp_ns, resolve_time_base
from bimanual_vla.image_msgs import image_to_rgb

log = logging.getLogger(__name__)

ACTION_SOURCES = ('commands', 'leader', 'joint_states')
LEADER_TOPIC = 'leader/{arm}/joint_states'  # action_source='leader' (bimanual_vla.topics.leader_joint_states)
STATE_MODES = ('latest', 'interpolate')
TIME_BASES = (AUTO, 'receive', 'header')
DEFAULT_SUBTASK_TOPICS = (T.POLICY_SUBTASK, T.SIM_EXPERT_SUBTASK)
_STAMPED_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/JointState', 'sensor_msgs/msg/CameraInfo')


class DatasetError(BagError):
    """The bags cannot give the samples asked for (missing topics, no data); names the bag and the problem."""


@dataclass
class DatasetOptions:
    """How samples are cut from bags. Unset fields are taken from `rig` (or discovered in the bag)."""

    rig: Any = None  # RigConfig, a rig name, or None
    cameras: list[str] | None = None  # default: the rig's cameras, else every cameras/*/image_raw in the bag
    joint_names: list[str] | None = None  # qualified names in the order of state/action vectors
    chunk_size: int = 50  # H
    rate_hz: float | None = None  # spacing of the action chunk; default: rig control rate, else 50
    sample_hz: float | None = None  # spacing of samples; default: rate_hz
    action_source: str = 'commands'  # 'commands' | 'leader' | 'joint_states'
    command_topic: str = 'arms/{arm}/joint_command'  # per-arm action topic ({arm} is replaced)
    state_mode: str = 'latest'  # 'latest' | 'interpolate'
    camera_max_age_s: float = 0.5  # as the policy node's staleness default
    joint_max_age_s: float = 0.2
    time_base: str = AUTO  # 'auto' (from each bag, see bags.time_base) | 'receive' | 'header'
    namespace: str = '/'
    subtask_topics: tuple[str, ...] = DEFAULT_SUBTASK_TOPICS
    default_task: str = ''  # used where the bag has no policy/task (else the episode label)
    switch_guard_s: float = 0.1  # commands this close to a takeover's start or end may come from either source

    def validate(self) -> None:
        if self.action_source not in ACTION_SOURCES:
            raise ValueError(f'action_source must be one of {ACTION_SOURCES}, got {self.action_source!r}')
        if self.state_mode not in STATE_MODES:
            raise ValueError(f'state_mode must be one of {STATE_MODES}, got {self.state_mode!r}')
        check_time_base(self.time_base)
        if self.chunk_size < 1:
            raise ValueError(f'chunk_size must be >= 1, got {self.chunk_size}')
        if not (math.isfinite(self.switch_guard_s) and self.switch_guard_s >= 0):
            raise ValueError(f'switch_guard_s must be >= 0, got {self.switch_guard_s}')
        for name in ('rate_hz', 'sample_hz'):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f'{name} must be > 0, got {value}')
        if '{arm}' not in self.command_topic:
            raise ValueError(f'command_topic must contain "{{arm}}", got {self.command_topic!r}')

    @property
    def uses_topic(self) -> bool:
        """Actions come from a per-arm topic (commands or leader positions), not future joint states."""
        return self.action_source in ('commands', 'leader')

    @property
    def action_topic(self) -> str:
        """The per-arm action topic ({arm} unreplaced)."""
        return LEADER_TOPIC if self.action_source == 'leader' else self.command_topic


@dataclass
class _Labels:
    """A step function of strings: the value at t is the last one set at or before t."""

    times: np.ndarray  # int64 ns, sorted
    values: list[str]

    def at(self, t_ns: int, default: str = '') -> str:
        i = int(np.searchsorted(self.times, t_ns, side='right')) - 1
        return self.values[i] if i >= 0 else default


@dataclass
class _EpisodeIndex:
    """Everything one episode's samples are computed from (small arrays; no images)."""

    bag: int
    local_index: int
    label: str
    recv_range: tuple[int, int]  # receive-time window [start, stop)
    cam_sync: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> frame times (time base)
    cam_recv: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> frame receive times
    joint_t: list[np.ndarray] = field(default_factory=list)  # per joint (in joint order): times
    joint_q: list[np.ndarray] = field(default_factory=list)  # per joint: positions
    js_recv: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # joint_states receive times
    js_sync: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ... and their sync times
    act_t: list[np.ndarray] = field(default_factory=list)  # per action group: times
    act_q: list[np.ndarray] = field(default_factory=list)  # per action group: (n, len(cols)) positions
    act_cols: list[np.ndarray] = field(default_factory=list)  # per action group: columns in joint order
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sample times (time base)
    intervention: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per sample: in a takeover
    switches: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # command source switches (receive)
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> frame number per sample


def _abs(namespace: str, topic: str) -> str:
    if topic.startswith('/'):
        return topic
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return f'{ns}/{topic}'


@dataclass(frozen=True)
class _BagTopics:
    """The absolute topic names one bag is indexed from."""

    cameras: dict[str, str]  # image topic -> camera name
    joint_states: str
    actions: dict[str, str]  # action topic -> arm (empty for action_source='joint_states')
    arms: dict[str, list[str] | None]  # arm -> its qualified joint names (None: from the messages)
    task: str
    subtask: str | None  # the first of subtask_topics the bag has
    header: bool  # time_base == 'header': sync on header stamps instead of receive times


@dataclass
class _BagScan:
    """One pass over a bag's messages, per episode: (sync, recv) frame times, joints, commands."""

    cams: list[dict[str, list[tuple[int, int]]]]
    joints: list[dict[str, list[tuple[int, float]]]]
    js_times: list[list[tuple[int, int]]]  # (recv, sync) of every joint_states message
    acts: list[dict[str, list[tuple[int, list[str], list[float]]]]]
    labels: dict[str, list[tuple[int, str]]]  # task/subtask topic -> (recv, text), over the whole bag
    order: list[str] = field(default_factory=list)  # joint names in order of appearance


class BagDataset(Dataset):
    """Synchronised samples from one or more bags; see the module docstring.

    ``DataLoader(BagDataset(...), num_workers=4)`` works: each worker opens its own readers.
    """

    def __init__(self, bags: str | Path | Sequence[str | Path], options: DatasetOptions | None = None, **kw: Any):
        opts = options or DatasetOptions()
        for key, value in kw.items():
            if not hasattr(opts, key):
                raise TypeError(f'unknown dataset option {key!r}')
            setattr(opts, key, value)
        opts.validate()
        self.options = opts
        self.paths = [Path(p).expanduser() for p in ([bags] if isinstance(bags, str | Path) else bags)]
        if not self.paths:
            raise ValueError('no bags given')
        self.rig = self._load_rig(opts.rig)
        self.rate_hz = float(opts.rate_hz or (self.rig.control_rate_hz if self.rig else 50.0))
        self.sample_hz = float(opts.sample_hz or self.rate_hz)
        self.chunk_size = int(opts.chunk_size)
        self.transform: Any = None
        self.skipped: Counter[str] = Counter()
        self.episodes: list[_EpisodeIndex] = []
        self.cameras: list[str] = list(opts.cameras or [])
        self.joint_names: list[str] = list(opts.joint_names or [])
        self._tasks: list[_Labels] = []
        self._subtasks: list[_Labels] = []
        self._readers: dict[int, BagReader] = {}
        self.time_bases: list[TimeBase] = []  # per bag: the clock it is read on, and why
        self._pid = os.getpid()
        for i, path in enumerate(self.paths):
            with BagReader(path) as bag:
                self._index_bag(i, bag)
        self._offsets = np.cumsum([0] + [len(e.samples) for e in self.episodes])
        if len(self) == 0:
            detail = ', '.join(f'{k}: {v}' for k, v in sorted(self.skipped.items())) or 'no overlapping data'
            raise DatasetError(f'{", ".join(map(str, self.paths))}: no usable samples ({detail})')

    # ------------------------------------------------------------ indexing

    @staticmethod
    def _load_rig(rig: Any) -> Any:
        if rig is None or not isinstance(rig, str | Path):
            return rig
        from bimanual_vla.config import load_rig

        return load_rig(rig)

    def _arms(self, bag: BagReader) -> dict[str, list[str] | None]:
        """arm -> its qualified joint names (None: learn them from the messages)."""
        if self.rig is not None:
            return {a.name: a.qualified_joint_names() for a in self.rig.arms}
        prefix, suffix = self.options.action_topic.split('{arm}')
        pre, suf = _abs(self.options.namespace, prefix), suffix
        return {t[len(pre) : len(t) - len(suf)]: None for t in bag.topics if t.startswith(pre) and t.endswith(suf)}

    def _index_bag(self, bag_i: int, bag: BagReader) -> None:
        time_base = resolve_time_base(bag, self.options.time_base)
        self.time_bases.append(time_base)
        log.info('%s', time_base.line(bag.path))
        topics = self._bag_topics(bag, time_base.header)
        episodes, discarded = kept_episodes(bag, self.options.namespace)
        if discarded:
            self.skipped['discarded_episode'] += len(discarded)
            log.info('%s: leaving out discarded episode(s) %s', bag.path, ', '.join(e.label for e in discarded))
        segments = intervention_segments(bag, self.options.namespace)
        starts = [e.start_ns for e in episodes]
        stops = [e.end_ns if e.end_ns is not None else bag.end_ns + 1 for e in episodes]
        scan = self._scan_messages(bag, topics, starts, stops)
        where = str(bag.path)
        if not self.joint_names:
            self.joint_names = self.rig.all_joint_names() if self.rig is not None else list(scan.order)
        missing_joints = [j for j in self.joint_names if j not in scan.order]
        if missing_joints:
            raise DatasetError(f'{where}: joint_states never report joint(s) {missing_joints}')

        ep_offset = len(self.episodes)
        self._tasks.append(_labels(scan.labels[topics.task]))  # indexed by bag number
        self._subtasks.append(_labels(scan.labels.get(topics.subtask or '', [])))
        for k, episode in enumerate(episodes):
            idx = _EpisodeIndex(bag_i, episode.index, episode.label, (starts[k], stops[k]))
            self._fill_episode(idx, scan, k, topics.arms, where)
            self._plan_samples(idx)
            idx.intervention = in_interventions(self._receive_times(idx, idx.samples), segments)
            if self.options.action_source == 'commands':
                idx.switches = source_switches(segments)
            self.episodes.append(idx)
        log.info('%s: %d episode(s) indexed (episodes %d..)', where, len(episodes), ep_offset)

    def _bag_topics(self, bag: BagReader, header: bool) -> _BagTopics:
        """The topics to index in `bag` (learning the cameras from the first bag); refuses a bag lacking one."""
        opts = self.options
        ns = opts.namespace
        where = str(bag.path)
        if not self.cameras:
            if self.rig is not None:
                self.cameras = [c.name for c in self.rig.cameras]
            else:
                pre = _abs(ns, 'cameras/')
                self.cameras = sorted(t[len(pre) : -len('/image_raw')] for t in bag.topics
                                      if t.startswith(pre) and t.endswith('/image_raw'))  # fmt: skip
            if not self.cameras:
                raise DatasetError(f'{where}: no camera topics (cameras/<name>/image_raw) in the bag')
        cam_topics = {_abs(ns, T.camera_image(c)): c for c in self.cameras}
        js_topic = _abs(ns, T.JOINT_STATES)
        bag.require_topics(list(cam_topics))  # MissingTopicError names the missing cameras
        if js_topic not in bag.topics or bag.topics[js_topic].count == 0:
            raise MissingTopicError(f'{where}: no joint states ({js_topic}) in the bag')
        arms = self._arms(bag)
        act_topics: dict[str, str] = {}
        if opts.uses_topic:
            act_topics = {_abs(ns, opts.action_topic.format(arm=a)): a for a in arms}
            missing = [t for t in act_topics if t not in bag.topics or bag.topics[t].count == 0]
            if missing or not act_topics:
                what = 'leader positions' if opts.action_source == 'leader' else 'commands'
                raise MissingTopicError(
                    f'{where}: no {what} on {", ".join(missing) or _abs(ns, opts.action_topic)} '
                    "(use action_source='joint_states' for bags without commands, 'leader' for teleop "
                    "leader positions, 'commands' for the followers' commands)"
                )
        sub_topics = [_abs(ns, t) for t in opts.subtask_topics]
        for topic in [*cam_topics, js_topic, *act_topics]:
            if header and bag.topics[topic].type not in _STAMPED_TYPES:
                raise DatasetError(f"{where}: time base 'header' needs stamped messages; {topic} has none")
        return _BagTopics(
            cameras=cam_topics,
            joint_states=js_topic,
            actions=act_topics,
            arms=arms,
            task=_abs(ns, T.POLICY_TASK),
            subtask=next((t for t in sub_topics if t in bag.topics), None),
            header=header,
        )

    def _scan_messages(self, bag: BagReader, topics: _BagTopics, starts: list[int], stops: list[int]) -> _BagScan:
        """One pass over the bag's messages: per episode, frame times, joint positions and commands."""

        def episode_of(t: int) -> int:
            i = bisect.bisect_right(starts, t) - 1
            return i if i >= 0 and t < stops[i] else -1

        n_ep = len(starts)
        scan = _BagScan(
            cams=[{c: [] for c in self.cameras} for _ in range(n_ep)],
            joints=[{} for _ in range(n_ep)],
            js_times=[[] for _ in range(n_ep)],
            acts=[{a: [] for a in topics.arms} for _ in range(n_ep)],
            labels={topics.task: [], topics.subtask or '': []},
        )
        cam_topics, js_topic, act_topics = topics.cameras, topics.joint_states, topics.actions
        label_topics = (topics.task, topics.subtask)
        wanted = [*cam_topics, js_topic, *act_topics, topics.task] + ([topics.subtask] if topics.subtask else [])
        for msg in bag.messages(wanted):
            recv = msg.timestamp_ns
            if msg.topic in label_topics:
                scan.labels[msg.topic].append((recv, bag.decode(msg).data))
                continue
            ep = episode_of(recv)
            if ep < 0:
                continue
            sync = header_stamp_ns(msg.data) if topics.header else recv
            if msg.topic in cam_topics:
                scan.cams[ep][cam_topics[msg.topic]].append((sync, recv))
                continue
            decoded = bag.decode(msg)
            if msg.topic == js_topic:
                if len(decoded.name) != len(decoded.position):
                    self.skipped['malformed_joint_state'] += 1
                    continue
                scan.js_times[ep].append((recv, sync))
                joints = scan.joints[ep]
                for name, pos in zip(decoded.name, decoded.position, strict=True):
                    if name not in joints:
                        joints[name] = []
                        if name not in scan.order:
                            scan.order.append(name)
                    joints[name].append((sync, float(pos)))
            else:
                scan.acts[ep][act_topics[msg.topic]].append((sync, list(decoded.name), list(decoded.position)))
        return scan

    def _fill_episode(
        self, idx: _EpisodeIndex, scan: _BagScan, k: int, arms: dict[str, list[str] | None], where: str
    ) -> None:
        """Episode `k`'s arrays from the scan, in joint order; refuses commands that leave a joint out."""
        col = {n: i for i, n in enumerate(self.joint_names)}
        for cam, frames in scan.cams[k].items():
            arr = np.array(sorted(frames), dtype=np.int64).reshape(-1, 2)
            idx.cam_sync[cam], idx.cam_recv[cam] = arr[:, 0].copy(), arr[:, 1].copy()
        for name in self.joint_names:
            arr = np.array(sorted(scan.joints[k].get(name, [])), dtype=np.float64).reshape(-1, 2)
            idx.joint_t.append(arr[:, 0].astype(np.int64))
            idx.joint_q.append(arr[:, 1])
        js = np.array(sorted(scan.js_times[k]), dtype=np.int64).reshape(-1, 2)
        idx.js_recv, idx.js_sync = js[:, 0].copy(), js[:, 1].copy()
        if not self.options.uses_topic:
            return
        for arm, msgs in scan.acts[k].items():
            t, q, cols = _arm_actions(arm, arms[arm], msgs, col, where)
            if cols is None:
                continue
            idx.act_t.append(t)
            idx.act_q.append(q)
            idx.act_cols.append(cols)
        covered = set().union(*[set(c.tolist()) for c in idx.act_cols]) if idx.act_cols else set()
        uncovered = [self.joint_names[i] for i in range(len(self.joint_names)) if i not in covered]
        if uncovered and any(len(m) for m in scan.acts[k].values()):
            raise DatasetError(f'{where}: commands never cover joint(s) {uncovered}')

    def _plan_samples(self, ep: _EpisodeIndex) -> None:
        """Sample times of one episode, keeping those whose inputs are fresh and whose first action exists."""
        opts = self.options
        firsts, lasts = [], []
        for cam in self.cameras:
            t = ep.cam_sync[cam]
            if not len(t):
                self.skipped['episode_without_camera_' + cam] += 1
                return
            firsts.append(t[0])
        for t in ep.joint_t:
            if not len(t):
                self.skipped['episode_without_joint_states'] += 1
                return
            firsts.append(t[0])
            lasts.append(t[-1])
        if opts.uses_topic:
            if not ep.act_t or any(not len(t) for t in ep.act_t):
                self.skipped['episode_without_commands'] += 1
                return
            hold = int(1.5e9 / self.rate_hz)
            firsts += [t[0] for t in ep.act_t]
            lasts += [t[-1] + hold for t in ep.act_t]
        start, stop = max(firsts), min(lasts)
        if stop < start:
            self.skipped['episode_too_short'] += 1
            return
        period = 1e9 / self.sample_hz
        times = start + np.round(np.arange(int((stop - start) // period) + 1) * period).astype(np.int64)
        keep = np.ones(len(times), dtype=bool)
        cam_age = int(opts.camera_max_age_s * 1e9)
        for cam in self.cameras:
            frame = np.searchsorted(ep.cam_sync[cam], times, side='right') - 1
            fresh = (frame >= 0) & (times - ep.cam_sync[cam][np.maximum(frame, 0)] <= cam_age)
            self.skipped['stale_camera_' + cam] += int(np.sum(keep & ~fresh))
            keep &= fresh
            ep.frames[cam] = frame
        joint_age = int(opts.joint_max_age_s * 1e9)
        fresh = np.ones(len(times), dtype=bool)
        for t in ep.joint_t:
            i = np.searchsorted(t, times, side='right') - 1
            if opts.state_mode == 'latest':
                fresh &= (i >= 0) & (times - t[np.maximum(i, 0)] <= joint_age)
            else:
                j = np.minimum(i + 1, len(t) - 1)
                exact = (i >= 0) & (t[np.maximum(i, 0)] == times)
                fresh &= exact | ((i >= 0) & (i + 1 < len(t)) & (t[j] - t[np.maximum(i, 0)] <= joint_age))
        self.skipped['stale_joint_states'] += int(np.sum(keep & ~fresh))
        keep &= fresh
        ep.samples = times[keep]
        ep.frames = {c: f[keep].astype(np.int32) for c, f in ep.frames.items()}

    # -------------------------------------------------------------- access

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode number, sample number within it) of a dataset index."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f'sample {index} out of range (dataset has {len(self)})')
        ep = int(np.searchsorted(self._offsets, index, side='right')) - 1
        return ep, index - int(self._offsets[ep])

    def episode_range(self, episode: int) -> range:
        """Dataset indices of one episode's samples (in time order)."""
        return range(int(self._offsets[episode]), int(self._offsets[episode + 1]))

    def state_at(self, ep: _EpisodeIndex, t: int) -> np.ndarray:
        out = np.empty(len(self.joint_names))
        for j, (times, q) in enumerate(zip(ep.joint_t, ep.joint_q, strict=True)):
            if self.options.state_mode == 'latest':
                out[j] = q[int(np.searchsorted(times, t, side='right')) - 1]
            else:
                out[j] = np.interp(t, times, q)
        return out

    def actions_at(self, ep: _EpisodeIndex, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(H x J actions, H is_pad) for a sample at t."""
        steps = t + np.round(np.arange(self.chunk_size) * (1e9 / self.rate_hz)).astype(np.int64)
        out = np.empty((self.chunk_size, len(self.joint_names)))
        pad = np.zeros(self.chunk_size, dtype=bool)
        if self.options.uses_topic:
            hold = int(1.5e9 / self.rate_hz)
            for times, q, cols in zip(ep.act_t, ep.act_q, ep.act_cols, strict=True):
                i = np.searchsorted(times, steps, side='right') - 1
                pad |= steps > times[-1] + hold
                out[:, cols] = q[np.clip(i, 0, len(times) - 1)]
        else:
            for j, (times, q) in enumerate(zip(ep.joint_t, ep.joint_q, strict=True)):
                pad |= steps > times[-1]
                out[:, j] = np.interp(steps, times, q)
        if len(ep.switches):
            recv = self._receive_times(ep, steps)
            guard = int(self.options.switch_guard_s * 1e9)
            pad |= np.any(np.abs(recv[:, None] - ep.switches[None, :]) <= guard, axis=1)
        if pad.any():  # past the end: repeat the last real action
            first_pad = int(np.argmax(pad))
            pad[first_pad:] = True
            out[first_pad:] = out[max(first_pad - 1, 0)]
        return out, pad

    def _reader(self, bag: int) -> BagReader:
        if os.getpid() != self._pid:  # a DataLoader worker: never share the parent's file handles
            self._readers, self._pid = {}, os.getpid()
        if bag not in self._readers:
            self._readers[bag] = BagReader(self.paths[bag])
        return self._readers[bag]

    def read_frame(self, ep: _EpisodeIndex, camera: str, frame: int) -> np.ndarray:
        """Decode one camera frame (H x W x 3 uint8) with an indexed time-range read."""
        recv = int(ep.cam_recv[camera][frame])
        topic = _abs(self.options.namespace, T.camera_image(camera))
        reader = self._reader(ep.bag)
        want_sync = int(ep.cam_sync[camera][frame])
        for msg in reader.messages([topic], start_ns=recv, stop_ns=recv + 1):
            if self.time_bases[ep.bag].header and header_stamp_ns(msg.data) != want_sync:
                continue
            return image_to_rgb(reader.decode(msg))
        raise BagError(f'{self.paths[ep.bag]}: frame of {topic} at {recv} ns is no longer readable')

    def _receive_times(self, ep: _EpisodeIndex, times: np.ndarray) -> np.ndarray:
        """Sample times on the recorder's receive clock (markers and labels are placed on it)."""
        times = np.asarray(times, dtype=np.int64)
        if not self.time_bases[ep.bag].header:
            return times
        i = np.searchsorted(ep.js_sync, times, side='right') - 1
        recv = ep.js_recv[np.maximum(i, 0)] if len(ep.js_recv) else np.full(len(times), ep.recv_range[0])
        return np.where(i >= 0, recv, ep.recv_range[0]).astype(np.int64)

    def labels_at(self, ep: _EpisodeIndex, t: int) -> tuple[str, str]:
        """(task, subtask) in force at sample time t."""
        recv = int(self._receive_times(ep, np.array([t]))[0])
        task = self._tasks[ep.bag].at(recv) or self.options.default_task or ep.label
        return task, self._subtasks[ep.bag].at(recv)

    def sample(self, index: int, *, images: bool = True) -> dict[str, Any]:
        """One sample as numpy arrays (images H x W x 3); `images=False` skips reading frames."""
        e, k = self.locate(index)
        ep = self.episodes[e]
        t = int(ep.samples[k])
        actions, pad = self.actions_at(ep, t)
        task, subtask = self.labels_at(ep, t)
        out: dict[str, Any] = {
            'state': self.state_at(ep, t).astype(np.float32),
            'actions': actions.astype(np.float32),
            'actions_is_pad': pad,
            'task': task,
            'subtask': subtask,
            'episode': e,
            'episode_label': ep.label,
            'timestamp': (t - int(ep.samples[0])) * 1e-9,
            'time_ns': t,
            'bag': str(self.paths[ep.bag]),
            'intervention': bool(ep.intervention[k]) if len(ep.intervention) else False,
        }
        if images:
            out['images'] = {c: self.read_frame(ep, c, int(ep.frames[c][k])) for c in self.cameras}
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        s = self.sample(int(index))
        item = {k: v for k, v in s.items() if k not in ('images', 'state', 'actions', 'actions_is_pad')}
        item['images'] = {
            c: torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))) for c, img in s['images'].items()
        }
        item['state'] = torch.from_numpy(s['state'])
        item['actions'] = torch.from_numpy(s['actions'])
        item['actions_is_pad'] = torch.from_numpy(s['actions_is_pad'])
        return self.transform(item) if self.transform is not None else item

    def iter_episode(self, episode: int) -> Iterator[dict[str, Any]]:
        """An episode's samples in order, frames read in one sequential pass (export, evaluation).

        Much cheaper than indexing sample by sample: each chunk of the bag is read once and each
        frame decoded once, however many samples reuse it.
        """
        ep = self.episodes[episode]
        if not len(ep.samples):
            return
        reader = self._reader(ep.bag)
        topics = {_abs(self.options.namespace, T.camera_image(c)): c for c in self.cameras}
        lo = min(int(ep.cam_recv[c][ep.frames[c][0]]) for c in self.cameras)
        hi = max(int(ep.cam_recv[c][ep.frames[c][-1]]) for c in self.cameras) + 1
        stream = reader.messages(list(topics), start_ns=lo, stop_ns=hi)
        latest: dict[str, Any] = {}  # camera -> newest message read from the stream
        decoded: dict[str, tuple[int, np.ndarray]] = {}  # camera -> (frame number, image)
        first = int(self._offsets[episode])
        for k in range(len(ep.samples)):
            s = self.sample(first + k, images=False)
            s['images'] = {}
            for cam in self.cameras:
                want = int(ep.frames[cam][k])
                if cam in decoded and decoded[cam][0] == want:
                    s['images'][cam] = decoded[cam][1]
                    continue
                recv = int(ep.cam_recv[cam][want])
                while cam not in latest or latest[cam].timestamp_ns < recv:
                    msg = next(stream, None)
                    if msg is None:
                        break
                    latest[topics[msg.topic]] = msg
                msg = latest.get(cam)
                sync_ok = msg is not None and (
                    not self.time_bases[ep.bag].header or header_stamp_ns(msg.data) == int(ep.cam_sync[cam][want])
                )
                if msg is not None and msg.timestamp_ns == recv and sync_ok:
                    img = image_to_rgb(reader.decode(msg))
                else:  # out of receive order (header time base) or gone: an indexed read
                    img = self.read_frame(ep, cam, want)
                decoded[cam] = (want, img)
                s['images'][cam] = img
            yield s

    def describe(self) -> dict[str, Any]:
        return {
            'bags': [str(p) for p in self.paths],
            'samples': len(self),
            'episodes': len(self.episodes),
            'cameras': self.cameras,
            'joint_names': self.joint_names,
            'chunk_size': self.chunk_size,
            'rate_hz': self.rate_hz,
            'sample_hz': self.sample_hz,
            'time_bases': [tb.line(p) for tb, p in zip(self.time_bases, self.paths, strict=True)],
            'skipped': dict(sorted((k, v) for k, v in self.skipped.items() if v)),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state['_readers'] = {}
        return state

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers = {}


def _labels(entries: list[tuple[int, str]]) -> _Labels:
    entries = sorted(entries, key=lambda e: e[0])
    return _Labels(np.array([e[0] for e in entries], dtype=np.int64), [e[1].strip() for e in entries])


def _arm_actions(
    arm: str,
    arm_joints: list[str] | None,
    msgs: list[tuple[int, list[str], list[float]]],
    col: dict[str, int],
    where: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One arm's command messages -> (times, positions, columns) in the dataset's joint order."""
    names = arm_joints
    if names is None:  # no rig: the names the messages carry
        names = next((m[1] for m in msgs if m[1]), None)
        if names is None:
            return np.zeros(0, np.int64), np.zeros((0, 0)), None
    cols = [col.get(n) for n in names]
    keep = [i for i, c in enumerate(cols) if c is not None]
    if not keep:
        return np.zeros(0, np.int64), np.zeros((0, 0)), None
    times, rows = [], []
    for t, msg_names, pos in sorted(msgs, key=lambda m: m[0]):
        if msg_names:
            if len(msg_names) != len(pos):
                raise DatasetError(f'{where}: a command for arm {arm} has {len(msg_names)} names, {len(pos)} positions')
            by_name = dict(zip(msg_names, pos, strict=True))
            if any(names[i] not in by_name for i in keep):  # partial command: fill from the previous one
                if not rows:
                    continue
                row = rows[-1].copy()
                for i in keep:
                    row[keep.index(i)] = by_name.get(names[i], row[keep.index(i)])
            else:
                row = np.array([by_name[names[i]] for i in keep])
        else:
            if len(pos) != len(names):
                raise DatasetError(f'{where}: an unnamed command for arm {arm} has {len(pos)} positions, '
                                   f'expected {len(names)}')  # fmt: skip
            row = np.array([pos[i] for i in keep])
        times.append(t)
        rows.append(row)
    return (
        np.array(times, dtype=np.int64),
        np.array(rows, dtype=np.float64).reshape(len(rows), len(keep)),
        np.array([cols[i] for i in keep]),
    )


ACTION_SOURCE_CHOICES = ('leader', 'command', 'commands', 'joint_states')
"""What the CLI's --action-source accepts: 'command' is 'commands' (the followers' joint_command)."""


def choose_action_source(bags: Sequence[str | Path], requested: str | None, namespace: str = '/') -> str:
    """The dataset's action_source for ``bags`` and the CLI's ``--action-source`` (None: not given).

    A bag of teleoperated demonstrations (``record-episodes``) holds two candidate actions: the leaders'
    positions and the commands the followers received. They differ (the teleop node's ramp, a
    takeover's muted arms, the policy's commands outside takeovers), so with such a bag the choice
    must be explicit: ValueError naming the bag when ``requested`` is None there. Elsewhere the
    default stays the followers' commands.
    """
    if requested is not None:
        if requested not in ACTION_SOURCE_CHOICES:
            raise ValueError(f'--action-source must be one of {ACTION_SOURCE_CHOICES}, got {requested!r}')
        return 'commands' if requested == 'command' else requested
    prefix, suffix = _abs(namespace, 'leader/'), '/joint_states'
    for path in bags:
        with BagReader(Path(path).expanduser()) as bag:
            if any(t.startswith(prefix) and t.endswith(suffix) for t in bag.topics):
                raise ValueError(
                    f"{path}: holds both the leaders' positions (leader/<arm>/joint_states) and the followers' "
                    'commands (arms/<arm>/joint_command): choose the action with --action-source leader|command'
                )
    return 'commands'
