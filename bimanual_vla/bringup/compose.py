"""Run a bringup's nodes, each on its own executor thread (the pip path's `ros2 launch`).

`bimanual-vla run` / `demo` / `eval-sim` and the end-to-end tests use this; the launch files start
the same NodeSpecs as separate processes. Nodes named in `own_process` (by default the policy node:
`OWN_PROCESS`) get a child process of their own, as launch would give them, because Python nodes in
one process share one interpreter lock (bimanual_vla/bringup/node_process.py); the rest share this process.
A node that fails to construct (bad config, missing device) stops the whole bringup with its error,
after destroying the nodes already created. Once running, a child process that dies either stops
the bringup (the default, for offline tools such as eval-sim) or, given a `RestartPolicy`
(`bimanual-vla run`), is restarted with backoff while the rest keeps running
(bimanual_vla/bringup/supervision.py); a `bringup_monitor` node then reports every child on `/diagnostics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from bimanual_vla import topics
from bimanual_vla.bringup.executors import NodeThreads
from bimanual_vla.bringup.node_process import NodeProcess
from bimanual_vla.bringup.nodes import NodeSpec, robot_description
from bimanual_vla.bringup.supervision import RestartPolicy, Supervisor
from bimanual_vla.config import ConfigError
from bimanual_vla.node_parameters import check_overrides, type_exception_text
from bimanual_vla.ros_utils import ERROR, OK, WARN, diagnostic_status, log_at

# Executables started in a process of their own unless a caller asks for everything composed.
OWN_PROCESS: tuple[str, ...] = ('policy_node',)


class RobotDescriptionPublisher(Node):
    """Publishes the rig's URDF on `robot_description` (latched), as robot_state_publisher would."""

    def __init__(self, urdf: str, **kwargs) -> None:
        super().__init__('robot_description_publisher', **kwargs)
        self._pub = self.create_publisher(String, topics.ROBOT_DESCRIPTION, topics.LATCHED_QOS)
        self._pub.publish(String(data=urdf))


class BringupMonitor(Node):
    """Supervises the bringup's child processes and reports each on `/diagnostics` once a second."""

    LEVELS = {'running': OK, 'starting': WARN, 'stopped': ERROR, 'restarting': ERROR}

    def __init__(self, children: list[NodeProcess], restart: RestartPolicy, **kwargs) -> None:
        super().__init__('bringup_monitor', **kwargs)
        self.supervisor = Supervisor(children, restart, log=self._log)
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, topics.DIAGNOSTICS_QOS)
        self.create_timer(0.2, self.supervisor.poll)
        self.create_timer(1.0, self._publish_diagnostics)

    def _log(self, level: str, message: str) -> None:
        log_at(self, level, message)

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        for child in self.supervisor.children:
            values = self.supervisor.values(child)
            state = str(values['state'])
            message = {
                'running': f'process {values["pid"]} running',
                'starting': f'restarting: process {values["pid"]} loading',
                'stopped': f'process {values["pid"]} stopped (SIGSTOP): its node does nothing, the arms hold',
                'restarting': f'died ({values["last_exit"]}): the arms hold; restart pending',
            }[state]
            array.status.append(
                diagnostic_status(f'bringup: {child.spec.name} process', self.LEVELS[state], message, values)
            )
        self._diag_pub.publish(array)


def instantiate(spec: NodeSpec, context: Context | None = None) -> Node:
    """Create the node of `spec` with its parameters, named as the spec says.

    The parameters are checked against what the node declares first (bimanual_vla/node_parameters.py):
    one it does not declare, or a value of the wrong type, is a ConfigError naming the node and the
    parameter, raised before the node exists. A whole number for a double (`--set
    sim_rig.render_rate_hz=0`, which YAML types as an integer) is taken as that double. A bad
    calibration file is raised as a ConfigError too: every user error of a bringup is one line.
    """
    from rclpy.exceptions import InvalidParameterTypeException

    from bimanual_vla.drivers.servo.calibration import CalibrationError

    params = check_overrides(spec.executable, spec.parameters, f'node {spec.name}: parameter ', convert=True)
    overrides = [Parameter(key, value=value) for key, value in params.items()]
    try:
        return spec.node_class(
            cli_args=['--ros-args', '-r', f'__node:={spec.name}'], parameter_overrides=overrides, context=context
        )
    except InvalidParameterTypeException as exc:  # the table and the node disagree: still one line
        raise ConfigError(f'node {spec.name}: {type_exception_text(exc)}') from None
    except CalibrationError as exc:  # the user's calibration file: one line, like any ConfigError
        raise ConfigError(str(exc)) from None


@dataclass
class Composition:
    """Nodes of one bringup, each spinning in a thread of its own, plus those in child processes."""

    nodes: list[Node]
    executor: NodeThreads
    children: list[NodeProcess] = field(default_factory=list)
    supervisor: Supervisor | None = None
    _started: float = field(default_factory=time.monotonic)

    def spin(self, duration_s: float | None = None, until: Callable[[], bool] | None = None) -> None:
        """Spin until `duration_s` passes, `until()` is true, or the context shuts down (Ctrl-C)."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        context = self.executor.context
        while context.ok():
            self.check_children()
            if deadline is not None and time.monotonic() >= deadline:
                return
            if until is not None and until():
                return
            self.executor.spin_once(timeout_sec=0.1)

    def check_children(self) -> None:
        """Raise if a node in a child process has exited and nothing restarts it."""
        if self.supervisor is not None:
            return  # the bringup monitor restarts it
        for child in self.children:
            if not child.alive():
                raise RuntimeError(f'{child.spec.name} (process {child.process.pid}) exited')

    def node(self, name: str) -> Node:
        """A node of this process by name (nodes in child processes are reachable through topics only)."""
        for node in self.nodes:
            if node.get_name() == name:
                return node
        raise KeyError(name)

    def shutdown(self) -> None:
        # Every spin thread finishes its callback in progress before a node is destroyed.
        self.executor.shutdown()
        for node in reversed(self.nodes):
            node.destroy_node()
        for child in self.children:
            child.stop()


def compose(
    specs: Iterable[NodeSpec],
    *,
    rig: str | None = None,
    context: Context | None = None,
    extra_nodes: Iterable[Node] = (),
    own_process: Iterable[str] = OWN_PROCESS,
    restart: RestartPolicy | None = None,
) -> Composition:
    """Instantiate every spec (plus a robot_description publisher for `rig`) and start spinning them.

    Specs whose executable is in `own_process` start first, each in a child process, and are
    waited for until constructed (a policy node has loaded its checkpoint before a simulator's clock
    starts); pass `own_process=()` to compose everything in this process.
    """
    nodes: list[Node] = []
    children: list[NodeProcess] = []
    separate = set(own_process)
    try:
        for spec in specs:
            if spec.executable in separate:
                children.append(NodeProcess(spec).start())
        specs = [spec for spec in specs if spec.executable not in separate]
        if rig is not None:
            nodes.append(RobotDescriptionPublisher(robot_description(rig), context=context))
        for spec in specs:
            nodes.append(instantiate(spec, context))
    except BaseException:
        for node in reversed(nodes):
            node.destroy_node()
        for child in children:
            child.stop()
        raise
    supervisor = None
    if restart is not None and children:
        monitor = BringupMonitor(children, restart, context=context)
        supervisor = monitor.supervisor
        nodes.append(monitor)
    nodes.extend(extra_nodes)
    executor = NodeThreads(context=context)
    for node in nodes:
        executor.add_node(node)
    return Composition(nodes, executor, children, supervisor)


def run_composed(specs: Iterable[NodeSpec], heading: str, duration_s: float | None = None, **compose_args) -> int:
    """A command's bringup from start to exit: compose `specs` (`compose`'s keyword arguments), print
    ``heading: <nodes>``, spin for `duration_s` (None: until Ctrl-C), then shut everything down and
    rclpy with it. The caller has called `rclpy.init()`. Ctrl-C ends it quietly; exit status 0."""
    import rclpy

    try:
        composition = compose(specs, **compose_args)
        names = [n.get_name() for n in composition.nodes] + [
            f'{c.spec.name} (own process)' for c in composition.children
        ]
        print(f'{heading}: {", ".join(names)}', flush=True)
        try:
            composition.spin(duration_s)
        finally:
            composition.shutdown()
    except KeyboardInterrupt:
        pass
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    return 0
