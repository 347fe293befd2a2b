"""The table of node parameters (bimanual_vla/node_parameters.py) is what the node classes declare.

`run --set`, the bringup and every node executable refuse a parameter the table does not list, so
the table must hold each node's parameters exactly, with their types: this test builds every node
class of `bringup.nodes.NODE_CLASSES` and compares.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bimanual_vla.bringup.nodes import NODE_CLASSES, NodeSpec
from bimanual_vla.config import ConfigError, resolve_rig_path
from bimanual_vla.node_parameters import ANY, NODE_PARAMETERS, check_overrides

pytestmark = pytest.mark.ros

RCLPY_TYPES = {'BOOL': 'bool', 'INTEGER': 'integer', 'DOUBLE': 'double', 'STRING': 'string'}


@pytest.fixture
def so101_rig(tmp_path: Path):
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    emulator = ServoBusEmulator('feetech', range(1, 7))
    data = yaml.safe_load(resolve_rig_path('so101_bimanual').read_text())
    data['arms'] = [{**data['arms'][0], 'port': emulator.start(), 'calibration': str(tmp_path / 'none.json')}]
    data['leaders'] = [lead for lead in data.get('leaders', []) if lead['follower'] == 'left']
    data['cameras'] = [{'name': 'base', 'source': 'test_pattern', 'width': 160, 'height': 120, 'fps': 30}]
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(data))
    try:
        yield path
    finally:
        emulator.stop()


def test_every_node_executable_has_its_parameters_in_the_table() -> None:
    assert set(NODE_PARAMETERS) == set(NODE_CLASSES)


def test_the_table_is_what_each_node_class_declares(ros_context, so101_rig: Path, tiny_checkpoint: Path) -> None:
    from bimanual_vla.bringup.compose import instantiate

    params = {
        'arm_driver': {'rig': str(so101_rig), 'arm': 'left', 'torque_on_start': False},
        'camera_driver': {'rig': str(so101_rig), 'camera': 'base'},
        'sim_rig': {'rig': 'aloha_sim', 'render_rate_hz': 0.0},
        'policy_node': {'rig': 'aloha_sim', 'checkpoint': str(tiny_checkpoint)},
        'estop_input': {'keyboard': False},
        'robot_description_publisher': {'rig': 'aloha_sim'},
        'teleop': {'rig': 'so101_bimanual'},  # its leaders' ports missing: it keeps trying to open them
        'clock_responder': {},
    }
    assert set(params) == set(NODE_CLASSES)  # a node added there is constructed here too
    for executable, values in params.items():
        node = instantiate(NodeSpec(executable, f'{executable}_probe', values), ros_context)
        try:
            declared = {}
            for name, param in node._parameters.items():
                dynamic = node.describe_parameter(name).dynamic_typing
                declared[name] = ANY if dynamic else RCLPY_TYPES[param.type_.name]
        finally:
            node.destroy_node()
        assert declared == NODE_PARAMETERS[executable], executable


def test_a_bringup_node_with_an_undeclared_or_mistyped_parameter_is_refused_before_it_exists(ros_context) -> None:
    from bimanual_vla.bringup.compose import instantiate

    with pytest.raises(ConfigError) as err:
        instantiate(NodeSpec('estop_input', 'pedal', {'keyboard': False, 'keybord': True}), ros_context)
    assert str(err.value).startswith('node pedal: parameter keybord: estop_input declares no parameter keybord (')
    with pytest.raises(ConfigError, match=r"^node pedal: parameter keyboard: must be true or false, got 'no'$"):
        instantiate(NodeSpec('estop_input', 'pedal', {'keyboard': 'no'}), ros_context)


@pytest.mark.parametrize(
    ('kind', 'value', 'convert', 'result', 'problem'),
    [
        ('double', 1, True, 1.0, None),
        ('double', 1, False, 1, 'must be a floating-point number (write 1.0), got 1'),
        ('double', True, True, True, 'must be a floating-point number, got True'),
        ('integer', 2.0, True, 2.0, 'must be an integer, got 2.0'),
        ('integer', False, True, False, 'must be an integer, got False'),
        ('string', 2024, True, '2024', None),
        ('string', 2024, False, 2024, 'must be a string, got 2024'),
        ('string', None, True, None, 'must be a string, got None'),
        ('bool', 'yes', True, 'yes', "must be true or false, got 'yes'"),
        ('any', [1, 2], False, [1, 2], None),
    ],
)
def test_values_are_held_to_the_declared_type(kind: str, value, convert: bool, result, problem: str | None) -> None:
    executable, name = {
        'double': ('arm_driver', 'read_rate_hz'),
        'integer': ('sim_rig', 'seed'),
        'string': ('policy_node', 'checkpoint'),
        'bool': ('policy_node', 'enabled'),
        'any': ('camera_driver', 'source'),
    }[kind]
    if problem is None:
        assert check_overrides(executable, {name: value}, 'parameter ', convert=convert) == {name: result}
    else:
        with pytest.raises(ConfigError) as err:
            check_overrides(executable, {name: value}, 'parameter ', convert=convert)
        assert str(err.value) == f'parameter {name}: {problem}'
