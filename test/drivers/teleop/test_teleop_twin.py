"""Teleoperating the SO-101 twin: two scripted leader buses drive the simulated arms through the real drivers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from bimanual_vla.config import load_rig, share_dir
from bimanual_vla.drivers.servo.emulated_motion import Motion, MotionPlayer

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']


def twin_rig_file(tmp_path: Path) -> Path:
    """so101_sim.yaml with its ports (arms and leaders) and calibration files in tmp_path."""
    text = (share_dir() / 'config/rigs/so101_sim.yaml').read_text()
    text = text.replace('/tmp/bimanual_vla_so101_sim/', f'{tmp_path}/')
    text = text.replace('~/.config/bimanual_vla/calibration/', f'{tmp_path}/')
    path = tmp_path / 'so101_sim.yaml'
    path.write_text(text)
    return path


def test_scripted_leaders_drive_the_so101_twin(ros_context, spin, tmp_path: Path) -> None:
    pytest.importorskip('mujoco')
    from bimanual_vla.bringup.compose import compose
    from bimanual_vla.bringup.nodes import NodeSpec, rig_nodes
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    rig_file = twin_rig_file(tmp_path)
    rig = load_rig(rig_file)
    # Each leader holds still for 1 s, then swings its shoulder and elbow out and opens the trigger.
    final = {'left': [0.35, -0.2, 0.3, 0.2, 0.1, 0.6], 'right': [-0.35, -0.2, 0.3, 0.2, -0.1, 0.3]}
    leaders, players = [], []
    for lead in rig.leaders:
        emu = ServoBusEmulator('feetech', range(1, 7))
        os.symlink(emu.start(), lead.port)
        motion = Motion(
            np.array([0.0, 1.0, 3.0]),
            tuple(str(i) for i in range(1, 7)),
            np.array([[0.0] * 6, [0.0] * 6, final[lead.follower]]),
        )
        players.append(MotionPlayer(emu, motion))  # no leader calibration file here: the identity, as teleop
        leaders.append(emu)
    specs = rig_nodes(str(rig_file), policy=None, sim_overrides={'render_rate_hz': 0.0})
    specs.append(NodeSpec('teleop', 'teleop', {'rig': str(rig_file), 'ramp': True, 'use_sim_time': True}))
    for player in players:
        player.start()
    composition = compose(specs, context=ros_context)
    try:
        sim = composition.node('sim_rig')
        teleop = composition.node('teleop')

        def engaged() -> bool:
            return all(c.engagement.state == 'engaged' for c in teleop.channels) and all(p.finished for p in players)

        assert spin(composition.executor, engaged, 60.0), [c.engagement.reason for c in teleop.channels]
        expected = {c.arm: np.array(c.mapping(final[c.arm])) for c in teleop.channels}

        def sim_pose(arm: str) -> np.ndarray:
            with sim._lock:
                return np.array(sim.scene.joint_positions(arm), dtype=float)

        def arrived() -> bool:
            return all(np.max(np.abs(sim_pose(arm) - expected[arm])) < 0.05 for arm in expected)

        assert spin(composition.executor, arrived, 30.0), {a: (sim_pose(a) - expected[a]).round(3) for a in expected}
        time.sleep(0.5)
        assert arrived()  # it stays there: the leaders hold still
    finally:
        composition.shutdown()
        for player in players:
            player.stop()
        for emu in leaders:
            emu.stop()
