"""The launch files as launch would run them, without launch: what they start, checked before starting.

`launch`/`launch_ros` are not on PyPI, so their classes are replaced by recorders (`StubLaunch`) and
each launch file's own OpaqueFunction is called with a dict of launch arguments. What comes out is
what launch_ros would start: each Node's package, executable, name, parameters, arguments and
remappings, checked against setup.py's console scripts, the node classes' declared parameters and
the CLI's parser. `launch_actions.find_executable` is replaced to say which executables exist, as
launch_ros's ExecutableInPackage would find them: an optional package that is missing
(robot_state_publisher, rviz2) is left out with one warning, a required one stops the launch before
a single Node exists. test_launch_pytest.py runs the real launch where a ROS distribution is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import types
from pathlib import Path

import pytest

from bimanual_vla.bringup import launch_actions, launch_availability
from bimanual_vla.bringup.nodes import NODE_CLASSES, NodeSpec

ROOT = Path(__file__).resolve().parents[2]

# robot_state_publisher's parameters (ros/robot_state_publisher, src/robot_state_publisher.cpp)
ROBOT_STATE_PUBLISHER_PARAMETERS = {
    'robot_description',
    'use_robot_description_topic',
    'publish_frequency',
    'frame_prefix',
    'ignore_timestamp',
    'use_sim_time',
}


def console_scripts() -> set[str]:
    text = (ROOT / 'setup.py').read_text()
    return set(re.findall(r"'([\w-]+) = [\w.]+:\w+'", text))


class Recorded:
    """Stands in for a launch / launch_ros class: keeps what it was built with."""

    made: list[Recorded] = []

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs
        Recorded.made.append(self)


class StubLaunch:
    """launch and launch_ros modules made of recorders; LaunchConfiguration reads a dict context."""

    def __init__(self, monkeypatch) -> None:
        self.warnings: list[str] = []
        Recorded.made = []
        stubs = {
            'launch': {'LaunchDescription': None},
            'launch.actions': {
                'DeclareLaunchArgument': None,
                'OpaqueFunction': None,
                'LogInfo': None,
                'RegisterEventHandler': None,
            },
            'launch.event_handlers': {'OnProcessExit': None},
            'launch_ros': {},
            'launch_ros.actions': {'Node': None},
            'launch.substitutions': {},
            'launch.logging': {},
        }
        for module_name, names in stubs.items():
            module = types.ModuleType(module_name)
            for name in names:
                setattr(module, name, type(name, (Recorded,), {}))
            monkeypatch.setitem(sys.modules, module_name, module)

        class LaunchConfiguration:
            def __init__(self, name: str) -> None:
                self.name = name

            def perform(self, context: dict[str, str]) -> str:
                return context[self.name]

        warnings = self.warnings

        class Logger:
            def warning(self, message: str) -> None:
                warnings.append(message)

        sys.modules['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
        sys.modules['launch.logging'].get_logger = lambda name: Logger()
        sys.modules['launch'].logging = sys.modules['launch.logging']

    def run(self, name: str, overrides: dict[str, str]) -> list[Recorded]:
        """Load launch/<name>, fill its launch arguments (defaults + `overrides`) and run its
        OpaqueFunction: the actions it returns."""
        spec = importlib.util.spec_from_file_location(name.replace('.', '_'), ROOT / 'launch' / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
        entities = description.args[0]
        context = {}
        for entity in entities:
            if type(entity).__name__ == 'DeclareLaunchArgument':
                context[entity.args[0]] = entity.kwargs.get('default_value')
        context.update(overrides)
        assert None not in context.values() or set(overrides) >= {k for k, v in context.items() if v is None}
        opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction']
        assert len(opaque) == 1, name  # one function decides and starts everything
        return opaque[0].kwargs['function'](context)


def nodes_of(actions: list[Recorded]) -> list[dict]:
    return [a.kwargs for a in actions if type(a).__name__ == 'Node']


def found_except(*missing: str):
    """A find_executable for which every executable exists except `missing` ("package/executable")."""

    def find(package: str, executable: str) -> str | None:
        return None if f'{package}/{executable}' in missing or package in missing else f'/opt/{package}/{executable}'

    return find


@pytest.fixture
def stub_launch(monkeypatch) -> StubLaunch:
    monkeypatch.setattr(launch_actions, 'find_executable', found_except())
    return StubLaunch(monkeypatch)


# Each launch file with arguments that make it start everything it can.
CASES = {
    'rig-so101': (
        'rig.launch.py',
        {'rig': 'so101_bimanual', 'rviz': 'true', 'record': '/tmp/bag', 'record_split_mb': '50'},
    ),
    'rig-koch': ('rig.launch.py', {'rig': 'koch_bimanual', 'policy': ''}),
    'sim': ('sim.launch.py', {'rviz': 'true', 'record': '/tmp/bag', 'seed': '3'}),
    'sim-servo-bus': ('sim.launch.py', {'servo_bus': 'feetech', 'policy': ''}),
    'replay': ('replay.launch.py', {'bag': '/tmp/bag', 'rviz': 'true', 'rate': '2.0'}),
    'rig-robot-half': ('rig.launch.py', {'rig': 'so101_bimanual', 'only': 'robot', 'record': '/tmp/bag'}),
    'sim-policy-half': ('sim.launch.py', {'only': 'policy', 'rviz': 'true'}),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_launch_files_start_console_scripts_with_arguments_the_cli_parses(stub_launch, case: str) -> None:
    from bimanual_vla.cli.main import build_parser

    name, overrides = CASES[case]
    nodes = nodes_of(stub_launch.run(name, overrides))
    scripts = console_scripts()
    assert nodes
    for node in nodes:
        if node['package'] == 'bimanual_vla':
            assert node['executable'] in scripts, node
        else:
            assert (node['package'], node['executable']) in {
                ('robot_state_publisher', 'robot_state_publisher'),
                ('rviz2', 'rviz2'),
            }, node
        assert not node.get('remappings'), node  # topic names come from bimanual_vla/topics.py, never remapped
        if node['executable'] == 'bimanual-vla':
            args = build_parser().parse_args(node['arguments'])  # exits (fails the test) if the CLI refuses them
            assert args.command in ('record', 'replay')
        if node['executable'] == 'robot_state_publisher':
            (params,) = node['parameters']
            assert set(params) <= ROBOT_STATE_PUBLISHER_PARAMETERS
            assert params['robot_description'].lstrip().startswith('<?xml')
        if node['executable'] == 'rviz2':
            assert node['arguments'][0] == '-d' and Path(node['arguments'][1]).is_file()
    executables = [n['executable'] for n in nodes]
    if case == 'rig-so101':  # the shipped ALOHA checkpoint does not fit the SO-101 rig: policy off
        assert 'policy_node' not in executables
        assert [w.split(':')[0] for w in stub_launch.warnings] == ['policy off']
    else:
        assert stub_launch.warnings == []
    if 'record' in overrides:
        (recorder,) = [n for n in nodes if n['executable'] == 'bimanual-vla']
        assert recorder['arguments'][:2] == ['record', overrides['record']]
    if case == 'rig-so101':
        assert executables.count('arm_driver') == 2 and executables.count('camera_driver') == 3
        assert recorder['arguments'][-2:] == ['--max-bag-size', '50.0']
    if case == 'sim-servo-bus':
        assert executables[:3] == ['sim_rig', 'arm_driver', 'arm_driver'] and 'policy_node' not in executables
    if case == 'replay':
        assert executables[:2] == ['bimanual-vla', 'policy_node']
        assert nodes[0]['arguments'] == ['replay', '/tmp/bag', '--rate', '2.0']


def declared_parameters(spec: NodeSpec, context, monkeypatch) -> set[str]:
    """The parameters `spec`'s node class declares, constructed with the spec's parameters on this
    machine (no hardware: a node that cannot open its port or checkpoint stops after declaring; a
    parameter it never reached shows as undeclared, so the test fails rather than passes)."""
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    names: set[str] = {'use_sim_time'}  # declared by rclpy's Node itself
    original = Node.declare_parameters

    def recording(self, namespace, parameters, ignore_override=False):
        names.update(f'{namespace}.{p[0]}' if namespace else p[0] for p in parameters)
        return original(self, namespace, parameters, ignore_override)

    monkeypatch.setattr(Node, 'declare_parameters', recording)
    from rclpy.exceptions import InvalidParameterTypeException

    overrides = [Parameter(k, value=v) for k, v in spec.parameters.items()]
    try:
        node = spec.node_class(context=context, parameter_overrides=overrides)
    except InvalidParameterTypeException:
        raise  # a launch parameter of the wrong type: launch_ros's params file would carry it as is
    except Exception:  # no serial port, camera or matching checkpoint here
        pass
    else:
        node.destroy_node()
    monkeypatch.setattr(Node, 'declare_parameters', original)
    return names


@pytest.mark.slow
@pytest.mark.ros
def test_every_parameter_a_launch_file_gives_a_node_is_one_the_node_declares(
    stub_launch, ros_context, monkeypatch
) -> None:
    """A parameter the node does not declare would be dropped silently by rclpy."""
    executables: set[str] = set()
    checked: set[tuple[str, tuple[str, ...]]] = set()
    for name, overrides in CASES.values():
        for node in nodes_of(stub_launch.run(name, {**overrides, 'record': ''})):
            if node['executable'] not in NODE_CLASSES:
                continue
            spec = NodeSpec(node['executable'], node['name'], node['parameters'][0])
            executables.add(spec.executable)
            key = (spec.executable, tuple(sorted(spec.parameters)))
            if key in checked:  # one construction per executable and set of parameter names
                continue
            checked.add(key)
            undeclared = set(spec.parameters) - declared_parameters(spec, ros_context, monkeypatch)
            assert not undeclared, f'{name}: {spec.name} does not declare {sorted(undeclared)}'
    assert executables == {'arm_driver', 'camera_driver', 'sim_rig', 'policy_node', 'clock_responder'}


def test_missing_optional_packages_are_left_out_with_one_warning_each(stub_launch, monkeypatch) -> None:
    monkeypatch.setattr(launch_actions, 'find_executable', found_except('robot_state_publisher', 'rviz2'))
    nodes = nodes_of(stub_launch.run('sim.launch.py', {'rviz': 'true', 'policy': ''}))
    executables = [n['executable'] for n in nodes]
    assert executables == ['sim_rig', 'robot_description_publisher']
    assert nodes[1]['parameters'] == [{'rig': 'aloha_sim', 'use_sim_time': True}]
    assert stub_launch.warnings == [
        'robot_state_publisher/robot_state_publisher is not installed: skipped, no TF for rviz2 '
        '(robot_description_publisher publishes the URDF instead)',
        'rviz2/rviz2 is not installed: skipped, no visualisation (rviz:=true asked for it)',
    ]


@pytest.mark.parametrize('missing', ['bimanual_vla/policy_node', 'bimanual_vla/bimanual-vla', 'bimanual_vla'])
def test_a_missing_required_executable_stops_the_launch_before_any_node_exists(
    stub_launch, monkeypatch, missing
) -> None:
    monkeypatch.setattr(launch_actions, 'find_executable', found_except(missing))
    with pytest.raises(launch_actions.LaunchPlanError) as error:
        stub_launch.run('sim.launch.py', {'record': '/tmp/bag'})
    assert [r for r in Recorded.made if type(r).__name__ == 'Node'] == []  # nothing started, nothing orphaned
    message = str(error.value)
    assert '\n' not in message and 'nothing was started' in message and 'colcon build' in message
    if missing == 'bimanual_vla':  # a pip install: none of the package's executables in the ament index
        assert 'bimanual_vla/sim_rig, bimanual_vla/policy_node' in message
    else:
        assert f'not found: {missing};' in message


def test_a_missing_fallback_is_required_too() -> None:
    processes = [launch_actions.description_processes('aloha_sim', use_sim_time=True)]
    find = found_except('robot_state_publisher', 'bimanual_vla/robot_description_publisher')
    with pytest.raises(launch_actions.LaunchPlanError, match='not found: bimanual_vla/robot_description_publisher'):
        launch_actions.plan(processes, find)


def test_respawned_nodes_get_an_exit_rule_that_says_why(stub_launch) -> None:
    from bimanual_vla.bringup.supervision import LAUNCH_RESPAWN_DELAY_S

    for name, overrides, expected in [
        ('rig.launch.py', {'rig': 'so101_bimanual'}, ['arm_driver'] * 2 + ['camera_driver'] * 3),
        ('sim.launch.py', {'servo_bus': 'feetech'}, ['arm_driver'] * 2 + ['policy_node']),
    ]:
        Recorded.made = []
        actions = stub_launch.run(name, overrides)
        nodes = [a for a in actions if type(a).__name__ == 'Node']
        rules = [a for a in actions if type(a).__name__ == 'RegisterEventHandler']
        respawned = [n for n in nodes if n.kwargs.get('respawn')]
        assert [n.kwargs['executable'] for n in respawned] == expected
        for node in respawned:
            assert node.kwargs['respawn_delay'] == LAUNCH_RESPAWN_DELAY_S[node.kwargs['executable']]
        assert [r.args[0].kwargs['target_action'] for r in rules] == respawned  # one rule per respawned node
    policy = next(n for n in nodes if n.kwargs['executable'] == 'policy_node')
    rule = next(r for r in rules if r.args[0].kwargs['target_action'] is policy)
    message = rule.args[0].kwargs['on_exit'][0].kwargs['msg']
    assert message.startswith('policy_node exited; the arms hold') and 'respawning in 2 s' in message
    sim = nodes_of(stub_launch.run('sim.launch.py', {'policy': ''}))
    assert 'respawn' not in sim[0]  # a restarted simulator would reset its world


# What `bimanual-vla run` decides too (bringup/preflight.py policy_for_rig): the shipped default policy
# whose checkpoint does not fit the rig is left out with one line, a policy file the user named is an error.
SHIPPED_CHECKPOINT = ROOT / 'checkpoints' / 'aloha_transfer_cube'
DEFAULT_POLICY = ROOT / 'config' / 'policy' / 'default.yaml'
LAUNCH_HOW_TO = (
    'to drive this rig with a policy, record demonstrations (bimanual-vla record), train on them '
    '(bimanual-vla train --data BAG --out DIR), then pass policy:=FILE, a policy YAML whose checkpoint: is DIR'
)


@pytest.mark.parametrize(
    ('name', 'overrides', 'kept'),
    [
        ('rig.launch.py', {'rig': 'so101_bimanual'}, ['arm_driver'] * 2 + ['camera_driver'] * 3),
        ('rig.launch.py', {'rig': 'koch_bimanual', 'policy': 'default'}, ['arm_driver'] * 2 + ['camera_driver'] * 3),
        ('replay.launch.py', {'bag': '/tmp/bag', 'rig': 'so101_bimanual'}, ['bimanual-vla']),
    ],
)
def test_the_default_policy_without_a_checkpoint_for_the_rig_is_left_out_with_one_warning(
    stub_launch, name, overrides, kept
) -> None:
    nodes = nodes_of(stub_launch.run(name, overrides))
    executables = [n['executable'] for n in nodes]
    assert executables[: len(kept)] == kept and 'policy_node' not in executables
    assert 'robot_state_publisher' in executables  # the rest of the launch starts
    (warning,) = stub_launch.warnings
    rig = overrides['rig']
    assert warning == (
        f'policy off: {DEFAULT_POLICY}: checkpoint: {SHIPPED_CHECKPOINT}: checkpoint joints '
        "['left_waist', 'left_shoulder', 'left_elbow', 'left_forearm_roll', ... 12 in all] are not joints of rig "
        f"'{rig}'; {LAUNCH_HOW_TO}"
    )


@pytest.mark.parametrize('policy', ['', 'none'])
def test_no_policy_asked_for_starts_no_policy_node_and_says_nothing(stub_launch, policy) -> None:
    nodes = nodes_of(stub_launch.run('rig.launch.py', {'rig': 'so101_bimanual', 'policy': policy}))
    assert 'policy_node' not in [n['executable'] for n in nodes]
    assert stub_launch.warnings == []


@pytest.mark.parametrize('checkpoint', ['aloha', 'missing'])
@pytest.mark.parametrize('name', ['rig.launch.py', 'replay.launch.py'])
def test_a_checkpoint_the_user_named_that_does_not_fit_stops_the_launch_before_any_node_exists(
    stub_launch, tmp_path, name, checkpoint
) -> None:
    from bimanual_vla.config import ConfigError

    directory = SHIPPED_CHECKPOINT if checkpoint == 'aloha' else tmp_path / 'no_such_checkpoint'
    policy = tmp_path / 'mine.yaml'
    policy.write_text(DEFAULT_POLICY.read_text().replace('checkpoints/aloha_transfer_cube', str(directory)))
    with pytest.raises(ConfigError) as error:
        stub_launch.run(name, {'rig': 'so101_bimanual', 'policy': str(policy), 'bag': '/tmp/bag'})
    assert [r for r in Recorded.made if type(r).__name__ == 'Node'] == []  # nothing started, nothing respawned
    message = str(error.value)
    assert '\n' not in message and message.startswith(f'{policy}: checkpoint: {directory}: ')
    if checkpoint == 'aloha':
        assert message.endswith("are not joints of rig 'so101_bimanual'")
    else:
        assert message.endswith('checkpoint directory not found')


def test_a_checkpoint_the_user_named_that_fits_gets_the_policy_node(stub_launch, tmp_path) -> None:
    policy = tmp_path / 'mine.yaml'
    policy.write_text(DEFAULT_POLICY.read_text().replace('checkpoints/aloha_transfer_cube', str(SHIPPED_CHECKPOINT)))
    nodes = nodes_of(stub_launch.run('sim.launch.py', {'policy': str(policy)}))
    assert [n['executable'] for n in nodes][:2] == ['sim_rig', 'policy_node']
    assert nodes[1]['parameters'][0]['policy'] == str(policy)
    assert stub_launch.warnings == []


@pytest.mark.parametrize(
    ('rig', 'overrides', 'task', 'seed'),
    [
        ('so101_sim', {}, None, None),  # the twin's own sim.task (handover_cube) and seed reach sim_rig
        ('so101_sim', {'task': 'lift_bar', 'seed': '7'}, 'lift_bar', 7),
        ('aloha_sim', {}, None, None),
        ('aloha_sim', {'task': 'insertion'}, 'insertion', None),
    ],
)
def test_sim_launch_gives_sim_rig_the_task_and_seed_only_when_given(stub_launch, rig, overrides, task, seed) -> None:
    """sim.launch.py's task:= / seed:= default to the rig's `sim:` block: a launch default of its own
    (transfer_cube) would be refused by the SO-101 twin's scene."""
    nodes = nodes_of(stub_launch.run('sim.launch.py', {'rig': rig, 'policy': '', **overrides}))
    (sim_rig,) = [n for n in nodes if n['executable'] == 'sim_rig']
    params = sim_rig['parameters'][0]
    assert params.get('task') == task and params.get('seed') == seed
    if rig == 'so101_sim':
        assert [n['executable'] for n in nodes][:3] == ['sim_rig', 'arm_driver', 'arm_driver']
        assert stub_launch.warnings == []


@pytest.mark.parametrize(
    ('name', 'rig', 'robot_half'),
    [
        ('rig.launch.py', 'so101_bimanual', ['arm_driver'] * 2 + ['camera_driver'] * 3),
        ('sim.launch.py', 'aloha_sim', ['sim_rig']),
    ],
)
def test_only_robot_starts_the_robot_half_with_the_clock_responder_and_no_policy(
    stub_launch, name, rig, robot_half
) -> None:
    """only:=robot is `run --only robot`: everything but the policy node, plus the clock responder the
    policy host measures its offset against; no word about a policy the robot never runs."""
    nodes = nodes_of(stub_launch.run(name, {'rig': rig, 'only': 'robot'}))
    executables = [n['executable'] for n in nodes]
    assert executables == [*robot_half, 'clock_responder', 'robot_state_publisher']
    assert stub_launch.warnings == []


def test_only_policy_starts_the_policy_node_alone(stub_launch) -> None:
    """only:=policy is `run --only policy`: the policy node and what was asked for (rviz2), no drivers,
    no simulator, and no robot_state_publisher (robot_description comes from the robot's side)."""
    nodes = nodes_of(stub_launch.run('sim.launch.py', {'only': 'policy', 'rviz': 'true'}))
    assert [n['executable'] for n in nodes] == ['policy_node', 'rviz2']
    assert nodes[0]['parameters'][0]['rig'] == 'aloha_sim'
    assert nodes[0]['parameters'][0]['use_sim_time'] is True


@pytest.mark.parametrize(
    ('overrides', 'message'),
    [
        (
            {'rig': 'so101_bimanual', 'only': 'policy'},
            "only:=policy: no policy to run on rig 'so101_bimanual': policy off: ",
        ),
        (
            {'rig': 'so101_bimanual', 'only': 'policy', 'policy': ''},
            "only:=policy: no policy to run on rig 'so101_bimanual' (policy:= is empty)",
        ),
        (
            {'rig': 'so101_bimanual', 'only': 'robots'},
            "only:=robots: must be one of robot, policy or '' (the whole rig)",
        ),
    ],
)
def test_a_half_that_cannot_start_stops_the_launch_in_one_line(stub_launch, overrides, message) -> None:
    from bimanual_vla.config import ConfigError

    with pytest.raises(ConfigError) as error:
        stub_launch.run('rig.launch.py', overrides)
    assert [r for r in Recorded.made if type(r).__name__ == 'Node'] == []
    assert '\n' not in str(error.value) and str(error.value).startswith(message)


def test_find_executable_looks_where_launch_ros_looks(tmp_path, monkeypatch) -> None:
    """ExecutableInPackage: <package prefix from the ament index>/lib/<package>/<executable>."""
    prefix = tmp_path / 'install'
    (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages').mkdir(parents=True)
    (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'fake_pkg').write_text('')
    (prefix / 'lib' / 'fake_pkg').mkdir(parents=True)
    exe = prefix / 'lib' / 'fake_pkg' / 'fake_node'
    exe.write_text('#!/bin/sh\n')
    exe.chmod(0o755)
    (prefix / 'lib' / 'fake_pkg' / 'not_executable').write_text('')
    bin_dir = tmp_path / 'bin'  # where pip puts console scripts: not where launch_ros looks
    bin_dir.mkdir()
    (bin_dir / 'other_node').write_text('#!/bin/sh\n')
    (bin_dir / 'other_node').chmod(0o755)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(prefix))
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    assert launch_availability.find_executable('fake_pkg', 'fake_node') == str(exe)
    assert launch_availability.find_executable('fake_pkg', 'not_executable') is None
    assert launch_availability.find_executable('fake_pkg', 'other_node') is None
    assert launch_availability.find_executable('no_such_pkg', 'fake_node') is None
    monkeypatch.delenv('AMENT_PREFIX_PATH')  # nothing sourced: ament_index raises, the answer is "not found"
    assert launch_availability.find_executable('fake_pkg', 'fake_node') is None


def test_ros2_launch_hint_names_the_way_to_get_it(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return object() if name == 'launch_ros' else real_find_spec(name, *args)

    if importlib.util.find_spec('launch_ros') is None:
        assert launch_availability.ros2_launch_hint() == launch_availability.PIP_HINT
    monkeypatch.setattr(importlib.util, 'find_spec', find_spec)
    assert launch_availability.ros2_launch_hint(found_except('bimanual_vla')) == launch_availability.COLCON_HINT
    assert launch_availability.ros2_launch_hint(found_except()) is None


def _colcon() -> str | None:
    import shutil

    return os.environ.get('BIMANUAL_COLCON') or shutil.which('colcon')


@pytest.mark.slow
@pytest.mark.skipif(_colcon() is None, reason='colcon not found (BIMANUAL_COLCON unset, not on PATH)')
def test_after_a_colcon_build_every_executable_of_this_package_is_where_launch_ros_looks(tmp_path) -> None:
    """A real colcon install on AMENT_PREFIX_PATH: the launch plan finds this package's executables
    (robot_state_publisher and rviz2 are not in that prefix: left out with their warnings)."""
    import shutil
    import subprocess

    source = tmp_path / 'ws' / 'src' / 'bimanual_vla'
    listed = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True)
    for rel in filter(None, listed.stdout.decode().split('\0')):  # the working tree, as test_package_metadata
        if (ROOT / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, source / rel)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'AMENT_PREFIX_PATH')}
    build = subprocess.run(
        [_colcon(), 'build', '--base-paths', 'src'], cwd=tmp_path / 'ws', env=env, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    prefix = tmp_path / 'ws' / 'install' / 'bimanual_vla'
    probe = (
        'import json\n'
        'from bimanual_vla.bringup import launch_actions as la\n'
        "p = la.plan(la.sim_processes('aloha_sim', 'default', task='transfer_cube', seed='0', rviz=True, record='b'))\n"
        'print(json.dumps([[x.package, x.executable] for x in p.processes] + [p.warnings]))\n'
    )
    run = subprocess.run(
        [sys.executable, '-c', probe],
        cwd=tmp_path,
        env={
            **env,
            'AMENT_PREFIX_PATH': str(prefix),
            'PYTHONPATH': str(next(prefix.glob('lib/python3.*/site-packages'))),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    *processes, warnings = json.loads(run.stdout)
    assert processes == [
        ['bimanual_vla', 'sim_rig'],
        ['bimanual_vla', 'policy_node'],
        ['bimanual_vla', 'robot_description_publisher'],
        ['bimanual_vla', 'bimanual-vla'],
    ]
    assert [w.split(' ')[0] for w in warnings] == ['robot_state_publisher/robot_state_publisher', 'rviz2/rviz2']
