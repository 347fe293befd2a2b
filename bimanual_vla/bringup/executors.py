"""One single-threaded executor per node, each spinning in a thread of its own.

Why not rclpy's ``MultiThreadedExecutor``: in this rclpy (Kilted, pure-Python executor) its
dispatch loop rebuilds the wait set in Python and is woken twice per callback by a guard
condition, so with a 50 Hz sim and a 50 Hz control loop in one process it spends most of the
GIL on bookkeeping and starves the very threads doing the work: it kept a 50 Hz sim far from
real time where a ``SingleThreadedExecutor`` per node in its own thread kept up at a fraction of
the CPU (docs/experiments/2026-11-22-single-threaded-executor-per-node.md). This is what
``component_container_isolated`` does in a ROS 2 install.

Every node in this project keeps its slow work (physics, rendering, serial I/O, inference) in
plain threads and its callbacks short, so one thread per node is enough.
"""

from __future__ import annotations

import threading

from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


class NodeThreads:
    """Spins each added node on its own ``SingleThreadedExecutor`` in a daemon thread.

    Offers the executor calls the rest of the code base uses (``add_node``, ``spin_once``,
    ``spin``, ``remove_node``, ``shutdown``), so test helpers that poll with ``spin_once`` work
    unchanged: here ``spin_once`` only waits, because the nodes are already spinning.
    """

    #: How long a spin thread waits at most before it looks at its stop flag again.
    POLL_S = 0.1

    def __init__(self, context: Context | None = None) -> None:
        self._context = context
        self._spinners: dict[Node, tuple[SingleThreadedExecutor, threading.Thread, threading.Event]] = {}
        self._errors: list[BaseException] = []
        self._stopped = threading.Event()

    @property
    def context(self) -> Context:
        if self._context is None:
            from rclpy.utilities import get_default_context

            return get_default_context()
        return self._context

    def add_node(self, node: Node) -> None:
        """Start spinning `node` now, in its own thread."""
        if node in self._spinners:
            return
        executor = SingleThreadedExecutor(context=self._context)
        executor.add_node(node)
        stop = threading.Event()
        thread = threading.Thread(target=self._spin, args=(executor, stop), name=f'spin {node.get_name()}', daemon=True)
        self._spinners[node] = (executor, thread, stop)
        thread.start()

    def _spin(self, executor: SingleThreadedExecutor, stop: threading.Event) -> None:
        # Poll a stop flag rather than calling Executor.shutdown() from another thread: this rclpy
        # destroys the executor's guard condition there without waiting for the spinning thread.
        try:
            while not stop.is_set() and self.context.ok():
                executor.spin_once(timeout_sec=self.POLL_S)
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # re-raised by spin_once/spin in the owner's thread
            self._errors.append(exc)

    def _raise_errors(self) -> None:
        if self._errors:
            raise self._errors.pop(0)

    def spin_once(self, timeout_sec: float | None = None) -> None:
        """Wait up to `timeout_sec` (the nodes spin by themselves); re-raise a callback's exception."""
        self._raise_errors()
        self._stopped.wait(0.01 if timeout_sec is None else min(timeout_sec, 0.01))
        self._raise_errors()

    def spin(self) -> None:
        """Block until shutdown or the context ends (Ctrl-C)."""
        while self.context.ok() and not self._stopped.is_set():
            self._raise_errors()
            self._stopped.wait(0.05)
        self._raise_errors()

    def remove_node(self, node: Node) -> None:
        """Stop spinning `node`: its callbacks in progress finish first."""
        spinner = self._spinners.pop(node, None)
        if spinner is None:
            return
        executor, thread, stop = spinner
        stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout=10.0)
        executor.shutdown(timeout_sec=0)

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        """Stop every executor and join its thread; the nodes stay alive for their owner to destroy."""
        self._stopped.set()
        for node in list(self._spinners):
            self.remove_node(node)
        return True
