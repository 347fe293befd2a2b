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
sim = ['mujoco>=3.2', 'gym-aloha>=0.1.1']
bags = ['rosbags>=0.10', 'matplotlib>=3.7', 'tqdm>=4.60', 'pyarrow>=15']

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'bench.*']),
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
            'bimanual-vla = bimanual_vla.cli:main',
            'bag_record = bimanual_vla.bag_record:main',
            'bag_replay = bimanual_vla.bag_replay:main',
            'arm_driver = drivers.arm_node:main',
            'policy_node = policy_node.node:main',
            'sim_rig = drivers.sim_rig:main',
            'camera_driver = drivers.camera_node:main',
            'estop_input = bimanual_vla.estop_node:main',
        ],
    },
)
