"""Serial servo buses: protocols, control tables, bus, calibration, command filter, stall guard, arm
controller, the byte-level emulator beside them, and the arm_driver node."""
