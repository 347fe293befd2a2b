"""Launch files and the bringup they share with the CLI.

`launch`/`launch_ros` are not on PyPI, so everywhere we check statically that each launch file
parses and declares its arguments, and that what it starts (via bimanual_vla.bringup.nodes) references only
existing executables, node classes, configs and URDFs. test/bringup/test_launch_plan.py runs each launch
file's own function with launch's classes replaced by recorders (executables, parameters, respawn, missing
packages); test/bringup/test_launch_pytest.py runs the launch files for real where launch_pytest is
importable (a ROS 2 distribution install).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from bimanual_vla.bringup.nodes import NODE_CLASSES, is_simulated, rig_nodes, robot_description
from bimanual_vla.config import load_policy, load_rig

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
EXPECTED_ARGS = {
    'rig.launch.py': {'rig', 'policy', 'rviz', 'record', 'record_split_mb', 'only'},
    'sim.launch.py': {'rig', 'task', 'seed', 'servo_bus', 'policy', 'rviz', 'record', 'record_split_mb', 'only'},
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
