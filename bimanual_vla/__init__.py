"""bimanual_vla: the contract (config schema, topic names and QoS, URDF model, ROS helpers) at the bottom;
bringup/ and cli/ on top. The other layers live in the folders drivers/, sim/, policy_node/, learning/
and bags/, mapped into this namespace by setup.py (docs/architecture.md)."""

__version__ = '0.1.0'
