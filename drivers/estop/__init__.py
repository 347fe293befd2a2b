"""E-stop inputs: a terminal key and an evdev key or foot pedal, and the node that publishes them."""
