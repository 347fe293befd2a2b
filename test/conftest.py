"""Test-wide ROS 2 setup: localhost-only discovery and a domain id unique to this session.

Set before rclpy is imported anywhere, and inherited by every subprocess a test
starts, so no test traffic leaves the machine and parallel test sessions on one
machine do not hear each other. The fixtures below are shared by several test folders;
the harnesses and data they build on live in test/helpers/ (imported as ``helpers.<module>``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_DOMAIN_ID'] = os.environ.get('BIMANUAL_TEST_DOMAIN_ID', str(os.getpid() % 100 + 1))
os.environ.setdefault('MUJOCO_GL', 'egl')
# The Fast DDS profile the CLI uses on the pip path (large SHM segment, UDP on loopback only).
FASTDDS_PROFILE = Path(__file__).resolve().parents[1] / 'config' / 'fastdds' / 'large_images.xml'
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(FASTDDS_PROFILE))
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


@pytest.fixture
def ros_context() -> Iterator[object]:
    """A fresh rclpy Context per test, shut down afterwards (even if the test fails)."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


def spin_until(executor, predicate: Callable[[], bool], timeout: float) -> bool:
    """Spin `executor` until `predicate()` is true or `timeout` seconds pass; return the predicate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()


@pytest.fixture
def spin() -> Callable[..., bool]:
    return spin_until


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random aloha_sim checkpoint (read-only by convention: copy it before editing)."""
    from bimanual_vla.learning.tiny_checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', rig='aloha_sim', seed=0)


@pytest.fixture(scope='session')
def tiny_policy(tiny_checkpoint: Path):
    """The tiny checkpoint loaded once. Tests sharing it must not depend on its cached subtask."""
    from bimanual_vla.policy_node.model import VLAPolicy

    return VLAPolicy.load(tiny_checkpoint)


@pytest.fixture(scope='session')
def node_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The policy node tests' tiny random aloha_sim checkpoint, with 2 s chunks (read-only: copy it
    before editing)."""
    from helpers.policy_node import make_node_checkpoint

    return make_node_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny')


@pytest.fixture
def policy_harness(ros_context) -> Iterator[tuple[object, Callable[..., object]]]:
    """(synthetic rig, start(policy file, **parameters) -> PolicyNode), spun on their own executor
    threads until the test ends (``helpers.policy_node.PolicyHarness``)."""
    from helpers.policy_node import PolicyHarness

    with PolicyHarness(ros_context) as harness:
        yield harness.rig, harness.start


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal (master, slave): a terminal for keyboard readers to read, written by the test."""
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass
