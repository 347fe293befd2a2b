"""`bimanual-vla run --help` says in one line how to get `ros2 launch` where it cannot work."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from bimanual_vla.bringup.launch_availability import PIP_HINT, ros2_launch_hint


def test_run_help_ends_with_the_way_to_ros2_launch_where_it_is_missing() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / 'bimanual-vla'), 'run', '--help'], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    text = ' '.join(done.stdout.split())
    hint = ros2_launch_hint()
    if hint is None:  # a colcon build on a ROS install: nothing to say
        assert 'docs/installing.md' not in text
    else:
        assert text.endswith(hint)
    if importlib.util.find_spec('launch_ros') is None:  # the pip path
        assert hint == PIP_HINT
