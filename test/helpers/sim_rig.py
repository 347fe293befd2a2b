"""A sim_rig node built with parameter overrides, and executor threads to spin it with its peers.

Shared by the simulator's tests (test/sim/test_sim_rig.py) and the e-stop QoS test
(test/test_qos_inputs.py).
"""

from __future__ import annotations


def sim_rig_node(ros_context, **params):
    """A ``SimRig`` in ``ros_context`` with ``params`` as its parameter overrides."""
    from rclpy.parameter import Parameter

    from bimanual_vla.sim.node import SimRig

    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return SimRig(context=ros_context, parameter_overrides=overrides)


def node_threads(ros_context, *nodes):
    """``NodeThreads`` (one executor thread per node, as composition runs them) holding ``nodes``."""
    from bimanual_vla.bringup.executors import NodeThreads

    ex = NodeThreads(context=ros_context)
    for n in nodes:
        ex.add_node(n)
    return ex
