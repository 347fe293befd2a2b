"""A rig split across two computers: the rig file's policy_host and `run --only robot|policy` (bringup/nodes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.policy_node import remote_rig_file

from bimanual_vla.bringup.nodes import rig_nodes
from bimanual_vla.config import ConfigError, load_rig


def executables(specs) -> list[str]:
    return [s.executable for s in specs]


def test_one_computer_is_unchanged_by_default() -> None:
    assert load_rig('aloha_sim').policy_host == ''
    assert executables(rig_nodes('aloha_sim')) == ['sim_rig', 'policy_node']


def test_halves(tmp_path: Path) -> None:
    rig = remote_rig_file(tmp_path, 'gpu-box.local')
    assert load_rig(rig).policy_host == 'gpu-box.local'
    robot = rig_nodes(str(rig), only='robot')
    assert executables(robot) == ['sim_rig', 'clock_responder']
    assert robot[1].parameters == {'use_sim_time': True}  # answers on the clock the robot stamps with
    policy = rig_nodes(str(rig), only='policy')
    assert executables(policy) == ['policy_node']
    assert policy[0].parameters['use_sim_time'] is True
    # both halves on one computer (a rehearsal): the responder comes along, since the policy expects it
    assert executables(rig_nodes(str(rig))) == ['sim_rig', 'clock_responder', 'policy_node']
    with pytest.raises(ValueError, match='only must be one of robot, policy'):
        rig_nodes(str(rig), only='both')  # type: ignore[arg-type]


def test_real_rig_robot_half_is_drivers_cameras_and_responder() -> None:
    names = executables(rig_nodes('so101_bimanual', only='robot'))
    assert names == ['arm_driver', 'arm_driver', 'camera_driver', 'camera_driver', 'camera_driver', 'clock_responder']


@pytest.mark.parametrize('host', ['gpu box', 12, 'a;b'])
def test_policy_host_is_strict(tmp_path: Path, host: object) -> None:
    with pytest.raises(ConfigError, match='policy_host'):
        load_rig(remote_rig_file(tmp_path, host))


def test_run_only_policy_without_a_policy_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from bimanual_vla.cli.main import main

    rig = remote_rig_file(tmp_path, 'gpu-box.local')
    assert main(['run', '--rig', str(rig), '--only', 'policy', '--policy', 'none']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("run --only policy: no policy to run on rig 'aloha_sim' (see the note above)"), err
