"""Environment defaults for running ROS 2 from the PyPI wheels.

Fast DDS's default discovery multicasts to 239.255.0.1, i.e. off this machine. When no ROS
distribution is sourced (ROS_DISTRO unset: the pip path, where the whole rig runs on one machine),
we keep discovery on localhost and load `config/fastdds/large_images.xml`, unless the user chose
otherwise. That profile gives Fast DDS a 16 MiB shared-memory segment (a 640x480 rgb8 frame is
900 KB, more than the default 512 KiB segment, and fragmented best-effort UDP loses most frames
under load) and restricts its UDP transport to the loopback interface. A sourced ROS install keeps
whatever the user configured, since a real rig may span machines.
"""

from __future__ import annotations

import os

FASTDDS_PROFILE = 'config/fastdds/large_images.xml'


def fastdds_profile_path() -> str | None:
    """The shipped Fast DDS profile, if it is installed where share_dir() says."""
    from bimanual_vla.config import share_dir

    path = share_dir() / FASTDDS_PROFILE
    return str(path) if path.is_file() else None


def apply_pip_defaults(environ: dict[str, str] | None = None) -> None:
    """Set safe defaults in `environ` (os.environ by default) before rclpy starts."""
    env = os.environ if environ is None else environ
    if not env.get('ROS_DISTRO'):
        env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
        profile = fastdds_profile_path()
        if profile and 'FASTDDS_DEFAULT_PROFILES_FILE' not in env and 'FASTRTPS_DEFAULT_PROFILES_FILE' not in env:
            env['FASTDDS_DEFAULT_PROFILES_FILE'] = profile
    env.setdefault('MUJOCO_GL', 'egl')
