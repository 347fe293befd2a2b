"""The takeover demo's rig: a sim rig without leader arms gets emulated leaders and servo-bus arms in a copy."""

from __future__ import annotations

import argparse
from pathlib import Path

from helpers.bench import load_bench

from bimanual_vla.config import load_rig


def test_a_rig_without_leaders_gets_one_emulated_leader_per_arm(tmp_path):
    demo = load_bench('takeover_finetune_demo')
    path = demo.rig_with_leaders('aloha_sim', tmp_path)
    assert Path(path) == tmp_path / 'rig.yaml'
    rig, source = load_rig(path), load_rig('aloha_sim')
    assert rig.sim.servo_bus == 'feetech'  # the arms behind real arm drivers, as teleop needs
    assert [lead.follower for lead in rig.leaders] == [arm.name for arm in source.arms]
    for lead in rig.leaders:
        arm = source.arm(lead.follower)
        assert lead.protocol == 'feetech' and lead.joint_names == arm.joint_names
        assert [j.id for j in lead.joints] == [j.id for j in arm.joints]
        assert lead.gripper is not None and lead.gripper.joint == arm.gripper
        assert lead.port != ''
    # everything else is the source rig's
    assert rig.arms == source.arms and rig.cameras == source.cameras and rig.sim.task == source.sim.task


def test_a_rig_with_leaders_is_used_as_it_is(tmp_path):
    demo = load_bench('takeover_finetune_demo')
    assert demo.rig_with_leaders('so101_sim', tmp_path) == 'so101_sim'
    assert not (tmp_path / 'rig.yaml').exists()


def test_the_episode_limit_is_the_twins_own_on_the_twin_and_eval_sims_elsewhere():
    demo = load_bench('takeover_finetune_demo')
    assert demo.episode_limit_s('so101_sim', None) == demo.TWIN_MAX_SIM_S == 18.0
    assert demo.episode_limit_s('aloha_sim', None) is None
    assert demo.episode_limit_s('so101_sim', 25.0) == 25.0


def test_a_perturbation_is_refused_on_the_twin_or_after_the_takeover_in_one_line():
    demo = load_bench('takeover_finetune_demo')

    def problem(**given):
        options = {'rig': 'aloha_sim', 'perturb': None, 'takeover_at': 4.2, **given}
        return demo.check_perturbation(argparse.Namespace(**options))

    assert problem() is None and problem(perturb='t=4.0:move') is None
    assert problem(perturb='t=4.0:move', takeover_at=3.0) == (
        '--takeover-at 3.0 comes before the perturbation at 4.0 s: the hands retry after it'
    )
    assert 'ALOHA rigs only' in problem(rig='so101_sim', perturb='t=1.0:move', takeover_at=1.0)
    assert problem(perturb='t=4.0:shake').startswith("--perturb: perturb 't=4.0:shake': 'shake' is not one of")
