"""bimanual_vla: shared contract (config, topics, QoS), bringup CLI, bag tools."""

__version__ = '0.1.0'
