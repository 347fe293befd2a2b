"""export-lerobot: the LeRobot v3.0 layout, read back with pyarrow/OpenCV and checked against the bag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.datasets import CAMERAS, JOINT_NAMES, MS, T0, TASK, command_value, frame_value, state_value, write_bag


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> tuple[Path, dict]:
    from bimanual_vla.learning.lerobot_export import export_lerobot

    root = tmp_path_factory.mktemp('lerobot')
    bag = write_bag(root / 'bag')
    summary = export_lerobot([bag], root / 'ds', fps=50, options=_opts())
    return root / 'ds', summary


def _opts():
    from bimanual_vla.learning.dataset import DatasetOptions

    return DatasetOptions(rig='aloha_sim')


def test_layout_and_info(exported) -> None:
    out, summary = exported
    for rel in ('meta/info.json', 'meta/stats.json', 'meta/tasks.parquet', 'meta/episodes/chunk-000/file-000.parquet',
                'data/chunk-000/file-000.parquet'):  # fmt: skip
        assert (out / rel).is_file(), rel
    info = json.loads((out / 'meta/info.json').read_text())
    assert info['codebase_version'] == 'v3.0' and info['fps'] == 50 and info['robot_type'] == 'aloha_sim'
    assert info['data_path'].format(chunk_index=0, file_index=0) == 'data/chunk-000/file-000.parquet'
    for cam in CAMERAS:
        key = f'observation.images.{cam}'
        assert (out / info['video_path'].format(video_key=key, chunk_index=0, file_index=0)).is_file()
        assert info['features'][key]['dtype'] == 'video' and info['features'][key]['shape'] == [6, 8, 3]
        assert info['features'][key]['info']['video.codec'] == 'av1'  # libsvtav1, LeRobot's default
    assert info['features']['action']['names'] == JOINT_NAMES and info['features']['action']['shape'] == [14]
    # The right_wrist gap in episode 'b' splits it: episodes a, b (before the gap), b (after).
    assert summary['episodes'] == info['total_episodes'] == 3 and summary['episodes_split_at_gaps'] == 1
    assert info['total_frames'] == summary['frames'] and info['total_tasks'] == 1
    assert info['splits'] == {'train': '0:3'}


def test_frames_match_the_bag(exported) -> None:
    out, summary = exported
    data = pq.read_table(out / 'data/chunk-000/file-000.parquet').to_pydict()
    n = summary['frames']
    assert data['index'] == list(range(n))
    episodes = pq.read_table(out / 'meta/episodes/chunk-000/file-000.parquet').to_pydict()
    assert episodes['episode_index'] == [0, 1, 2]
    assert episodes['tasks'] == [[TASK]] * 3
    assert episodes['dataset_to_index'][-1] == n and sum(episodes['length']) == n
    assert episodes['dataset_from_index'][1:] == episodes['dataset_to_index'][:-1]
    first = 0
    for e, length in enumerate(episodes['length']):
        rows = range(first, first + length)
        assert [data['episode_index'][i] for i in rows] == [e] * length
        assert [data['frame_index'][i] for i in rows] == list(range(length))
        np.testing.assert_allclose([data['timestamp'][i] for i in rows], np.arange(length) / 50, atol=1e-6)
        first += length
    # Episode 0 starts at the first frame of every input (t0 + 4 ms); frames are 20 ms apart.
    for i in (0, 10, 57):
        t = T0 + 4 * MS + i * 20 * MS
        tick_js = [(t - T0 - (1 + a) * MS) // (20 * MS) for a in range(2)]
        tick_cmd = (t - T0 - 3 * MS) // (20 * MS)
        np.testing.assert_allclose(
            data['observation.state'][i], [state_value(a, j, tick_js[a]) for a in range(2) for j in range(7)], atol=1e-6
        )
        np.testing.assert_allclose(
            data['action'][i], [command_value(a, j, tick_cmd) for a in range(2) for j in range(7)], atol=1e-6
        )
    subtasks = pq.read_table(out / 'meta/subtasks.parquet').to_pydict()
    assert subtasks['subtask'][data['subtask_index'][0]] == 'reach the cube'
    assert subtasks['subtask'][data['subtask_index'][n - 1]] == 'lift it'
    tasks = pq.read_table(out / 'meta/tasks.parquet')
    assert tasks.to_pydict() == {'task_index': [0], 'task': [TASK]}
    assert json.loads(tasks.schema.metadata[b'pandas'])['index_columns'] == ['task']  # pandas restores the index


def test_stats_match_the_data(exported) -> None:
    out, _ = exported
    stats = json.loads((out / 'meta/stats.json').read_text())
    data = pq.read_table(out / 'data/chunk-000/file-000.parquet').to_pydict()
    action = np.asarray(data['action'])
    np.testing.assert_allclose(stats['action']['mean'], action.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats['action']['max'], action.max(axis=0), rtol=1e-6)
    assert stats['action']['count'] == [len(action)]
    assert set(stats['action']) >= {'min', 'max', 'mean', 'std', 'count', 'q01', 'q99'}
    top = stats['observation.images.top']
    assert np.asarray(top['mean']).shape == (3, 1, 1)
    assert 0.0 <= top['min'][0][0][0] <= top['max'][0][0][0] <= 1.0


def test_videos_hold_every_frame_in_order(exported) -> None:
    import av

    out, summary = exported
    episodes = pq.read_table(out / 'meta/episodes/chunk-000/file-000.parquet').to_pydict()
    for c, cam in enumerate(CAMERAS):
        key = f'observation.images.{cam}'
        with av.open(str(out / f'videos/{key}/chunk-000/file-000.mp4')) as container:
            frames = [float(f.to_ndarray(format='rgb24').mean()) for f in container.decode(video=0)]
        assert len(frames) == summary['frames'], cam
        assert episodes[f'videos/{key}/to_timestamp'][-1] == pytest.approx(summary['frames'] / 50)
        # Frame i shows the camera image in force at t0 + 4 ms + i * 20 ms (a 10 Hz camera: 5 frames each).
        for i in (0, 4, 5, 30, 89):  # all in the first episode
            expected = frame_value(c, (i * 20) // 100)
            assert abs(frames[i] - expected) < 6, (cam, i, frames[i], expected)  # lossy AV1


def test_existing_output_is_refused_and_nothing_is_left_behind(exported, tmp_path) -> None:
    from bimanual_vla.learning.lerobot_export import ExportError, export_lerobot

    out, _ = exported
    with pytest.raises(ExportError, match='already exists'):
        export_lerobot([tmp_path / 'whatever'], out)
    from helpers.datasets import BagSpec

    from bimanual_vla.bags.read import MissingTopicError

    bad = write_bag(tmp_path / 'nocam', BagSpec(cameras=('top',)))
    with pytest.raises(MissingTopicError, match='left_wrist'):
        export_lerobot([bad], tmp_path / 'ds', options=_opts())
    assert not (tmp_path / 'ds').exists() and not (tmp_path / 'ds.partial').exists()


def test_cli_exports(tmp_path) -> None:
    from helpers.datasets import BagSpec

    from bimanual_vla.cli.main import main

    bag = write_bag(tmp_path / 'bag', BagSpec(end_s=1.0, camera_gap=None, markers=False))
    assert main(['export-lerobot', str(bag), '--out', str(tmp_path / 'ds'), '--fps', '25', '--rig', 'aloha_sim']) == 0
    info = json.loads((tmp_path / 'ds/meta/info.json').read_text())
    assert info['fps'] == 25 and info['total_episodes'] == 1
    assert 20 <= info['total_frames'] <= 25  # ~1 s at 25 fps
    assert main(['export-lerobot', str(bag), '--out', str(tmp_path / 'ds'), '--rig', 'aloha_sim']) == 2  # exists
