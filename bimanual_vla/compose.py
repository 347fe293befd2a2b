"""Run a bringup's nodes in one process, each on its own executor thread (the pip path's `ros2 launch`).

`bimanual-vla run` / `demo` and the end-to-end tests use this; the launch files start the same
NodeSpecs as separate processes. A node that fails to construct (bad config, missing device) stops
the whole bringup with its error, after destroying the nodes already created.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from bimanual_vla import topics
from bimanual_vla.bringup import NodeSpec, robot_description
from bimanual_vla.executors import NodeThreads


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
    """Nodes of one bringup in one process, each spinning in a thread of its own."""

    nodes: list[Node]
    executor: NodeThreads
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
        # Every spin thread finishes its callback in progress before a node is destroyed.
        self.executor.shutdown()
        for node in reversed(self.nodes):
            node.destroy_node()


def compose(
    specs: Iterable[NodeSpec],
    *,
    rig: str | None = None,
    context: Context | None = None,
    extra_nodes: Iterable[Node] = (),
) -> Composition:
    """Instantiate every spec (plus a robot_description publisher for `rig`) and start spinning them."""
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
    executor = NodeThreads(context=context)
    for node in nodes:
        executor.add_node(node)
    return Composition(nodes, executor)
