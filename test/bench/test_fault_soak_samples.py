"""The fault soak's `--samples FILE`: every process's sample series, to place a memory rise in time.

A growth fit over a short series turns a one-time step into a rate (a 15 MB step in the second half
of an 8-minute half-life fits 150 MB/h); the series itself tells a step from a leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.bench import load_bench


def test_samples_file_holds_each_series_a_restart_starting_a_new_one(tmp_path: Path) -> None:
    bench = load_bench('fault_soak_bench')
    samples = bench.ProcessSamples()
    samples.sample({'policy': os.getpid()}, 0.0)
    samples.sample({'policy': os.getpid()}, 2.04)
    child = subprocess.Popen(
        [sys.executable, '-c', 'import time; print(flush=True); time.sleep(30)'], stdout=subprocess.PIPE
    )
    try:
        child.stdout.readline()  # the interpreter is up
        samples.sample({'policy': child.pid}, 4.0)
    finally:
        child.kill()
        child.wait()
    samples.write(tmp_path / 'samples.jsonl')

    rows = [json.loads(line) for line in (tmp_path / 'samples.jsonl').read_text().splitlines()]
    assert [(r['label'], r['pid'], r['t']) for r in rows] == [
        ('policy', os.getpid(), [0.0, 2.0]),
        ('policy_restart1', child.pid, [4.0]),
    ]
    for row, n in zip(rows, (2, 1), strict=True):
        assert len(row['rss_mb']) == len(row['threads']) == len(row['fds']) == n
        assert all(mb > 1.0 for mb in row['rss_mb'])
        assert all(threads >= 1 for threads in row['threads'])
        assert all(fds >= 3 for fds in row['fds'])
