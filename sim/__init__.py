"""The simulated rigs: MuJoCo scene, scripted expert, the sim_rig node, simulated servo buses and the
fault hooks the soak bench uses."""
