"""The fault soak stopped with Ctrl-C: the recorder (a process of its own) ends with it, and the segment
is still reported, over the minutes it ran.

Ctrl-C reaches rclpy's own handler first, which shuts the ROS context down; the soak's clean-up used to
publish an e-stop release on that dead context, raise, and skip stopping the recorder, which then went
on writing ~0.6 GB a minute of camera frames with nobody to stop it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ros]

BENCH = Path(__file__).resolve().parents[2] / 'bench' / 'fault_soak_bench.py'


def recorders_writing_to(directory: Path) -> list[int]:
    """Pids of the `bimanual-vla record` processes whose command line names `directory`."""
    pids = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / 'cmdline').read_bytes().split(b'\0')
        except OSError:
            continue
        if b'record' in argv and any(str(directory).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def test_ctrl_c_stops_the_recorder_and_reports_the_segment(tmp_path: Path) -> None:
    record = tmp_path / 'rec'
    env = {**os.environ, 'MUJOCO_GL': 'egl', 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'PYTHONUNBUFFERED': '1'}
    argv = [sys.executable, str(BENCH), '--tiny', '--minutes', '10', '--first-fault-s', '600', '--record-dir',
            str(record), '--record-split-s', '5']  # fmt: skip
    with (tmp_path / 'stderr.log').open('w') as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (recorders_writing_to(record) and list((record / 'bag').glob('*.mcap'))):
            assert proc.poll() is None, (tmp_path / 'stderr.log').read_text()[-3000:]
            assert time.monotonic() < deadline, 'the soak never started recording'
            time.sleep(0.5)
        time.sleep(5.0)  # a few seconds of recording
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
        assert recorders_writing_to(record) == [], (tmp_path / 'stderr.log').read_text()[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert report['bench'] == 'fault_soak' and report['fatal'].startswith('KeyboardInterrupt')
        assert report['minutes'] < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in recorders_writing_to(record):  # never leave one behind, whatever failed
            os.kill(pid, signal.SIGKILL)
