"""The pip path must keep DDS discovery on localhost; a sourced ROS install keeps the user's choice."""

from __future__ import annotations

from pathlib import Path

from bimanual_vla.rosenv import apply_pip_defaults

ROOT = Path(__file__).resolve().parents[1]


def test_pip_path_defaults_to_localhost() -> None:
    env: dict[str, str] = {}
    apply_pip_defaults(env)
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert env['MUJOCO_GL'] == 'egl'
    profile = Path(env['FASTDDS_DEFAULT_PROFILES_FILE'])
    assert profile == ROOT / 'config' / 'fastdds' / 'large_images.xml'
    text = profile.read_text()
    # Fast DDS's UDP must stay on loopback and the SHM segment must hold a 640x480 rgb8 frame.
    assert '<address>127.0.0.1</address>' in text and '<useBuiltinTransports>false</useBuiltinTransports>' in text
    import re

    assert int(re.search(r'<segment_size>(\d+)</segment_size>', text).group(1)) >= 4 * 640 * 480 * 3


def test_user_choice_and_sourced_ros_are_respected() -> None:
    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET'}
    apply_pip_defaults(env)
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SUBNET'
    sourced = {'ROS_DISTRO': 'jazzy'}
    apply_pip_defaults(sourced)
    assert 'ROS_AUTOMATIC_DISCOVERY_RANGE' not in sourced
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' not in sourced
    own = {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/my_profile.xml'}
    apply_pip_defaults(own)
    assert own['FASTDDS_DEFAULT_PROFILES_FILE'] == '/etc/my_profile.xml'


def test_make_and_ci_set_localhost_discovery() -> None:
    makefile = (ROOT / 'Makefile').read_text()
    assert 'export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST' in makefile
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'make test' in ci and 'ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST' in ci
