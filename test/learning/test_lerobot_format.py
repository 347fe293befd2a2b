"""The export as LeRobot's own code reads it: huggingface/lerobot at 7427f318 (v0.6.2, 2026-08-23).

LeRobot cannot be installed beside this project (it needs Python >= 3.12), so each test below
reproduces the checks of one of LeRobot's code paths, named in its docstring, on an exported
dataset: the codec check every dataset tool runs, the re-encode of ``delete_episodes`` /
``split_dataset``, the per-episode statistics they re-aggregate, the image quantiles of
``compute_stats``, the data parquet schema the reader casts to, and the subtask language column.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.datasets import CAMERAS, frame_value, write_bag

# src/lerobot/configs/video.py
VALID_VIDEO_CODECS = frozenset({'h264', 'hevc', 'libsvtav1', 'libaom-av1', 'auto', 'h264_videotoolbox',
                                'hevc_videotoolbox', 'h264_nvenc', 'hevc_nvenc', 'h264_vaapi', 'h264_qsv'})  # fmt: skip
VIDEO_CODECS_ALIASES = {'av1': 'libsvtav1'}
VIDEO_ENCODER_INFO_FIELD_NAMES = ('g', 'crf', 'preset', 'fast_decode', 'extra_options', 'video_backend')
# src/lerobot/datasets/language.py
PERSISTENT_ROW_FIELDS = ('role', 'content', 'style', 'timestamp', 'camera', 'tool_calls')
LANGUAGE_COLUMNS = ('language_persistent', 'language_events')
# src/lerobot/datasets/compute_stats.py
DEFAULT_QUANTILES = [0.01, 0.10, 0.50, 0.90, 0.99]
FPS = 50


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> Path:
    from bimanual_vla.learning.dataset import DatasetOptions
    from bimanual_vla.learning.lerobot_export import export_lerobot

    root = tmp_path_factory.mktemp('lerobot_format')
    bag = write_bag(root / 'bag')  # 3 exported episodes (one split at a camera gap), 3 subtasks
    export_lerobot([bag], root / 'ds', fps=FPS, options=DatasetOptions(rig='aloha_sim'))
    return root / 'ds'


def _info(root: Path) -> dict:
    return json.loads((root / 'meta/info.json').read_text())


def _encoder_from_video_info(video_info: dict) -> dict:
    """``encoder_config_from_video_info`` -> ``RGBEncoderConfig.__post_init__`` (resolve_vcodec, validate).

    src/lerobot/configs/video.py and src/lerobot/datasets/pyav_utils.py
    (detect_available_encoders_pyav, check_video_encoder_parameters_pyav): raises ValueError as LeRobot does.
    """
    import av

    kwargs = {'vcodec': video_info.get('video.codec', 'libsvtav1'),
              'pix_fmt': video_info.get('video.pix_fmt', 'yuv420p'), 'g': 2, 'crf': 30, 'preset': None,
              'fast_decode': 0}  # fmt: skip
    for name in VIDEO_ENCODER_INFO_FIELD_NAMES:
        value = video_info.get(f'video.{name}')
        if value is None or (name == 'extra_options' and not value):
            continue
        kwargs[name] = value
    vcodec = VIDEO_CODECS_ALIASES.get(kwargs['vcodec'], kwargs['vcodec'])
    if vcodec not in VALID_VIDEO_CODECS:
        raise ValueError(f"Invalid vcodec '{vcodec}'. Must be one of: {sorted(VALID_VIDEO_CODECS)}")
    try:
        codec = av.codec.Codec(vcodec, 'w')
    except Exception as exc:
        raise ValueError(f'Unsupported video codec: {vcodec}') from exc
    assert codec.type == 'video'
    if kwargs['preset'] is None and vcodec == 'libsvtav1':
        kwargs['preset'] = 12
    formats = [f.name for f in (codec.video_formats or [])]
    if formats and kwargs['pix_fmt'] not in formats:
        raise ValueError(f'pix_fmt={kwargs["pix_fmt"]!r} is not supported by codec {vcodec!r}')
    g = kwargs['g']
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ValueError(f'g={g!r} must be a positive integer')
    # LeRobot pins av 15, whose Codec has `descriptor`; newer av dropped it: range checks only where it is
    options = {o.name: o for o in codec.descriptor.options} if hasattr(codec, 'descriptor') else {}
    opts = {'g': str(g)}
    for key in ('crf', 'preset'):
        if kwargs[key] is None:
            continue
        opts[key] = str(kwargs[key])
        opt = options.get(key)
        if opt is not None and opt.type.name in ('INT', 'INT64', 'UINT64', 'FLOAT', 'DOUBLE'):
            lo, hi = float(opt.min), float(opt.max)
            if lo < hi and not lo <= float(kwargs[key]) <= hi:
                raise ValueError(f'{key}={kwargs[key]} is out of range for codec {vcodec!r}')
    if vcodec == 'libsvtav1':
        opts['svtav1-params'] = f'fast-decode={max(0, min(2, kwargs["fast_decode"]))}'
    return {'vcodec': vcodec, 'pix_fmt': kwargs['pix_fmt'], 'options': opts}


def test_every_video_passes_the_encoder_check_of_lerobots_dataset_tools(exported) -> None:
    """delete_episodes / split_dataset (src/lerobot/datasets/dataset_tools.py, _copy_and_reindex_videos) build
    their encoder with encoder_config_from_video_info (src/lerobot/configs/video.py); mpeg4 fails it."""
    info = _info(exported)
    videos = {k: f for k, f in info['features'].items() if f['dtype'] == 'video'}
    assert sorted(videos) == sorted(f'observation.images.{c}' for c in CAMERAS)
    for key, feature in videos.items():
        video_info = feature['info']
        # the keys get_video_info (src/lerobot/datasets/video_utils.py) writes, from the stream and the encoder
        assert video_info['video.codec'] == 'av1' and video_info['video.pix_fmt'] == 'yuv420p', key
        assert (video_info['video.height'], video_info['video.width']) == tuple(feature['shape'][:2])
        assert video_info['video.fps'] == info['fps'] and video_info['video.channels'] == 3
        assert video_info['has_audio'] is False and video_info['is_depth_map'] is False
        assert {f'video.{n}' for n in VIDEO_ENCODER_INFO_FIELD_NAMES} <= set(video_info)
        encoder = _encoder_from_video_info(video_info)
        assert encoder['vcodec'] == 'libsvtav1' and encoder['options']['preset'] == '12'
    with pytest.raises(ValueError, match="Invalid vcodec 'mpeg4'"):  # what the mp4v export got
        _encoder_from_video_info({**video_info, 'video.codec': 'mpeg4'})


def test_deleting_an_episode_re_encodes_the_kept_frames_as_lerobot_does(exported, tmp_path) -> None:
    """delete_episodes([1]) (src/lerobot/datasets/dataset_tools.py): _copy_and_reindex_videos computes frame
    ranges from the episodes' from/to_timestamp and asserts them against `length`, then
    _keep_episodes_from_video_with_av decodes the file and re-encodes the kept ranges."""
    import av

    info = _info(exported)
    episodes = pq.read_table(exported / 'meta/episodes/chunk-000/file-000.parquet').to_pylist()
    keep = [0, 2]
    key = 'observation.images.top'
    ranges = []
    for ep in keep:
        row = next(r for r in episodes if r['episode_index'] == ep)
        from_frame = round(row[f'videos/{key}/from_timestamp'] * info['fps'])
        to_frame = round(row[f'videos/{key}/to_timestamp'] * info['fps'])
        assert row['length'] == to_frame - from_frame, 'Episode length mismatch'
        ranges.append((from_frame, to_frame))
    encoder = _encoder_from_video_info(info['features'][key]['info'])
    src = exported / info['video_path'].format(video_key=key, chunk_index=0, file_index=0)
    dst = tmp_path / 'kept.mp4'
    source_frames = []
    with av.open(str(src)) as inp, av.open(str(dst), mode='w') as out:
        v_in = inp.streams.video[0]
        v_out = out.add_stream(encoder['vcodec'], rate=Fraction(info['fps']).limit_denominator(1000),
                               options=encoder['options'])  # fmt: skip
        v_out.width, v_out.height = v_in.codec_context.width, v_in.codec_context.height
        v_out.pix_fmt = encoder['pix_fmt']
        v_out.time_base = Fraction(1, int(info['fps']))
        out.start_encoding()
        n = 0
        for frame in inp.decode(v_in):
            if any(lo <= n < hi for lo, hi in ranges):
                source_frames.append(frame.to_ndarray(format='rgb24'))
                new = frame.reformat(width=v_out.width, height=v_out.height, format=v_out.pix_fmt)
                new.pts, new.time_base = len(source_frames) - 1, Fraction(1, int(info['fps']))
                for pkt in v_out.encode(new):
                    out.mux(pkt)
            n += 1
        for pkt in v_out.encode():
            out.mux(pkt)
    assert n == info['total_frames']  # the source video holds every frame
    with av.open(str(dst)) as kept:
        frames = [f.to_ndarray(format='rgb24') for f in kept.decode(video=0)]
    assert len(frames) == sum(hi - lo for lo, hi in ranges) == len(source_frames)
    assert max(abs(float(a.mean()) - float(b.mean())) for a, b in zip(frames, source_frames, strict=True)) < 3


def _lerobot_running_stats(batch: np.ndarray, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """RunningQuantileStats(num_quantile_bins=5000): one update() then get_statistics(), as written in
    src/lerobot/datasets/compute_stats.py (kept independent of bimanual_vla.learning.lerobot_stats).
    `dtype` float64 evaluates the same formulas without float32 rounding."""
    batch = batch.reshape(-1, batch.shape[-1])
    batch = batch.astype(np.result_type(batch.dtype, dtype), copy=False)
    count = batch.shape[0]
    mean, mean_sq = np.mean(batch, axis=0), np.mean(batch**2, axis=0)
    lo, hi = np.min(batch, axis=0), np.max(batch, axis=0)
    stats = {'min': lo, 'max': hi, 'mean': mean, 'std': np.sqrt(np.maximum(0, mean_sq - mean**2)),
             'count': np.array([count])}  # fmt: skip
    for q in DEFAULT_QUANTILES:
        values = []
        for i in range(batch.shape[1]):
            edges = np.linspace(lo[i] - 1e-10, hi[i] + 1e-10, 5000 + 1)
            hist, _ = np.histogram(batch[:, i], bins=edges)
            cumsum = np.cumsum(hist)
            target = q * count
            idx = np.searchsorted(cumsum, target)
            if idx == 0:
                values.append(edges[0])
            elif idx >= len(cumsum):
                values.append(edges[-1])
            else:
                before = cumsum[idx - 1]
                in_bin = cumsum[idx] - before
                values.append(edges[idx] if in_bin == 0 else edges[idx] + (target - before) / in_bin
                              * (edges[idx + 1] - edges[idx]))  # fmt: skip
        stats[f'q{int(q * 100):02d}'] = np.array(values)
    return stats


def _episode_stats(exported: Path) -> list[dict[str, dict[str, np.ndarray]]]:
    """Per episode, the stats/* columns as _copy_and_reindex_episodes_metadata reads them: one row per episode,
    `stats/<feature>/<stat>` split on '/', image stats back to (C, 1, 1) (src/lerobot/datasets/dataset_tools.py;
    it reads the row with pandas, not installed here: pyarrow gives the same values as nested lists)."""
    info = _info(exported)
    out = []
    for row in pq.read_table(exported / 'meta/episodes/chunk-000/file-000.parquet').to_pylist():
        episode_stats: dict[str, dict[str, np.ndarray]] = {}
        for key, value in row.items():
            if not key.startswith('stats/'):
                continue
            feature, stat = key.replace('stats/', '').split('/')
            value = np.asarray(value)
            if info['features'][feature]['dtype'] in ('image', 'video') and stat != 'count':
                value = np.asarray(value, dtype=np.float64).reshape(-1, 1, 1)
            episode_stats.setdefault(feature, {})[stat] = value
        out.append(episode_stats)
    return out


def test_per_episode_stats_are_what_lerobots_tools_re_aggregate(exported) -> None:
    """stats/<feature>/<stat> for every non-language feature, shapes as compute_stats._assert_type_and_shape
    demands (count (1,), images (3,1,1)); their aggregate_stats is meta/stats.json
    (src/lerobot/datasets/compute_stats.py, dataset_tools._copy_and_reindex_episodes_metadata)."""
    from bimanual_vla.learning.lerobot_stats import aggregate_stats

    info = _info(exported)
    stats_keys = {'min', 'max', 'mean', 'std', 'count', 'q01', 'q10', 'q50', 'q90', 'q99'}
    per_episode = _episode_stats(exported)
    assert len(per_episode) == info['total_episodes'] == 3
    wanted = {k for k, f in info['features'].items() if f['dtype'] not in ('string', 'language')}
    for ep in per_episode:
        assert set(ep) == wanted
        for feature, stats in ep.items():
            assert set(stats) == stats_keys, feature
            for stat, value in stats.items():
                value = np.asarray(value)
                assert value.ndim >= 1
                if stat == 'count':
                    assert value.shape == (1,)
                elif 'image' in feature:
                    assert value.shape in ((3, 1, 1), (1, 1, 1)), (feature, stat)
    data = pq.read_table(exported / 'data/chunk-000/file-000.parquet', columns=['episode_index', 'observation.state'])
    episode_of = np.asarray(data.column('episode_index').to_pylist())
    all_states = np.asarray(data.column('observation.state').to_pylist(), dtype=np.float32)
    for e, ep in enumerate(per_episode):
        rows = np.flatnonzero(episode_of == e)
        state = all_states[rows]
        expected = _lerobot_running_stats(state)
        for stat in stats_keys - {'count'}:
            np.testing.assert_allclose(ep['observation.state'][stat], expected[stat], rtol=1e-6, atol=1e-7)
        assert ep['observation.state']['count'].tolist() == [len(rows)]
        assert ep['timestamp']['count'].tolist() == [len(rows)] and np.asarray(ep['timestamp']['max']).shape == (1,)
    on_disk = json.loads((exported / 'meta/stats.json').read_text())
    aggregated = aggregate_stats([{f: {s: np.asarray(v) for s, v in st.items()} for f, st in ep.items()}
                                  for ep in per_episode])  # fmt: skip
    assert set(on_disk) == wanted
    for feature, stats in aggregated.items():
        for stat, value in stats.items():
            # float32 statistics aggregated in float32 (export) or float64 (read back here)
            np.testing.assert_allclose(on_disk[feature][stat], value, rtol=1e-6, err_msg=f'{feature}/{stat}')
    assert on_disk['action']['count'] == [info['total_frames']]


def test_image_stats_and_quantiles_are_lerobots_on_the_encoded_frames(exported) -> None:
    """compute_episode_stats (src/lerobot/datasets/compute_stats.py): sample_images of the episode, axes (0, 2, 3),
    RunningQuantileStats over every pixel, / 255, squeezed to (3, 1, 1); count = frames sampled."""
    from bimanual_vla.learning.lerobot_stats import estimate_num_samples, sample_indices

    # estimate_num_samples' docstring table in compute_stats.py
    assert [estimate_num_samples(n) for n in (50, 400, 1000, 2000, 5000, 10000, 20000)] == [
        50, 100, 177, 299, 594, 1000, 1681]  # fmt: skip
    per_episode = _episode_stats(exported)
    episodes = pq.read_table(exported / 'meta/episodes/chunk-000/file-000.parquet').to_pydict()
    length = int(episodes['length'][0])  # episode 0 starts at t0 + 4 ms: frame i shows camera frame i * 20 // 100
    for c, cam in enumerate(CAMERAS):
        idx = sample_indices(length)
        pixels = np.stack([np.full((3, 6, 8), frame_value(c, (i * 20) // 100), np.uint8) for i in idx])
        batch = pixels.transpose(0, 2, 3, 1).reshape(-1, 3)
        lerobot, exact = _lerobot_running_stats(batch), _lerobot_running_stats(batch, np.float64)
        got = per_episode[0][f'observation.images.{cam}']
        assert np.asarray(got['count']).tolist() == [len(idx)]
        for stat in ('min', 'max', 'mean', 'std', 'q01', 'q10', 'q50', 'q90', 'q99'):
            value = np.asarray(got[stat]).reshape(3)
            np.testing.assert_allclose(value, exact[stat] / 255.0, rtol=1e-6, atol=1e-7, err_msg=f'{cam} {stat}')
            # LeRobot sums pixels in float32: its std (E[x^2] - E[x]^2) drifts by a few 1e-4
            np.testing.assert_allclose(value, lerobot[stat] / 255.0, rtol=1e-3 if stat == 'std' else 1e-6,
                                       atol=1e-7, err_msg=f'{cam} {stat}')  # fmt: skip


def test_data_parquet_schema_is_what_lerobot_casts_it_to(exported) -> None:
    """get_hf_features_from_features (src/lerobot/datasets/feature_utils.py): one column per non-video feature,
    (n,) vectors fixed-length float32, (1,) scalars; language columns declared in info.json
    (dataset_reader._validate_language_columns_declared); one row group per episode
    (io_utils.write_table_one_row_group_per_episode)."""
    import pyarrow as pa

    info = _info(exported)
    path = exported / info['data_path'].format(chunk_index=0, file_index=0)
    schema = pq.read_schema(path)
    columns = {k for k, f in info['features'].items() if f['dtype'] != 'video'}
    assert set(schema.names) == columns
    assert set(LANGUAGE_COLUMNS) <= columns  # present in parquet -> declared in the metadata
    for key, feature in info['features'].items():
        if feature['dtype'] in ('video', 'language'):
            if feature['dtype'] == 'language':
                assert feature['shape'] == [1] and feature['names'] is None
            continue
        field = schema.field(key).type
        if feature['shape'] == [1]:
            assert field == pa.from_numpy_dtype(np.dtype(feature['dtype'])), key
        else:
            assert pa.types.is_fixed_size_list(field) and field.list_size == feature['shape'][0], key
            assert field.value_type == pa.float32()
    persistent = schema.field('language_persistent').type
    assert pa.types.is_list(persistent) and [f.name for f in persistent.value_type] == list(PERSISTENT_ROW_FIELDS)
    parquet = pq.ParquetFile(path)
    assert parquet.num_row_groups == info['total_episodes']
    for g in range(parquet.num_row_groups):
        assert len(set(parquet.read_row_group(g, columns=['episode_index']).column(0).to_pylist())) == 1


def test_subtasks_resolve_from_language_persistent_as_lerobot_resolves_them(exported) -> None:
    """active_at(t, persistent, style='subtask') (src/lerobot/datasets/language_render.py): the newest row of the
    style at or before t; rows as the annotation writer normalises them (annotations/steerable_pipeline/writer.py)."""
    data = pq.read_table(exported / 'data/chunk-000/file-000.parquet').to_pylist()
    subtasks = pq.read_table(exported / 'meta/subtasks.parquet').to_pydict()['subtask']
    seen = set()
    for row in data:
        persistent = row['language_persistent']
        assert row['language_events'] == []
        for r in persistent:
            assert (r['role'], r['style'], r['camera'], r['tool_calls']) == ('assistant', 'subtask', None, None)
            assert r['content']
        matches = [r for r in persistent if r['style'] == 'subtask' and r['timestamp'] <= row['timestamp']]
        active = max(matches, key=lambda r: r['timestamp'])['content'] if matches else ''
        assert active == subtasks[row['subtask_index']], (row['episode_index'], row['frame_index'])
        seen.add(active)
    assert seen == {'reach the cube', 'grasp the cube', 'lift it'}
