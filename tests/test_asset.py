"""The asset stage: floaters, decimation, UV unwrap, texture bake, GLB / OBJ export, and the job around it."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import mcubes
import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

import lrm
from lrm.asset import (bake_texture, decimate, dilate, make_asset, rasterize, remove_floaters, texture_colors,
                       unwrap)
from lrm.field import Field, grid_coordinates
from lrm.mesh import srgb_to_linear

from conftest import psnr

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / ".validator" / "node_modules" / "gltf-validator"  # npm install --prefix .validator (.ci/run)
G = 96  # grid of the test surfaces


def surface(sdf, resolution=G) -> trimesh.Trimesh:
    """Marching cubes of an analytic signed distance over [-1, 1]³, as extract_mesh lays its vertices out."""
    values = sdf(grid_coordinates(resolution, 0, resolution ** 3)).reshape((resolution,) * 3).numpy()
    vertices, faces = mcubes.marching_cubes(-values, 0.0)
    return trimesh.Trimesh(vertices / (resolution - 1) * 2 - 1, faces, process=False)


def ball(centre, radius):
    return lambda p: (p - torch.tensor(centre)).norm(dim=-1) - radius


def union(*sdfs):
    return lambda p: torch.stack([s(p) for s in sdfs]).amin(0)


def chamfer(a: trimesh.Trimesh, b: trimesh.Trimesh, queries=10000, targets=200000) -> float:
    """Mean distance from points on each surface to the nearest of many points on the other, both ways (the
    targets' spacing, ~0.2 voxel here, is the measure's own floor)."""
    qa, qb = (trimesh.sample.sample_surface(m, queries, seed=s)[0] for m, s in ((a, 0), (b, 1)))
    ta, tb = (trimesh.sample.sample_surface(m, targets, seed=s)[0] for m, s in ((a, 2), (b, 3)))
    return 0.5 * (cKDTree(tb).query(qa)[0].mean() + cKDTree(ta).query(qb)[0].mean())


class AnalyticField(Field):
    """A field whose colour is a smooth function of position (no model): what the bake must reproduce."""

    def __init__(self):
        self.model, self.planes = None, torch.zeros(1, 3, 1, 2, 2)

    def colors(self, xyz):
        xyz = torch.as_tensor(xyz, dtype=torch.float32)
        return torch.stack([0.5 + 0.4 * torch.sin(3 * xyz[:, 0]), 0.5 + 0.4 * torch.cos(2 * xyz[:, 1] + xyz[:, 2]),
                            0.3 + 0.6 * (xyz[:, 2] + 1) / 2], -1).clamp(0, 1)


def test_floaters_go_and_real_parts_stay():
    main = ball((0.0, 0.0, 0.0), 0.5)
    with_floater = surface(union(main, ball((0.8, 0.8, 0.8), 0.04)))  # a speck: 0.6 % of the main sphere's area
    assert len(trimesh.graph.connected_components(with_floater.face_adjacency)) == 2
    cleaned = remove_floaters(with_floater)
    assert len(trimesh.graph.connected_components(cleaned.face_adjacency)) == 1
    assert cleaned.bounds[1].max() < 0.6 and abs(cleaned.area - surface(main).area) < 1e-6
    two_parts = surface(union(ball((-0.45, 0, 0), 0.35), ball((0.5, 0, 0), 0.2)))  # a part a third of the other's area
    kept = remove_floaters(two_parts)
    assert len(kept.faces) == len(two_parts.faces)
    assert len(remove_floaters(with_floater, min_share=0.001).faces) == len(with_floater.faces)


def test_decimated_surface_stays_close_to_the_dense_one():
    sdf = union(ball((-0.3, 0, 0), 0.4), ball((0.35, 0.1, 0.1), 0.3))
    dense = surface(sdf, 128)
    light = decimate(dense, 4000)
    assert 3800 <= len(light.faces) <= 4000 < len(dense.faces)
    voxel = 2 / 127
    # exact distances to the true surface (the analytic sdf) of points on both: decimation adds little
    error = [float(sdf(torch.as_tensor(trimesh.sample.sample_surface(m, 20000, seed=0)[0],
                                       dtype=torch.float32)).abs().mean()) for m in (dense, light)]
    assert error[1] <= error[0] + 0.1 * voxel and error[1] <= 0.25 * voxel
    assert decimate(light, 10 ** 6) is light  # nothing to do


def test_rasterize_covers_each_texel_once():
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])  # two triangles sharing the diagonal: the whole square
    texel, face, bary = rasterize(uv, faces, 16)
    assert sorted(texel.tolist()) == list(range(256))
    assert torch.allclose(bary.sum(1), torch.ones(len(bary))) and (bary >= -1e-6).all()
    # the barycentric weights rebuild each texel's centre (row 0 at v = 0)
    centre = (bary[:, :, None] * uv[faces[face]]).sum(1) * 16 - 0.5
    assert torch.allclose(centre, torch.stack([texel % 16, texel // 16], 1).float(), atol=1e-4)


def test_dilate_spreads_charts_by_the_padding_and_fills_the_rest_with_the_mean():
    """Each step adds the ring of texels next to the covered ones, as the mean of their covered neighbours (two charts
    meeting average there); texels further than the padding get the mean of the covered texels."""
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    image, covered = torch.zeros(3, 32, 32), torch.zeros(32, 32, dtype=torch.bool)
    for (row, col), colour in (((9, 5), red), ((10, 5), red), ((10, 13), blue)):
        image[:, row, col], covered[row, col] = colour, True
    out = dilate(image, covered, 4)
    assert torch.equal(out[:, 10, 5], red) and torch.equal(out[:, 10, 13], blue)
    assert torch.equal(out[:, 5, 1], red) and torch.equal(out[:, 14, 17], blue)  # 4 texels out
    assert torch.allclose(out[:, 10, 9], (red + blue) / 2)  # both charts reach it in the 4th step
    mean = (2 * red + blue) / 3
    assert torch.allclose(out[:, 10, 18], mean) and torch.allclose(out[:, 0, 30], mean)  # beyond the padding


def test_bake_reproduces_an_analytic_colour_field():
    field = AnalyticField()
    dense = surface(union(ball((-0.3, 0, 0), 0.4), ball((0.35, 0.1, 0.1), 0.3)), 128)
    asset = make_asset(field, dense, faces=6000, texture_size=512)
    assert asset.visual.kind == "texture" and asset.visual.material.baseColorTexture.size == (512, 512)
    points, faces = trimesh.sample.sample_surface(asset, 20000, seed=3)
    assert psnr(texture_colors(asset, points, faces), field.colors(points).numpy()) >= 30
    # seams: the texels around each chart are filled (bilinear / mip-mapped sampling there is not dark)
    image = np.asarray(asset.visual.material.baseColorTexture)
    assert image.min() >= 0.1 * 255 - 1  # the field's colours are >= 0.1 in every channel: no black texel anywhere


def test_vertex_coloured_asset_and_linear_colour_in_the_glb(tmp_path):
    field = AnalyticField()
    dense = surface(ball((0, 0, 0), 0.5))
    asset = make_asset(field, dense, faces=2000, texture_size=0)
    assert asset.visual.kind == "vertex" and len(asset.faces) <= 2000
    # the analytic colours at the decimated vertices, in float64: 8-bit values truncated as the reference's
    x, y, z = np.asarray(asset.vertices, np.float64).T
    exact = np.stack([0.5 + 0.4 * np.sin(3 * x), 0.5 + 0.4 * np.cos(2 * y + z), 0.3 + 0.3 * (z + 1)], -1) * 255
    written = asset.visual.vertex_colors[:, :3].astype(np.float64)
    assert (written <= exact + 1e-3).all() and (written > exact - 1 - 1e-3).all()
    path = lrm.export_mesh(asset, tmp_path / "ball.glb")
    back = trimesh.load(path, force="mesh", process=False)
    # glTF's COLOR_0 is linear: mid grey 128 is written as 55, and so on
    assert np.array_equal(srgb_to_linear(np.array([[128, 128, 128, 255]])), [[55, 55, 55, 255]])
    order = cKDTree(back.vertices).query(trimesh.transform_points(asset.vertices, lrm.mesh.WORLD_TO_GLTF))[1]
    assert np.array_equal(back.visual.vertex_colors[order], srgb_to_linear(np.asarray(asset.visual.vertex_colors)))
    # the dense mesh as it is (every triangle, every piece, vertex colours): no new geometry
    same = make_asset(field, dense, faces=0, texture_size=0, keep_floaters=True)
    assert same is dense


def test_obj_material_and_texture_resolve(tmp_path):
    asset = make_asset(AnalyticField(), surface(ball((0, 0, 0), 0.5)), faces=3000, texture_size=256, name="ball_tex")
    path = lrm.export_mesh(asset, tmp_path / "ball.obj")
    mtl = re.search(r"^mtllib (.+)$", path.read_text(), re.M).group(1)
    used = re.search(r"^usemtl (.+)$", path.read_text(), re.M).group(1)
    text = (tmp_path / mtl).read_text()
    texture = re.search(r"^map_Kd (.+)$", text, re.M).group(1)
    assert f"newmtl {used}" in text and "Kd 1 1 1" in text and (tmp_path / texture).is_file()
    back = trimesh.load(path, process=False)
    assert back.visual.kind == "texture" and back.visual.material.image.size == (256, 256)
    assert len(back.faces) == len(asset.faces)


def gltf_validator(path: Path) -> dict:
    """The Khronos glTF-Validator's report on a GLB: numbers of errors, warnings, triangles, materials."""
    script = ("const v = require(process.argv[1]); const d = new Uint8Array(require('fs').readFileSync("
              "process.argv[2])); v.validateBytes(d).then(r => console.log(JSON.stringify({errors: r.issues.numErrors,"
              " warnings: r.issues.numWarnings, triangles: r.info.totalTriangleCount, materials: r.info.materialCount,"
              " messages: r.issues.messages.filter(m => m.severity < 2).slice(0, 5)})));")
    out = subprocess.run(["node", "-e", script, str(VALIDATOR), str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def validator_available():
    missing = ("node is not installed" if shutil.which("node") is None else
               "the glTF-Validator is not installed (npm install --prefix .validator gltf-validator, as .ci/run does)"
               if not VALIDATOR.is_dir() else None)
    if missing:
        if os.environ.get("CI") and not os.environ.get("LRM_GLTF_VALIDATOR_SKIP_REASON"):
            pytest.fail(f"{missing}: in CI the GLB must be validated; set LRM_GLTF_VALIDATOR_SKIP_REASON to say why it "
                        "cannot", pytrace=False)
        pytest.skip(missing)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The whole job with the embedded model at its defaults (but a 128³ mesh, no video)."""
    model = lrm.load_model(lrm.DEMO_MODEL)
    stages = []
    result = lrm.reconstruct(model, ROOT / "examples" / "three_parts.png", tmp_path_factory.mktemp("job"),
                             lrm.JobOptions(mesh_resolution=128, video=False), name="parts",
                             progress=lambda stage, fraction: stages.append(stage))
    return model, result, stages


def test_the_job_writes_a_light_textured_asset(job):
    model, result, stages = job
    assert list(dict.fromkeys(stages)) == ["preprocess", "planes", "mesh", "asset"]
    assert set(result.timings) == {"preprocess", "planes", "mesh", "asset"}
    assert {"glb", "obj", "mtl", "texture", "ply"} <= set(result.files) and all(
        p.is_file() for p in result.files.values())
    assert result.asset.visual.kind == "texture" and len(result.asset.faces) <= lrm.JobOptions().faces
    assert len(trimesh.load(result.files["ply"], process=False).faces) == len(result.mesh.faces)  # PLY: the dense
    glb = trimesh.load(result.files["glb"], force="mesh", process=False)
    assert glb.visual.kind == "texture" and glb.visual.material.metallicFactor == 0
    # the texture holds the field's own colours at the surface
    field = lrm.FastField(model, result.planes)
    points, faces = trimesh.sample.sample_surface(result.asset, 20000, seed=0)
    assert psnr(texture_colors(result.asset, points, faces), field.colors(torch.as_tensor(points,
                                                                                         dtype=torch.float32))) >= 30
    # and its surface is the dense one's, within a voxel of the marching-cubes grid
    assert chamfer(result.asset, result.mesh) <= 2 / 127


def test_the_glb_passes_the_khronos_validator(job, validator_available):
    _, result, _ = job
    report = gltf_validator(result.files["glb"])
    assert report["errors"] == 0 and report["warnings"] == 0, report["messages"]
    assert report["triangles"] == len(result.asset.faces) and report["materials"] == 1


def test_unwrap_gives_every_face_uvs_in_the_unit_square():
    dense = surface(ball((0, 0, 0), 0.5))
    light = decimate(dense, 3000)
    vertices, faces, uv = unwrap(light)
    assert len(faces) == len(light.faces) and uv.shape == (len(vertices), 2)
    assert (uv >= 0).all() and (uv <= 1).all()
    # the same triangles, seam vertices doubled
    ordered = [t[np.lexsort(t.T[::-1])] for t in (vertices[faces].mean(1), light.triangles_center)]
    assert np.allclose(*ordered, atol=1e-6)
    texture = bake_texture(AnalyticField(), vertices, faces, uv, 128)
    assert texture.size == (128, 128) and texture.mode == "RGB"
