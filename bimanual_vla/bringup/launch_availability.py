"""Can `ros2 launch bimanual_vla ...` start this package's executables here, and if not, how to get it.

launch_ros finds an executable the way `find_executable` does (its ExecutableInPackage): the package's
prefix from the ament index, then `<prefix>/lib/<package>/<executable>`. A colcon build installs both;
a pip install (editable or not) writes no ament index entry on the search path and puts console
scripts in `bin/`, and the PyPI wheels have no `launch`/`launch_ros` at all (docs/installing.md).
Light on purpose: `bimanual-vla run --help` asks `ros2_launch_hint` while its parser is built.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable

PACKAGE = 'bimanual_vla'

COLCON_HINT = (
    'ros2 launch needs this package built by colcon on a ROS 2 install (colcon build, then '
    'source install/setup.bash); a pip install has no ament index entry: use `bimanual-vla run` there '
    '(docs/installing.md)'
)

PIP_HINT = (
    'ros2 launch needs a ROS 2 distribution (launch, launch_ros) and a colcon build of this package; '
    'on the pip path `bimanual-vla run` starts the same nodes (docs/installing.md)'
)


def find_executable(package: str, executable: str) -> str | None:
    """Where launch_ros would find `executable` of `package` (its ExecutableInPackage), or None."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return None
    try:
        prefix = get_package_prefix(package)
    except (PackageNotFoundError, ValueError, OSError):  # OSError: AMENT_PREFIX_PATH unset (nothing sourced)
        return None
    libexec = os.path.join(prefix, 'lib', package)
    if not os.path.isdir(libexec):
        return None
    return shutil.which(executable, path=libexec)


def ros2_launch_hint(find: Callable[[str, str], str | None] | None = None) -> str | None:
    """One line on how to get `ros2 launch bimanual_vla ...`, or None where it works already."""
    try:
        has_launch_ros = importlib.util.find_spec('launch_ros') is not None
    except ValueError:  # imported already, without a spec (a stand-in module)
        has_launch_ros = True
    if not has_launch_ros:
        return PIP_HINT
    if (find or find_executable)(PACKAGE, 'policy_node') is None:
        return COLCON_HINT
    return None
