"""Launch files and the bringup they share with the CLI.

`launch`/`launch_ros` are not on PyPI, so everywhere we check statically that each launch file
parses, declares its arguments, and that what it starts (via bimanual_vla.bringup.nodes) references only
existing executables, node classes, configs and URDFs. test/bringup/test_launch_pytest.py runs the launch
files for real where launch_pytest is importable (a ROS 2 distribution install).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from bimanual_vla.bringup.nodes import NODE_CLASSES, is_simulated, rig_nodes, robot_description
from bimanual_vla.config import load_policy, load_rig, share_dir

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
EXPECTED_ARGS = {
    'rig.launch.py': {'rig', 'policy', 'rviz', 'record', 'record_split_mb'},
    'sim.launch.py': {'rig', 'task', 'seed', 'servo_bus', 'policy', 'rviz', 'record', 'record_split_mb'},
    'replay.launch.py': {'bag', 'rig', 'policy', 'rate', 'rviz'},
}


def console_scripts() -> set[str]:
    text = (ROOT / 'setup.py').read_text()
    return set(re.findall(r"'([\w-]+) = [\w.]+:\w+'", text))


def declared_arguments(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'DeclareLaunchArgument':
            names.add(node.args[0].value)
    return names


def test_launch_files_exist_and_declare_documented_arguments() -> None:
    assert {p.name for p in LAUNCH_FILES} == set(EXPECTED_ARGS)
    readme = (ROOT / 'README.md').read_text()
    for path in LAUNCH_FILES:
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert 'generate_launch_description' in functions, path.name
        args = declared_arguments(path)
        assert args == EXPECTED_ARGS[path.name], path.name
        for arg in args:
            assert f'`{arg}:=' in readme, f'{path.name} argument {arg} is not documented in README.md'


def test_launch_files_only_reference_existing_executables() -> None:
    scripts = console_scripts()
    for path in LAUNCH_FILES:
        for executable in re.findall(r"executable='([\w-]+)'", path.read_text()):
            assert executable in scripts, f'{path.name} starts unknown executable {executable}'
    helper = (ROOT / 'bimanual_vla' / 'bringup' / 'launch_actions.py').read_text()
    for executable in re.findall(r"executable='([\w-]+)'", helper):
        assert executable in scripts | {'robot_state_publisher', 'rviz2'}, executable
    assert (share_dir() / 'config' / 'rviz' / 'bimanual.rviz').is_file()


@pytest.mark.parametrize('rig', ['so101_bimanual', 'koch_bimanual', 'aloha_sim'])
def test_bringup_of_shipped_rigs(rig: str) -> None:
    cfg = load_rig(rig)
    specs = rig_nodes(rig)
    scripts = console_scripts()
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), names
    for spec in specs:
        assert spec.executable in scripts
        assert spec.parameters['rig'] == rig
    executables = [s.executable for s in specs]
    if is_simulated(cfg):
        assert executables == ['sim_rig', 'policy_node']
        assert all(s.parameters['use_sim_time'] for s in specs)
    else:
        assert executables.count('arm_driver') == len(cfg.arms)
        assert executables.count('camera_driver') == len(cfg.cameras)
        assert {s.parameters['arm'] for s in specs if s.executable == 'arm_driver'} == {a.name for a in cfg.arms}
    assert load_policy(specs[-1].parameters['policy']).inference.num_steps > 0
    assert robot_description(rig).lstrip().startswith('<?xml')
    assert [s.executable for s in rig_nodes(rig, policy=None)][-1] != 'policy_node'


def test_node_classes_are_nodes() -> None:
    from rclpy.node import Node

    for executable, target in NODE_CLASSES.items():
        module_name, class_name = target.split(':')
        cls = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(cls, Node), executable
        assert callable(importlib.import_module(module_name).main), executable


class _Recorded:
    """Stands in for a launch / launch_ros action class: keeps the keyword arguments it was built with."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def test_launch_respawns_drivers_and_the_policy_and_logs_why(monkeypatch) -> None:
    """launch_actions turns specs into launch_ros Nodes with respawn settings and an OnProcessExit rule.

    launch/launch_ros are not installable here, so their action classes are replaced by recorders
    (test/bringup/test_launch_pytest.py runs the real ones where a ROS distribution is installed).
    """
    import sys
    import types

    from bimanual_vla.bringup.supervision import LAUNCH_RESPAWN_DELAY_S

    classes = {
        'launch.actions': ('LogInfo', 'RegisterEventHandler'),
        'launch.event_handlers': ('OnProcessExit',),
        'launch_ros.actions': ('Node',),
    }
    for module_name, names in classes.items():
        module = types.ModuleType(module_name)
        for name in names:
            setattr(module, name, type(name, (_Recorded,), {}))
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.delitem(sys.modules, 'bimanual_vla.bringup.launch_actions', raising=False)
    launch_actions = importlib.import_module('bimanual_vla.bringup.launch_actions')
    monkeypatch.setitem(sys.modules, 'bimanual_vla.bringup.launch_actions', launch_actions)  # removed again at teardown

    specs = rig_nodes('so101_bimanual')
    actions = launch_actions.spec_actions(specs)
    nodes = [a for a in actions if type(a).__name__ == 'Node']
    rules = [a for a in actions if type(a).__name__ == 'RegisterEventHandler']
    assert [n.kwargs['name'] for n in nodes] == [s.name for s in specs]
    for node, spec in zip(nodes, specs, strict=True):
        assert node.kwargs['respawn'] is True, spec.name
        assert node.kwargs['respawn_delay'] == LAUNCH_RESPAWN_DELAY_S[spec.executable]
    assert len(rules) == len(nodes)  # one exit rule per respawned node, aimed at that node
    policy = next(n for n in nodes if n.kwargs['executable'] == 'policy_node')
    rule = next(r for r in rules if r.args[0].kwargs['target_action'] is policy)
    message = rule.args[0].kwargs['on_exit'][0].kwargs['msg']
    assert message.startswith('policy_node exited; the arms hold') and 'respawning in 2 s' in message
    sim = launch_actions.spec_actions(rig_nodes('aloha_sim', policy=None))
    assert len(sim) == 1 and 'respawn' not in sim[0].kwargs  # a restarted simulator would reset its world
