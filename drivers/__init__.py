"""Hardware only: serial servo buses (servo/), cameras (camera/) and e-stop input devices (estop/), each a
library without ROS plus a thin node."""
