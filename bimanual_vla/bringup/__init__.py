"""Bringup: the node sets of a rig, composition in one process, child processes and their supervision,
executors, and the launch actions the launch files use."""
