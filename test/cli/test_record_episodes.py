"""`bimanual-vla record-episodes` as an operator runs it: a scripted leader (`emulate-bus --motion`) drives an
emulated follower; keys arrive through a pseudo-terminal; the bag holds every take with its markers, the
re-recorded one marked discarded, the typed subtask, and survives a kill between episodes."""

from __future__ import annotations

import json
import math
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from bimanual_vla.drivers.servo.emulated_motion import save_motion_csv

pytestmark = [pytest.mark.ros, pytest.mark.slow]

BIN = Path(sys.executable).parent
NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll', 'gripper']


@pytest.fixture
def rig(tmp_path: Path):
    """A one-arm rig: the follower an in-process emulator, the leader an `emulate-bus --motion` process."""
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    t = np.linspace(0.0, 4.0, 81)
    pan = 0.3 * (1 - np.abs(t - 2.0) / 2.0)  # 0 -> 0.3 -> 0 rad every 4 s: teleop engages near 0
    motion = save_motion_csv(tmp_path / 'swing.csv', t, ['1'], pan[:, None])
    follower = ServoBusEmulator('feetech', range(1, 7), max_speed_ticks_per_s=4000)
    os.symlink(follower.start(), tmp_path / 'ttyFOLLOWER')
    joints = [{'id': i, 'name': n, 'lower': -1.5, 'upper': 1.5} for i, n in enumerate(NAMES, 1)]
    leader = {'name': 'left_leader', 'protocol': 'feetech', 'port': str(tmp_path / 'ttyLEADER'), 'follower': 'left',
              'joints': [{'id': i, 'name': n} for i, n in enumerate(NAMES, 1)]}  # fmt: skip
    arm = {'name': 'left', 'protocol': 'feetech', 'port': str(tmp_path / 'ttyFOLLOWER'), 'joints': joints}
    camera = {'name': 'top', 'source': 'test_pattern', 'width': 128, 'height': 64, 'fps': 10.0}
    spec = {'name': 'record_rig', 'urdf': 'urdf/so101_bimanual.urdf', 'leaders': [leader], 'arms': [arm],
            'cameras': [camera]}  # fmt: skip
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(spec))
    emulate = subprocess.Popen(
        [str(BIN / 'bimanual-vla'), 'emulate-bus', '--protocol', 'feetech', '--ids', '1-6', '--motion', str(motion),
         '--loop', '--link', str(tmp_path / 'ttyLEADER')],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert emulate.stdout is not None and emulate.stdout.readline().startswith('/dev/pts/')
    yield path
    emulate.send_signal(signal.SIGINT)
    emulate.wait(timeout=30)
    follower.stop()


def _start(rig: Path, out: Path, episodes: int, master_slave: tuple[int, int]) -> subprocess.Popen:
    args = [str(BIN / 'bimanual-vla'), 'record-episodes', '--rig', str(rig), '--task', 'swing the arm',
            '--episodes', str(episodes), '--episode-s', '2', '--reset-s', '1.5', '--countdown-s', '1', '--plain',
            str(out)]  # fmt: skip
    return subprocess.Popen(args, stdin=master_slave[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _wait_line(proc: subprocess.Popen, text: str, seen: list[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f'{text!r} never printed; output: {"".join(seen)}; stderr: {proc.stderr.read()}')


def test_episodes_are_recorded_and_a_rerecorded_one_is_marked(rig: Path, tmp_path: Path) -> None:
    from bimanual_vla.bags.episodes import kept_episodes
    from bimanual_vla.bags.read import BagReader

    out = tmp_path / 'demos'
    master, slave = pty.openpty()
    proc = _start(rig, out, 2, (master, slave))
    seen: list[str] = []
    try:
        _wait_line(proc, 'Episode 1 recorded', seen)
        os.write(master, b'\x1b[D')  # left arrow in the reset period: episode 1 again
        _wait_line(proc, 'Episode 1 of 2 (take 2): go', seen)
        os.write(master, b'swing out\r')  # the operator types the subtask
        _wait_line(proc, 'Done: 2 episodes recorded', seen)
        proc.wait(timeout=60)
        stdout, stderr = proc.stdout.read(), proc.stderr.read()  # communicate() would skip readline's buffer
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, stderr
    assert stdout.strip(), (seen, stderr[-3000:])
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result['kept'] == ['episode_000_take2', 'episode_001'] and result['discarded'] == ['episode_000']
    assert result['problems'] == []
    assert any('subtask: ' in line and 'swing out' in line for line in seen + stdout.splitlines())

    info = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert len(info['relative_file_paths']) >= 3  # a file closed at every episode end
    with BagReader(out) as bag:
        assert [e.label for e in bag.episodes] == ['episode_000', 'episode_000_take2', 'episode_001']
        kept, gone = kept_episodes(bag)
        assert [e.label for e in kept] == ['episode_000_take2', 'episode_001']
        assert [e.label for e in gone] == ['episode_000']
        take2 = kept[0]
        assert 1.8 <= (take2.end_ns - take2.start_ns) * 1e-9 <= 3.0
        for topic in ('/leader/left/joint_states', '/arms/left/joint_command', '/joint_states'):
            n = sum(1 for m in bag.messages([topic], take2.start_ns, take2.end_ns))
            assert n >= 50, (topic, n)  # leader read at 100 Hz, teleop commanding the follower
        labels = [(m.timestamp_ns, bag.decode(m).data) for m in bag.messages(['/policy/subtask'])]
        assert [text for t, text in labels if take2.start_ns < t < take2.end_ns] == ['swing out']
        assert [bag.decode(m).data for m in bag.messages(['/policy/task'])] == ['swing the arm']

    # the recorded set trains as it is (a tiny model, two steps), on the leader's positions as actions
    from bimanual_vla.cli.main import main

    tiny = ['hidden=32', 'layers=2', 'heads=2', 'head_dim=16', 'expert_hidden=16', 'vision_hidden=16',
            'vision_layers=1', 'image_size=32', 'patch_size=16']  # fmt: skip
    run = tmp_path / 'run'
    argv = ['train', '--data', str(out), '--out', str(run), '--rig', str(rig), '--action-source', 'leader',
            '--tiny-config', *tiny, '--chunk-size', '10', '--batch-size', '4', '--threads', '1', '--steps', '2',
            '--save-every', '0', '--no-progress', '--cache-dir', str(tmp_path / 'cache')]  # fmt: skip
    assert main(argv) == 0
    state = json.loads((run / 'train_state' / 'state.json').read_text())
    assert state['step'] == 2 and state['config']['action_source'] == 'leader'
    cache = json.loads(next((tmp_path / 'cache').glob('*/cache.json')).read_text())
    assert cache['episode_labels'] == ['episode_000_take2', 'episode_001']  # the discarded take left out
    assert 'swing out' in cache['subtasks']


def test_a_kill_between_episodes_keeps_the_finished_ones(rig: Path, tmp_path: Path) -> None:
    from bimanual_vla.bags.read import BagReader

    out = tmp_path / 'killed'
    master, slave = pty.openpty()
    proc = _start(rig, out, 3, (master, slave))
    seen: list[str] = []
    try:
        _wait_line(proc, 'Episode 1 recorded', seen)
        proc.send_signal(signal.SIGKILL)  # nothing gets to clean up
        proc.wait(timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    with BagReader(out) as bag:  # the closed file, listed in metadata.yaml
        assert not bag.problems
        assert [(e.label, e.end_ns is not None) for e in bag.episodes] == [('episode_000', True)]
        first = bag.episodes[0]
        assert sum(1 for _ in bag.messages(['/leader/left/joint_states'], first.start_ns, first.end_ns)) >= 50
    assert math.isfinite(first.end_ns)
