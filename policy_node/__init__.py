"""The VLA policy: PI0 model wrapper, text reasoning, flow sampling, chunk streaming, training."""
