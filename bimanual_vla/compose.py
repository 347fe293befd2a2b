"""Run a bringup's nodes in one process under a MultiThreadedExecutor (the pip path's `ros2 launch`).

`bimanual-vla run` / `demo` and the end-to-end tests use this; the launch files start the same
NodeSpecs as separate processes. A node that fails to construct (bad config, missing device) stops
the whole bringup with its error, after destroying the nodes already created.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from bimanual_vla import topics
from bimanual_vla.bringup import NodeSpec, robot_description


class RobotDescriptionPublisher(Node):
    """Publishes the rig's URDF on `robot_description` (latched), as robot_state_publisher would."""

    def __init__(self, urdf: str, **kwargs) -> None:
        super().__init__('robot_description_publisher', **kwargs)
        self._pub = self.create_publisher(String, topics.ROBOT_DESCRIPTION, topics.LATCHED_QOS)
        self._pub.publish(String(data=urdf))


def instantiate(spec: NodeSpec, context: Context | None = None) -> Node:
    """Create the node of `spec` with its parameters, named as the spec says."""
    overrides = [Parameter(key, value=value) for key, value in spec.parameters.items()]
    return spec.node_class(
        cli_args=['--ros-args', '-r', f'__node:={spec.name}'], parameter_overrides=overrides, context=context
    )


@dataclass
class Composition:
    """Nodes of one bringup sharing one executor."""

    nodes: list[Node]
    executor: MultiThreadedExecutor
    _started: float = field(default_factory=time.monotonic)

    def spin(self, duration_s: float | None = None, until: Callable[[], bool] | None = None) -> None:
        """Spin until `duration_s` passes, `until()` is true, or the context shuts down (Ctrl-C)."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        context = self.executor.context
        while context.ok():
            if deadline is not None and time.monotonic() >= deadline:
                return
            if until is not None and until():
                return
            self.executor.spin_once(timeout_sec=0.1)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.get_name() == name:
                return node
        raise KeyError(name)

    def shutdown(self) -> None:
        # Detach the nodes so nothing new is scheduled, then let callbacks already handed to the thread
        # pool finish: Executor.shutdown() in this rclpy destroys its guard condition without waiting
        # for them, and a late callback then fails with "cannot use Destroyable".
        for node in self.nodes:
            self.executor.remove_node(node)
        pool = getattr(self.executor, '_executor', None)
        if pool is not None:
            pool.shutdown(wait=True)
        self.executor.shutdown(timeout_sec=5.0)
        for node in reversed(self.nodes):
            node.destroy_node()


def compose(
    specs: Iterable[NodeSpec],
    *,
    rig: str | None = None,
    context: Context | None = None,
    extra_nodes: Iterable[Node] = (),
    num_threads: int | None = None,
) -> Composition:
    """Instantiate every spec (plus a robot_description publisher for `rig`) on one executor."""
    nodes: list[Node] = []
    try:
        if rig is not None:
            nodes.append(RobotDescriptionPublisher(robot_description(rig), context=context))
        for spec in specs:
            nodes.append(instantiate(spec, context))
    except BaseException:
        for node in reversed(nodes):
            node.destroy_node()
        raise
    nodes.extend(extra_nodes)
    executor = MultiThreadedExecutor(num_threads=num_threads, context=context)
    for node in nodes:
        executor.add_node(node)
    return Composition(nodes, executor)
