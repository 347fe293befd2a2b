"""Teleoperation: leader arms read on their servo buses, mapped to follower targets, and the teleop node."""
