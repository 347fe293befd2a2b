"""The SO-101 twin's rig file for tests: ports and calibration files in a test's own folder."""

from __future__ import annotations

from pathlib import Path

from bimanual_vla.config import share_dir


def twin_rig_file(tmp_path: Path, camera_size: tuple[int, int] | None = None) -> Path:
    """so101_sim.yaml with its ports and calibration files in tmp_path (the shipped ports are one fixed
    path per machine), and optionally smaller cameras (three 640x480 views rendered in real time are
    more than a loaded CPU does)."""
    text = (share_dir() / 'config/rigs/so101_sim.yaml').read_text()
    text = text.replace('/tmp/bimanual_vla_so101_sim/', f'{tmp_path}/')
    text = text.replace('~/.config/bimanual_vla/calibration/', f'{tmp_path}/')
    if camera_size is not None:
        text = text.replace('width: 640, height: 480', f'width: {camera_size[0]}, height: {camera_size[1]}')
    path = tmp_path / 'so101_sim.yaml'
    path.write_text(text)
    return path
