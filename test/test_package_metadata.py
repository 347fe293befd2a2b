"""Package metadata consistency: what colcon and pip install must exist and agree."""

from __future__ import annotations

import importlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def dist():
    """setup.py evaluated without installing anything (distutils' run_setup, stop_after='init')."""
    import setuptools  # noqa: F401  (must come first: installs setuptools' distutils shim)

    run_setup = importlib.import_module('distutils.core').run_setup

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return run_setup(str(ROOT / 'setup.py'), stop_after='init')
    finally:
        os.chdir(cwd)


@pytest.fixture(scope='module')
def package_xml() -> ET.Element:
    return ET.parse(ROOT / 'package.xml').getroot()


def test_package_xml_and_setup_agree(dist, package_xml: ET.Element) -> None:
    assert package_xml.get('format') == '3'
    assert package_xml.findtext('name') == dist.get_name() == 'bimanual_vla'
    assert package_xml.findtext('version') == dist.get_version()
    assert package_xml.findtext('license') == dist.get_license()
    assert package_xml.find('export/build_type').text == 'ament_python'
    from bimanual_vla import __version__

    assert __version__ == dist.get_version()


def test_package_xml_declares_runtime_dependencies(package_xml: ET.Element) -> None:
    exec_deps = {e.text for e in package_xml.findall('exec_depend')}
    required = {
        'rclpy',
        'sensor_msgs',
        'std_msgs',
        'trajectory_msgs',
        'visualization_msgs',
        'diagnostic_msgs',
        'std_srvs',
        'rosgraph_msgs',
        'launch',
        'launch_ros',
        'robot_state_publisher',
        'python3-serial',
        'python3-opencv',
        'python3-numpy',
        'python3-pydantic',
    }
    assert required <= exec_deps, required - exec_deps
    test_deps = {e.text for e in package_xml.findall('test_depend')}
    assert {'python3-pytest', 'launch_pytest'} <= test_deps


def test_ament_resource_marker_and_setup_cfg() -> None:
    assert (ROOT / 'resource' / 'bimanual_vla').is_file()
    cfg = (ROOT / 'setup.cfg').read_text()
    assert 'script_dir=$base/lib/bimanual_vla' in cfg
    assert 'install_scripts=$base/lib/bimanual_vla' in cfg


def test_one_namespace_over_the_layer_folders(dist) -> None:
    """Every package is bimanual_vla or below it, each layer folder is mapped, and every folder with an
    __init__.py is a listed package: installing adds `bimanual_vla` to site-packages and nothing else."""
    assert all(p == 'bimanual_vla' or p.startswith('bimanual_vla.') for p in dist.packages), dist.packages
    mapped = {
        'bimanual_vla.drivers': 'drivers',
        'bimanual_vla.sim': 'sim',
        'bimanual_vla.policy_node': 'policy_node',
        'bimanual_vla.learning': 'learning',
        'bimanual_vla.bags': 'bags',
    }
    assert dist.package_dir == {'bimanual_vla': 'bimanual_vla', **mapped}
    on_disk = set()
    for namespace, folder in dist.package_dir.items():
        for init in (ROOT / folder).rglob('__init__.py'):
            sub = init.parent.relative_to(ROOT / folder).parts
            on_disk.add('.'.join((namespace, *sub)))
    assert on_disk == set(dist.packages)
    # `make lint` lays the same folders out for import-linter
    makefile = (ROOT / 'Makefile').read_text()
    assert f'LAYER_FOLDERS := {" ".join(mapped.values())}' in makefile


def test_every_data_files_entry_matches_files(dist) -> None:
    targets = {}
    for target, files in dist.data_files:
        assert files, f'data_files entry {target} matches no files'
        for f in files:
            assert (ROOT / f).is_file(), f
        targets[target] = files
    assert targets['share/ament_index/resource_index/packages'] == ['resource/bimanual_vla']
    assert targets['share/bimanual_vla'] == ['package.xml']
    assert 'config/rigs/aloha_sim.yaml' in targets['share/bimanual_vla/config/rigs']


def test_every_console_script_resolves(dist) -> None:
    scripts = dist.entry_points['console_scripts']
    names = {s.split('=')[0].strip() for s in scripts}
    assert 'bimanual-vla' in names
    for spec in scripts:
        name, target = (part.strip() for part in spec.split('='))
        module_name, func_name = target.split(':')
        module = importlib.import_module(module_name)
        assert callable(getattr(module, func_name, None)), f'{name}: {target} is not callable'


def test_cli_help_for_every_subcommand() -> None:
    from bimanual_vla.cli.main import build_parser

    parser = build_parser()
    sub_action = next(a for a in parser._actions if a.__class__.__name__ == '_SubParsersAction')
    assert 'check-rig' in sub_action.choices
    for name, sub in sub_action.choices.items():
        text = sub.format_help()
        assert text.startswith('usage: bimanual-vla ' + name), name
