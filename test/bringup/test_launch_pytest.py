"""launch_pytest tests of the launch files: they run only where ROS 2 is installed from a distribution.

The PyPI wheels this project installs on the pip path have no `launch`, `launch_ros` or
`launch_pytest`, so there the whole module is skipped with that reason; test_launch_files.py
checks the launch files statically everywhere.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

launch_pytest = pytest.importorskip(
    'launch_pytest', reason='launch_pytest is part of a ROS 2 distribution install, not of the PyPI wheels'
)

from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

from bimanual_vla import topics  # noqa: E402
from bimanual_vla.config import share_dir  # noqa: E402


def include(name: str, **arguments: str) -> LaunchDescription:
    source = PythonLaunchDescriptionSource(str(Path(share_dir()) / 'launch' / name))
    return LaunchDescription(
        [IncludeLaunchDescription(source, launch_arguments=arguments.items()), launch_pytest.actions.ReadyToTest()]
    )


def wait_for(msg_type, topic: str, qos, timeout: float = 60.0) -> list:
    import rclpy

    rclpy.init()
    try:
        node = rclpy.create_node('launch_probe')
        got: list = []
        node.create_subscription(msg_type, topic, got.append, qos)
        end = time.monotonic() + timeout
        while not got and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()
        return got
    finally:
        rclpy.shutdown()


@launch_pytest.fixture
def sim_launch():
    return include('sim.launch.py', policy='', seed='1')


@pytest.mark.launch(fixture=sim_launch)
def test_sim_launch_publishes_joint_states_and_images() -> None:
    from sensor_msgs.msg import Image, JointState

    states = wait_for(JointState, topics.JOINT_STATES, topics.SENSOR_QOS)
    assert states and 'left_waist' in states[0].name
    images = wait_for(Image, topics.camera_image('top'), topics.SENSOR_QOS)
    assert images and images[0].encoding == 'rgb8'
    # A subscriber asking for reliable delivery, as create_subscription(..., 10) and MoveIt do.
    assert wait_for(JointState, topics.JOINT_STATES, 10)


RECORDING: dict[str, Path] = {}


@launch_pytest.fixture
def sim_launch_recording(tmp_path_factory):
    """record:=DIR: launch_ros starts `bimanual-vla record DIR ... --ros-args`, which must take them."""
    out = tmp_path_factory.mktemp('launch_bag') / 'bag'
    RECORDING['out'] = out
    return include('sim.launch.py', policy='', seed='2', record=str(out))


@pytest.mark.launch(fixture=sim_launch_recording)
def test_sim_launch_records_a_bag_where_record_says() -> None:
    out = RECORDING['out']
    end = time.monotonic() + 60.0
    while time.monotonic() < end and not list(out.glob('*.mcap')):
        time.sleep(0.5)
    assert list(out.glob('*.mcap')), f'no bag in {out}'


@pytest.fixture(scope='module')
def emulated_bus():
    from bimanual_vla.drivers.servo.emulator import ServoBusEmulator

    emulator = ServoBusEmulator('feetech', [1, 2])
    emulator.start()
    yield emulator
    emulator.stop()


@launch_pytest.fixture
def rig_launch_on_emulator(tmp_path_factory, emulated_bus):
    """rig.launch.py on a one-arm rig whose servos are the byte-level emulator and camera a test pattern."""
    rig = tmp_path_factory.mktemp('rig') / 'emulated_rig.yaml'
    rig.write_text(
        'name: emulated_rig\nurdf: urdf/so101_bimanual.urdf\n'
        f'arms:\n  - name: left\n    protocol: feetech\n    port: {emulated_bus.port}\n'
        '    joints: [{id: 1, name: shoulder_pan, lower: -1.9, upper: 1.9},'
        ' {id: 2, name: shoulder_lift, lower: -1.7, upper: 1.7}]\n'
        'cameras:\n  - {name: base, source: test_pattern, width: 320, height: 240, fps: 15}\n'
    )
    return include('rig.launch.py', rig=str(rig), policy='')


@pytest.mark.launch(fixture=rig_launch_on_emulator)
def test_rig_launch_starts_arm_and_camera_drivers() -> None:
    from sensor_msgs.msg import Image, JointState

    states = wait_for(JointState, topics.JOINT_STATES, topics.SENSOR_QOS)
    assert states and list(states[0].name) == ['left_shoulder_pan', 'left_shoulder_lift']
    images = wait_for(Image, topics.camera_image('base'), topics.SENSOR_QOS)
    assert images and (images[0].width, images[0].height) == (320, 240)
