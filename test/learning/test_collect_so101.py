"""`bimanual-vla collect` on the SO-101 twin: the expert's commands through the real arm_drivers over the
emulated STS3215 buses, recorded as a real rig records (joint_states from the drivers, joint_command,
cameras, subtasks, task, episode markers), in a bag marked with the sim time base."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.so101_twin import twin_rig_file

SO101_JOINTS = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
# An episode reset power-cycles the emulated servos (sim/servo_bus.py) so the drivers restart their goals
# from the teleported arms; on a loaded machine a driver can take a few seconds to get its bus back, so
# the episodes are long enough for the drivers to be back within each, and no count depends on it.
EPISODE_S = 4.0


def test_the_twin_collects_its_own_tasks_in_real_time_and_says_so(tmp_path):
    from bimanual_vla.learning.collect import TASK_TEXT, CollectSettings

    settings = CollectSettings(task=None, rig_name='so101_sim', episodes=1)
    assert settings.task == 'handover_cube'  # the rig's sim.task
    assert settings.real_time_factor == 1.0  # the rig's: its drivers run on wall time
    assert settings.sim_time_nodes() is None  # the drivers stamp joint_states on sim time, as on `run`
    assert settings.sim_parameters()['task'] == 'handover_cube' and settings.sim_parameters()['expert'] is True
    assert CollectSettings(task='lift_bar', rig_name='so101_sim').task == 'lift_bar'
    assert CollectSettings(task=None).task == 'transfer_cube' and CollectSettings(task=None).real_time_factor == 0.0
    assert CollectSettings(task=None).sim_time_nodes() is False
    assert TASK_TEXT['handover_cube'] == 'hand the cube over from the right arm to the left arm'
    assert TASK_TEXT['lift_bar'] == 'lift the bar with both arms'


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        (
            ['--rig', 'so101_sim', '--task', 'transfer_cube'],
            "task 'transfer_cube' is not one of rig 'so101_sim''s: handover_cube, lift_bar",
        ),
        (['--task', 'lift_bar'], "task 'lift_bar' is not one of rig 'aloha_sim''s: transfer_cube, insertion"),
        (
            ['--rig', 'so101_sim', '--real-time-factor', '0'],
            "real_time_factor must be in (0, 1] on the twin 'so101_sim'",
        ),
        (
            ['--rig', 'so101_sim', '--expert-noise', '0.01', '--expert-time-warp', '0.2'],
            "the SO-101 twin's expert takes only the DART noise (--expert-noise), not for 'handover_cube'",
        ),
        (['--rig', 'so101_bimanual'], "rig 'so101_bimanual' is not simulated (no sim: block)"),
    ],
)
def test_a_task_or_setting_the_rig_cannot_run_is_one_line_and_status_2(tmp_path, capsys, argv, message):
    from bimanual_vla.cli.main import main

    assert main(['collect', str(tmp_path / 'bag'), '--no-progress', *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: collect: ') and message in err and err.count('\n') == 1
    assert not (tmp_path / 'bag').exists()


def test_every_task_a_policy_is_told_is_one_line_the_tiny_tokenizer_knows_every_word_of():
    """A prompt word outside the tiny checkpoint's vocabulary would reach the model as <unk>."""
    from bimanual_vla.learning.tasks import TASK_TEXT
    from bimanual_vla.learning.tiny_checkpoint import VOCABULARY

    for text in TASK_TEXT.values():
        assert set(text.split()) <= set(VOCABULARY), text


@pytest.fixture(scope='module')
def collected(tmp_path_factory):
    from bimanual_vla.learning.collect import CollectSettings, collect

    tmp = tmp_path_factory.mktemp('so101_collect')
    rig = twin_rig_file(tmp, camera_size=(160, 120))
    out = tmp / 'bag'
    settings = CollectSettings(task='handover_cube', rig_name=str(rig), episodes=2, seed=3, episode_s=EPISODE_S)
    return rig, out, collect(out, settings)


@pytest.mark.ros
@pytest.mark.slow
def test_collect_on_the_twin_records_what_a_real_rig_records(collected):
    from bimanual_vla import topics
    from bimanual_vla.bags.read import BagReader
    from bimanual_vla.bags.time_base import TIME_BASE_KEY
    from bimanual_vla.config import load_rig
    from bimanual_vla.learning.dataset import BagDataset

    rig_file, out, result = collected
    rig = load_rig(rig_file)
    summary = json.loads((out / 'collect.json').read_text())
    assert [e['label'] for e in summary['episodes']] == ['handover_cube seed 3', 'handover_cube seed 4']
    assert summary['task_text'] == 'hand the cube over from the right arm to the left arm'
    assert summary['dropped_messages'] == 0
    assert [e['foreign_publishers'] for e in summary['episodes']] == [[], []]
    for e in result.episodes:
        assert e.first_tick_s is not None and e.first_tick_s <= 0.1
        assert e.success is False  # 4 s of a handover: sim/success, not a default
    names = {'/' + t.lstrip('/') for t in summary['recorded_messages']}
    wanted = {topics.JOINT_STATES, topics.POLICY_TASK, topics.SIM_EXPERT_SUBTASK, topics.SIM_SUCCESS}
    wanted |= {topics.arm_command(a) for a in ('left', 'right')}
    wanted |= {topics.camera_image(c) for c in ('base', 'left_wrist', 'right_wrist')}
    wanted = {'/' + t.lstrip('/') for t in wanted}
    assert wanted <= names, wanted - names
    with BagReader(out) as bag:
        assert [e.label for e in bag.episodes] == ['handover_cube seed 3', 'handover_cube seed 4']
        assert all(e.end_ns is not None for e in bag.episodes)
        assert bag.custom_data[TIME_BASE_KEY] == 'header'
    ds = BagDataset(out, rig=str(rig_file), chunk_size=5, time_base='header')
    expected = [f'{arm}_{joint}' for arm in ('left', 'right') for joint in SO101_JOINTS]
    assert ds.joint_names == expected == rig.all_joint_names()
    assert len(ds.episodes) == 2
    for e in range(2):
        r = ds.episode_range(e)
        # joint_states come from the arm drivers, stamped on sim time: samples up to the episode's end
        first, last = ds.sample(r[0], images=True), ds.sample(r[-1], images=False)
        assert 0.0 <= first['time_ns'] * 1e-9 < last['time_ns'] * 1e-9
        assert last['time_ns'] * 1e-9 == pytest.approx(EPISODE_S, abs=0.15)
        assert first['task'] == 'hand the cube over from the right arm to the left arm'
        assert set(first['images']) == {'base', 'left_wrist', 'right_wrist'}
        labels = {ds.sample(i, images=False)['subtask'] for i in r}
        assert labels and all(labels), labels  # the expert's subtask labels, e.g. the right arm's approach
        # the recorded commands are the expert's (the right arm goes above the cube), and the arms measured
        # by the drivers moved with them
        assert np.max(np.abs(last['actions'][0] - first['actions'][0])) > 0.05
        assert np.max(np.abs(last['state'] - first['state'])) > 0.05
