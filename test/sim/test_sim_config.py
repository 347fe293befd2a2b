"""The rig's `sim:` block: validated like the rest of the rig file, one line per problem naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bimanual_vla.config import ConfigError, SimConfig, load_rig, resolve_rig_path


def _aloha_with_sim(tmp_path: Path, sim: dict) -> Path:
    data = yaml.safe_load(resolve_rig_path('aloha_sim').read_text())
    data['sim'] = sim
    data['urdf'] = str(resolve_rig_path('aloha_sim').parents[2] / data['urdf'])
    path = tmp_path / 'rig.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_sim_block_is_read_into_its_model() -> None:
    sim = load_rig('aloha_sim').sim
    assert sim == SimConfig(task='transfer_cube', seed=0, real_time_factor=1.0, servo_bus='')


def test_a_good_sim_block_keeps_its_values(tmp_path: Path) -> None:
    sim = {'task': 'insertion', 'seed': 7, 'real_time_factor': 0, 'servo_bus': 'feetech'}
    rig = load_rig(_aloha_with_sim(tmp_path, sim))
    assert rig.sim == SimConfig(task='insertion', seed=7, real_time_factor=0.0, servo_bus='feetech')
    assert isinstance(rig.sim.real_time_factor, float)  # an integer YAML number is a float field's value


@pytest.mark.parametrize(
    ('sim', 'field', 'message'),
    [
        ({'taks': 'insertion'}, 'sim.taks', 'unknown field (check the spelling)'),
        ({'expert': True}, 'sim.expert', 'unknown field (check the spelling)'),
        (
            {'task': 'stacking'},
            'sim.task',
            "Input should be 'transfer_cube', 'insertion', 'handover_cube' or 'lift_bar'",
        ),
        ({'seed': '3'}, 'sim.seed', 'Input should be a valid integer'),  # strict: no string to int
        ({'seed': 3.0}, 'sim.seed', 'Input should be a valid integer'),
        ({'seed': -1}, 'sim.seed', 'Input should be greater than or equal to 0'),
        ({'real_time_factor': '1.0'}, 'sim.real_time_factor', 'Input should be a valid number'),
        ({'real_time_factor': -0.5}, 'sim.real_time_factor', 'Input should be greater than or equal to 0'),
        ({'real_time_factor': float('inf')}, 'sim.real_time_factor', 'Input should be a finite number'),
        ({'servo_bus': 'canbus'}, 'sim.servo_bus', "Input should be '', 'feetech' or 'dynamixel'"),
    ],
)
def test_a_bad_sim_field_is_refused_naming_file_and_field(tmp_path: Path, sim: dict, field: str, message: str) -> None:
    path = _aloha_with_sim(tmp_path, sim)
    with pytest.raises(ConfigError) as err:
        load_rig(path)
    assert str(err.value) == f'{path}: {field}: {message}'
