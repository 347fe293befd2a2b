"""Cameras: capture sources (devices, video files, test pattern) and the camera_driver node."""
