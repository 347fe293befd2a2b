"""eval-sim: a checkpoint drives the simulated rig closed loop through the topics; commands stay in limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

SHIPPED = Path(__file__).resolve().parents[1] / 'checkpoints' / 'aloha_transfer_cube'


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    """The shipped trained checkpoint if there is one, else a tiny random one (same code paths)."""
    if (SHIPPED / 'model.safetensors').is_file():
        return SHIPPED
    from policy_node.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', rig='aloha_sim', image_size=32)


def test_one_short_episode_drives_the_sim_within_limits(checkpoint, tmp_path):
    from bimanual_vla.eval_sim import evaluate_closed_loop

    report = evaluate_closed_loop(
        checkpoint, tmp_path / 'eval', episodes=1, seed=1000, max_sim_s=6.0, num_steps=3, progress=False, tick_log=True
    )
    assert json.loads((tmp_path / 'eval' / 'report.json').read_text())['episodes'] == 1
    episode = report['per_episode'][0]
    assert episode['seed'] == 1000
    assert episode['sim_time_s'] >= 6.0
    # /clock is best effort, keep last 1: a loaded observer misses ticks, but it must follow the episode's clock.
    assert episode['ticks'] >= 10
    assert episode['inferences'] >= 1  # the policy wrote a chunk (and its subtask) for this episode
    assert report['commands_checked'] >= 1  # the policy node commanded the arms (every command is limit-checked)
    assert report['command_limit_violations'] == []
    assert 0 <= episode['max_stage'] <= 4
    if checkpoint == SHIPPED:  # the trained policy grasps the cube (stage 1+) by ~2.8 s; 6 s leaves margin
        assert episode['max_stage'] >= 1, episode
    assert sorted(episode['stage_first_s']) == [str(s) for s in range(1, episode['max_stage'] + 1)]
    assert 0.0 <= report['subtask_agreement_steps'] <= 1.0
    assert (tmp_path / 'eval' / 'contact_sheet.png').stat().st_size > 10_000
    assert (tmp_path / 'eval' / 'episode.mp4').stat().st_size > 10_000
    assert report['policy_in_own_process'] is True and report['driver'] == 'policy'
    # --tick-log: one line per episode, every tick and every inference with its arrival after its observation
    (logged,) = [json.loads(line) for line in (tmp_path / 'eval' / 'ticks.jsonl').read_text().splitlines()]
    assert logged['seed'] == 1000 and len(logged['ticks']) == episode['ticks']
    assert len(logged['inferences']) == episode['inferences']
    assert all(arrived >= stamp for stamp, arrived, *_ in logged['inferences'])
    # the expert replayed on the same seed: its stage times (it transfers the cube, stage 4 by ~5.5 s)
    assert sorted(episode['expert_stage_first_s']) == ['1', '2', '3', '4']
    assert 2.5 < episode['expert_stage_first_s']['1'] < 3.5 < episode['expert_stage_first_s']['4'] < 6.0
    by_outcome = report['subtask_agreement_steps_by_outcome']
    assert by_outcome[{True: 'successful', False: 'failed'}[episode['success']]] == episode['subtask_agreement_steps']
    pace = report['stage_first_s_minus_expert']  # over successful episodes only
    if episode['success']:
        stage = pace['1']
        assert stage['episodes'] == 1 and stage['std'] == 0.0
        assert stage['mean'] == pytest.approx(episode['stage_first_s']['1'] - episode['expert_stage_first_s']['1'])
    else:
        assert pace == {}
