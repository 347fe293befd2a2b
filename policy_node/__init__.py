"""The run-time policy: PI0 model wrapper, preprocessing, normalisation, chunking (RTC), safety gate,
input sync, checkpoint, markers and the policy node."""
