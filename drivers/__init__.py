"""Hardware and simulated hardware: servo protocols, buses, emulator, arm/camera/sim nodes."""
