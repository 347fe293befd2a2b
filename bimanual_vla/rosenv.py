"""Environment defaults for running ROS 2 from the PyPI wheels.

Fast DDS's default discovery multicasts to 239.255.0.1, i.e. off this machine.
When no ROS distribution is sourced (ROS_DISTRO unset: the pip path), we keep
discovery on localhost unless the user chose otherwise. A sourced ROS install
keeps whatever the user configured, since a real rig may span machines.
"""

from __future__ import annotations

import os


def apply_pip_defaults(environ: dict[str, str] | None = None) -> None:
    """Set safe defaults in `environ` (os.environ by default) before rclpy starts."""
    env = os.environ if environ is None else environ
    if not env.get('ROS_DISTRO'):
        env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env.setdefault('MUJOCO_GL', 'egl')
