"""`bimanual-vla teleop` and `emulate-bus --motion` as a user runs them: separate processes, ports by path."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bimanual_vla.drivers.servo.emulated_motion import save_motion_csv

BIN = Path(sys.executable).parent
NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']
K = 2 * math.pi / 4096


def test_teleop_refuses_a_rig_without_leaders_in_one_line() -> None:
    done = subprocess.run([str(BIN / 'bimanual-vla'), 'teleop', '--rig', 'aloha_sim'], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f'error: {Path(__file__).resolve().parents[3]}/config/rigs/aloha_sim.yaml: leaders: the rig has no leader '
        'arms (docs/teleop.md)'
    ]


def test_emulate_bus_refuses_a_bad_motion_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / 'bad.csv'
    bad.write_text('t,1\n0,0\n0,1\n')
    done = subprocess.run(
        [str(BIN / 'bimanual-vla'), 'emulate-bus', '--protocol', 'feetech', '--motion', str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f'error: {bad}: sample 1: times must increase (t=0 after 0)']


@pytest.mark.ros
@pytest.mark.slow
def test_teleop_drives_an_emulated_follower_from_a_scripted_leader_process(tmp_path: Path) -> None:
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    # The leader swings shoulder_pan 0 -> 0.3 -> 0 rad every 4 s, forever: whenever teleop comes up it
    # finds the leader near the follower's pose (0) within a few seconds and engages.
    t = np.linspace(0.0, 4.0, 81)
    pan = 0.3 * (1 - np.abs(t - 2.0) / 2.0)
    motion = save_motion_csv(tmp_path / 'swing.csv', t, ['1'], pan[:, None])
    leader_port = tmp_path / 'ttyLEADER'
    follower = ServoBusEmulator('feetech', range(1, 7), max_speed_ticks_per_s=4000)
    goals: list[int] = []
    follower.on_goal = lambda sid, ticks: goals.append(ticks) if sid == 1 else None
    os.symlink(follower.start(), tmp_path / 'ttyFOLLOWER')
    joints = [{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in enumerate(NAMES, 1)]
    rig = {
        'name': 'cli_teleop',
        'urdf': 'urdf/so101_bimanual.urdf',
        'arms': [{'name': 'left', 'protocol': 'feetech', 'port': str(tmp_path / 'ttyFOLLOWER'), 'joints': joints}],
        'leaders': [
            {
                'name': 'left_leader',
                'protocol': 'feetech',
                'port': str(leader_port),
                'follower': 'left',
                'joints': [{'id': i, 'name': n} for i, n in enumerate(NAMES, 1)],
            }
        ],
    }
    rig_path = tmp_path / 'rig.yaml'
    rig_path.write_text(yaml.safe_dump(rig))
    emulate = subprocess.Popen(
        [str(BIN / 'bimanual-vla'), 'emulate-bus', '--protocol', 'feetech', '--ids', '1-6']
        + ['--motion', str(motion), '--loop', '--link', str(leader_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert emulate.stdout is not None and emulate.stdout.readline().startswith('/dev/pts/')
        assert leader_port.is_symlink()
        done = subprocess.run(
            [str(BIN / 'bimanual-vla'), 'teleop', '--rig', str(rig_path), '--no-estop-key', '--duration', '12'],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        assert 'teleop on' in done.stdout, done.stdout
        assert 'engaged (poses matched within' in done.stderr, done.stderr
        reached = max(goals) - 2048
        assert 0.25 / K <= reached <= 0.3 / K + 2, (reached * K, done.stderr)  # the swing, not more
        assert min(goals) >= 2048 - 2  # never below the leader's lowest point
    finally:
        emulate.send_signal(signal.SIGINT)
        emulate.wait(timeout=30)
        follower.stop()
    assert emulate.returncode == 0
    assert not leader_port.exists()  # the link goes with the emulator
