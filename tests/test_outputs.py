"""Outputs: preprocessing of every image kind, mesh files (GLB/OBJ/PLY), the MP4, the one-call job and the CLI."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as imageio
import imageio_ffmpeg
import mcubes
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

import lrm
from lrm.field import ReferenceField
from lrm.mesh import WORLD_TO_GLTF, export_mesh, extract_mesh, srgb_to_linear
from lrm.pipeline import JobOptions, reconstruct
from lrm.preprocess import BackgroundRemover, ImageError, grabcut_foreground, preprocess
from lrm.video import render_video, video_cameras

from conftest import REFCHECK, processes

TINY = REFCHECK / "refcheck-tiny-1.1" / "model"
ROOT = REFCHECK.parent.parent.parent


def disc_image(size=200, color=(220, 30, 30), background=(255, 255, 255), radius=0.25, center=(0.5, 0.5)):
    """A filled disc on a plain background, as uint8 RGB."""
    yy, xx = np.mgrid[:size, :size] / size
    inside = (xx - center[0]) ** 2 + (yy - center[1]) ** 2 < radius ** 2
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    img[inside] = color
    return img, inside


def foreground_box(image):
    ys, xs = np.nonzero(np.asarray(image.getchannel("A")) > 127)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def assert_centred(image, ratio=0.85, size=512):
    assert image.mode == "RGBA" and image.size == (size, size)
    x0, y0, x1, y1 = foreground_box(image)
    assert max(x1 - x0, y1 - y0) == pytest.approx(ratio * size, abs=3)
    assert (x0 + x1) / 2 == pytest.approx(size / 2, abs=2) and (y0 + y1) / 2 == pytest.approx(size / 2, abs=2)


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing


def rgba_disc(size=200, center=(0.3, 0.6)):
    rgb, inside = disc_image(size, color=(40, 120, 200), center=center)
    return Image.fromarray(np.dstack([rgb, inside.astype(np.uint8) * 255]), "RGBA")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_modes_with_alpha_are_recentred_without_background_removal(mode, tmp_path):
    image = rgba_disc().convert(mode)
    path = tmp_path / "in.png"
    image.save(path)
    out = preprocess(path, remove_background=True, remover=lambda _: pytest.fail("alpha must be used"))
    assert_centred(out)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "I;16"])
def test_modes_without_alpha_go_through_rembg(mode, tmp_path):
    rgb, _ = disc_image(center=(0.35, 0.55))
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
        assert image.mode == "I;16"
    else:
        image = image.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".tif" if mode == "I;16" else ".png"
    image.save(tmp_path / f"in{suffix}")
    out = preprocess(tmp_path / f"in{suffix}")  # rembg with the red-segmenter test model (conftest)
    if mode in ("RGB", "P", "CMYK"):  # colour kept: the red disc is found and centred
        assert_centred(out)
        assert np.asarray(out)[256, 256, 0] > 150
    else:  # greyscale: the test segmenter's min-max normalised mask keeps the dark disc (L: grey 87, I;16: its 16-bit
        # range stretched to 8 bits, the disc at 0), not the white background; recentred and still grey
        assert_centred(out)
        a = np.asarray(out)
        fg = a[a[..., 3] > 127][:, :3].astype(int)
        assert (fg == fg[:, :1]).all() and fg[:, 0].mean() < 100
        x0, y0, x1, y1 = foreground_box(out)
        assert len(fg) / ((x1 - x0) * (y1 - y0)) == pytest.approx(np.pi / 4, abs=0.05)  # a disc, not the frame


def test_exif_rotation_and_animation_first_frame(tmp_path):
    rgb, _ = disc_image(size=200, center=(0.25, 0.5))
    wide = Image.fromarray(np.concatenate([rgb, np.full((200, 100, 3), 255, np.uint8)], axis=1))  # 300 x 200
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    wide.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    from lrm.preprocess import load_image
    assert load_image(tmp_path / "rotated.jpg").size == (200, 300)
    frames = [rgba_disc(center=(0.3, 0.3)), rgba_disc(center=(0.7, 0.7))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, disposal=2)
    first = load_image(tmp_path / "anim.gif")
    box = foreground_box(first) if first.mode == "RGBA" else None
    assert box is not None and box[0] < 100  # the first frame's disc, left/top
    assert_centred(preprocess(tmp_path / "anim.gif"))


def test_arrays_and_foreground_ratio():
    rgb, inside = disc_image()
    rgba = np.dstack([rgb, inside.astype(np.uint8) * 255])
    assert_centred(preprocess(rgba, foreground_ratio=0.6), ratio=0.6)
    with pytest.raises(ValueError, match="foreground_ratio"):
        preprocess(rgba, foreground_ratio=1.5)


def test_bad_inputs(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        preprocess(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("this is not an image")
    with pytest.raises(ImageError, match="not an image"):
        preprocess(tmp_path / "text.png")
    with pytest.raises(ImageError, match="no such file"):
        preprocess(tmp_path / "missing.png")
    Image.new("RGB", (8, 300)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="too small"):
        preprocess(tmp_path / "small.png")
    Image.new("1", (9000, 9000)).save(tmp_path / "huge.png")  # 81 megapixels in a few kB
    with pytest.raises(ImageError, match="too large"):
        preprocess(tmp_path / "huge.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    with pytest.raises(ImageError, match="fully transparent"):
        preprocess(tmp_path / "clear.png")
    with pytest.raises(ImageError, match="no foreground"):
        preprocess(Image.new("RGB", (64, 64)), remover=lambda im: im.convert("RGBA").point(lambda _: 0))
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        preprocess(tmp_path)
    # truncated files, as a path or as a lazily opened PIL image: ImageError, not OSError
    for fmt in ("PNG", "JPEG"):
        path = tmp_path / f"cut.{fmt.lower()}"
        Image.fromarray(disc_image(size=300)[0]).save(path, fmt)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        for source in (path, Image.open(path)):
            with pytest.raises(ImageError, match="truncated or corrupted"):
                preprocess(source)
    # messages name the file, never the folder it is in (they may reach other people through the app)
    for name in ("empty.png", "text.png", "missing.png", "huge.png"):
        with pytest.raises(ImageError) as info:
            preprocess(tmp_path / name)
        assert str(tmp_path) not in str(info.value)


def test_large_images_are_scaled_down_before_anything_else(tmp_path):
    rgb, _ = disc_image(size=2000, center=(0.4, 0.5))
    big = np.kron(rgb, np.ones((3, 3, 1), np.uint8))[:5000, :6000]  # 6000 x 5000
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90)
    from lrm.preprocess import MAX_SIDE, load_image
    loaded = load_image(tmp_path / "big.jpg")
    assert max(loaded.size) == MAX_SIDE and loaded.size[0] / loaded.size[1] == pytest.approx(6000 / 5000, abs=0.01)
    seen = []
    out = preprocess(tmp_path / "big.jpg", remover=lambda im: seen.append(im.size) or rembg_like(im))
    assert seen == [loaded.size]  # background removal got the scaled-down picture
    assert_centred(out)


def rembg_like(image):
    """A stand-in background remover: red is foreground."""
    a = np.asarray(image.convert("RGB")).astype(int)
    alpha = ((a[..., 0] > 150) & (a[..., 1] < 100)).astype(np.uint8) * 255
    return Image.fromarray(np.dstack([a.astype(np.uint8), alpha]), "RGBA")


def test_grabcut_fallback_when_rembg_model_is_unavailable():
    remover = BackgroundRemover(model_path="/nonexistent/folder/u2net.onnx")
    rgb, inside = disc_image(size=160, color=(30, 160, 60), background=(235, 235, 240), radius=0.3)
    with pytest.warns(RuntimeWarning, match="GrabCut"):
        out = preprocess(Image.fromarray(rgb), remover=remover)
    assert remover.unavailable is not None
    assert_centred(out)
    # the cut-out itself: GrabCut's alpha agrees with the disc
    alpha = np.asarray(grabcut_foreground(Image.fromarray(rgb)).getchannel("A")) > 127
    assert (alpha == inside).mean() > 0.97
    assert remover.unavailable.endswith("File doesn't exist")  # the whole reason, not cut off mid-word


def test_rembg_download_failure_reads_as_no_network():
    import requests
    from lrm.preprocess import _why_unavailable
    try:
        try:
            raise OSError("Failed to resolve 'github.com' ([Errno -3] Temporary failure in name resolution)")
        except OSError as cause:
            raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='github.com', port=443): Max retries "
                                                      "exceeded with url: /danielgatis/rembg/releases/download/" +
                                                      "x" * 300) from cause
    except requests.exceptions.ConnectionError as err:
        why = _why_unavailable(err, "u2net")
    assert why == "its model 'u2net' is not on this machine and could not be downloaded (no network)"
    long = _why_unavailable(ValueError("word " * 100), "u2net")
    assert long.endswith("word …") and len(long) < 230


def photo_of_a_mug(size=240):
    """A photo-like scene: wall and table of slightly different greys with sensor noise, a dark mug (body and handle)
    standing on the table, and the table's edge: a one-pixel line of the mug's colour across the whole width
    -> RGB, and the mug's box (x0, y0, x1, y1)."""
    yy, xx = np.mgrid[:size, :size] / size
    img = np.where(yy[..., None] < 0.6, [200, 200, 205], [170, 160, 150]).astype(np.float64)
    img += np.random.default_rng(0).normal(0, 3, img.shape)
    img[int(0.6 * size)] = [50, 50, 55]
    body = (np.abs(xx - 0.45) < 0.15) & (yy > 0.35) & (yy < 0.75)
    ring = (xx - 0.62) ** 2 / 0.06 ** 2 + (yy - 0.55) ** 2 / 0.1 ** 2 < 1
    hole = (xx - 0.62) ** 2 / 0.035 ** 2 + (yy - 0.55) ** 2 / 0.065 ** 2 < 1
    mug = body | (ring & ~hole & (xx > 0.6))
    img[mug] = [50, 50, 55]
    ys, xs = np.nonzero(mug)
    return img.clip(0, 255).astype(np.uint8), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_grabcut_fallback_keeps_the_object_not_a_line_across_the_picture():
    rgb, (x0, y0, x1, y1) = photo_of_a_mug()
    alpha = np.asarray(grabcut_foreground(Image.fromarray(rgb)).getchannel("A")) > 127
    ys, xs = np.nonzero(alpha)
    # the cut-out's box is the mug's (within a few pixels), not the full width of the horizon line
    assert abs(xs.min() - x0) <= 6 and abs(xs.max() + 1 - x1) <= 6
    assert abs(ys.min() - y0) <= 6 and abs(ys.max() + 1 - y1) <= 6


# ---------------------------------------------------------------------------------------------------------------
# Meshes


def sphere_mesh(center=(0.0, -0.3, 0.2), radii=(0.3, 0.3, 0.6), n=48):
    """An ellipsoid, tall along world z (up) and shifted to the front (-y), through marching cubes like extract_mesh."""
    g = np.linspace(-1, 1, n)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    r = np.sqrt(((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((z - center[2]) / radii[2]) ** 2)
    v, f = mcubes.marching_cubes(10 * (1 - r), 0.0)  # density higher inside, like the LRM field
    v = v / (n - 1) * 2 - 1
    colors = np.concatenate([((v + 1) / 2 * 255).astype(np.uint8), np.full((len(v), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(v, f, vertex_colors=colors)


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_mesh_files_reopen_with_colours_upright_and_outward(fmt, tmp_path):
    mesh = sphere_mesh()
    path = export_mesh(mesh, tmp_path / f"m.{fmt}")
    back = trimesh.load(path, force="mesh", process=False)
    assert len(back.vertices) == len(mesh.vertices) and len(back.faces) == len(mesh.faces)
    assert back.visual.kind == "vertex"
    expected = mesh.visual.vertex_colors if fmt != "glb" else srgb_to_linear(mesh.visual.vertex_colors)  # COLOR_0
    assert np.abs(back.visual.vertex_colors[:, :3].astype(int) - expected[:, :3]).max() <= 1
    extent = back.bounds[1] - back.bounds[0]
    center = back.bounds.mean(0)
    if fmt == "ply":  # reference frame: tall along z, front at -y
        assert np.argmax(extent) == 2 and center[1] < -0.2
    else:  # glTF frame: tall along y (up), front at +z (towards the viewer)
        assert np.argmax(extent) == 1 and center[2] > 0.2 and center[1] > 0.1
        assert np.allclose(back.vertices, trimesh.transform_points(mesh.vertices, WORLD_TO_GLTF), atol=1e-5)
    # outward normals: positive enclosed volume and normals pointing away from the centre
    assert back.volume > 0
    assert ((back.triangles_center - back.centroid) * back.face_normals).sum(1).mean() > 0


def test_ply_matches_reference_format(tmp_path):
    import json
    meta = json.loads((REFCHECK / "refcheck-tiny-1.1" / "out" / "meta.json").read_text())
    planes = torch.from_numpy(np.load(REFCHECK / "refcheck-tiny-1.1" / "out" / "intermediates.npz")["planes"])
    mesh = extract_mesh(ReferenceField(lrm.load_model(TINY), planes), meta["mesh_size"], meta["mesh_threshold"])
    path = export_mesh(mesh, tmp_path / "mesh.ply")
    ours, theirs = path.read_bytes(), (REFCHECK / "refcheck-tiny-1.1" / "out" / "mesh.ply").read_bytes()
    head = ours[: ours.index(b"end_header")].decode().strip().splitlines()
    assert head == meta["ply_header"] == theirs[: theirs.index(b"end_header")].decode().strip().splitlines()
    assert len(ours) == len(theirs)
    assert trimesh.load(path, process=False).faces.tolist() == trimesh.load(
        REFCHECK / "refcheck-tiny-1.1" / "out" / "mesh.ply", process=False).faces.tolist()
    with pytest.raises(ValueError, match="unsupported mesh format"):
        export_mesh(mesh, tmp_path / "mesh.stl")


# ---------------------------------------------------------------------------------------------------------------
# Video


def video_info(path):
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True).stderr
    return re.search(r"Video: (\w+).*?, (\w+)\(?.*?, (\d+)x(\d+)", out).groups()


def test_video_is_browser_playable_h264(tiny_model, tmp_path):
    planes = torch.from_numpy(np.load(REFCHECK / "refcheck-tiny-1.1" / "out" / "intermediates.npz")["planes"])
    calls = []
    field = lrm.FastField(tiny_model, planes)
    path = render_video(field, tmp_path / "orbit.mp4", n_views=12, fps=10, size=48,
                        progress=lambda done, total: calls.append((done, total)))
    codec, pix_fmt, w, h = video_info(path)
    assert (codec, pix_fmt, int(w), int(h)) == ("h264", "yuv420p", 48, 48)
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 12
    assert calls[-1] == (12, 12) and len(calls) == 12
    # the frames are the renders of the orbit, in order (lossy codec on a noise-like random field: compare by PSNR)
    renders = field.render(video_cameras(12), 48)["rgb"].permute(0, 2, 3, 1).numpy() * 255
    reader = imageio.get_reader(path)
    for i in (0, 5):
        frame = reader.get_data(i).astype(float)
        psnr = [10 * np.log10(255 ** 2 / ((frame - r) ** 2).mean()) for r in renders]
        assert int(np.argmax(psnr)) == i and psnr[i] > 20
    with pytest.raises(ValueError, match="even"):
        render_video(field, tmp_path / "odd.mp4", n_views=2, size=47)


def test_video_orbit_has_no_duplicate_frame():
    cams = video_cameras(8)
    assert cams.shape == (8, 25)
    # the reference's orbit: radius 2 at height 0.8, starting in front (-y), counter-clockwise seen from above (+x
    # next), every camera looking at the origin
    ground = (2.0 ** 2 - 0.8 ** 2) ** 0.5
    for i, position in ((0, (0, -ground, 0.8)), (2, (ground, 0, 0.8)), (4, (0, ground, 0.8)), (6, (-ground, 0, 0.8))):
        assert torch.allclose(cams[i, [3, 7, 11]], torch.tensor(position), atol=1e-5), i
        backward = cams[i, [2, 6, 10]]  # the camera's z axis (OpenGL: it looks along -z) points away from the origin
        assert torch.allclose(backward, torch.tensor(position) / 2.0, atol=1e-5)
    positions = cams[:, [3, 7, 11]]
    gaps = (positions - positions.roll(-1, 0)).norm(dim=1)
    assert torch.allclose(gaps, gaps[0].expand_as(gaps), atol=1e-5)  # evenly spaced, last -> first included


# ---------------------------------------------------------------------------------------------------------------
# The whole job and the CLI


def test_a_ply_only_job_makes_no_asset(tiny_model, tmp_path):
    """The light asset is what GLB / OBJ hold: a job writing only the dense PLY does not make it."""
    result = reconstruct(tiny_model, REFCHECK / "inputs" / "disc_rgba.png", tmp_path,
                         JobOptions(mesh_resolution=24, formats=("ply",), video=False), name="disc")
    assert set(result.files) == {"png", "ply"} and sorted(p.name for p in tmp_path.iterdir()) == [
        "disc.ply", "disc_input.png"]
    assert result.asset is None and "asset" not in result.timings and len(result.mesh.faces) > 0


def test_reconstruct_writes_everything_with_timings(tiny_model, tmp_path):
    stages = []
    result = reconstruct(tiny_model, REFCHECK / "inputs" / "disc_rgba.png", tmp_path,
                         JobOptions(mesh_resolution=24, n_views=4, video_size=32), name="disc",
                         progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert set(result.files) == {"png", "glb", "obj", "mtl", "texture", "ply", "mp4"}
    assert all(p.exists() for p in result.files.values())
    assert set(result.timings) == {"preprocess", "planes", "mesh", "asset", "video"}
    assert list(dict.fromkeys(s for s, f in stages if f == 1.0)) == ["preprocess", "planes", "mesh", "asset", "video"]
    assert all(0 <= f <= 1 for _, f in stages)
    assert result.planes.shape == (1, 3, 8, 16, 16) and len(result.mesh.vertices) > 0
    assert_centred(Image.open(result.files["png"]))  # a model that stores no ratio: the reference app's 0.85
    nothing = reconstruct(tiny_model, REFCHECK / "inputs" / "disc_rgba.png", None,
                          JobOptions(mesh_resolution=0, video=False))
    assert nothing.files == {} and nothing.mesh is None


def test_job_options_are_filled_from_the_models_settings(tiny_model):
    """Unset options take the model's settings: the reference's for a v1.1 checkpoint that stores none, what
    lrm-demo-shapes' infer.json stores (source 128, frames 192, mesh 256, ratio 0.6), a v1.0 checkpoint's
    kwargs['infer'] (frames 32)."""
    job = JobOptions().for_model(tiny_model.infer_defaults)
    assert (job.foreground_ratio, job.source_distance, job.mesh_resolution, job.threshold, job.video_size) == \
        (0.85, 2.0, 384, 3.0, 192)
    demo = JobOptions(threshold=5.0).for_model(lrm.model_defaults("lrm-demo-shapes"))
    assert (demo.foreground_ratio, demo.source_distance, demo.mesh_resolution, demo.threshold, demo.video_size) == \
        (0.6, 2.0, 256, 5.0, 192)
    assert JobOptions().for_model(lrm.model_defaults(REFCHECK / "refcheck-tiny-1.0" / "model")).video_size == 32
    own = JobOptions(foreground_ratio=0.7, mesh_resolution=0, threshold=5.0).for_model(tiny_model.infer_defaults)
    assert (own.foreground_ratio, own.mesh_resolution, own.threshold) == (0.7, 0, 5.0)
    assert JobOptions(formats=(".GLB", "ply", " ", "glb")).formats == ("glb", "ply")
    assert JobOptions(formats="obj,GLB").formats == ("obj", "glb")


def test_cli_processes_folder_and_reports_broken_input(tmp_path, capsys):
    from lrm.__main__ import main
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rgba_disc().save(src / "good.png")
    Image.fromarray(disc_image()[0]).save(src / "sub" / "red.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG but not really")
    (src / "notes.txt").write_text("ignored")
    code = main([str(src), "--model", str(TINY), "--out", str(tmp_path / "out"), "--mesh-resolution", "16",
                 "--views", "3", "--video-size", "32", "--formats", "glb,ply"])
    out = capsys.readouterr()
    assert code == 1
    assert "FAILED" in out.out + out.err and "broken.png" in out.out + out.err
    for name in ("good", "sub/red"):
        for ext in ("glb", "ply", "mp4"):
            assert (tmp_path / "out" / f"{name}.{ext}").is_file()
        assert not (tmp_path / "out" / f"{name}.obj").exists()
    assert "2/3 done" in out.out
    # not a terminal: one progress line per stage, no carriage-return bar updates
    assert "\r" not in out.err
    assert [line for line in out.err.splitlines() if line.startswith("good: ")] == [
        "good: preprocess", "good: planes", "good: mesh", "good: asset", "good: video"]


def test_cli_module_entry_point_and_model_error(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "lrm", str(REFCHECK / "inputs" / "disc_rgba.png"), "--model", str(TINY),
                         "--out", str(tmp_path), "--mesh-resolution", "16", "--no-video"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "disc_rgba.glb").is_file() and not (tmp_path / "disc_rgba.mp4").exists()
    bad = subprocess.run([sys.executable, "-m", "lrm", str(REFCHECK / "inputs" / "disc_rgba.png"), "--model",
                          str(tmp_path / "no-such-model"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot load model" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_refuses_an_unavailable_model_it_was_asked_for(tmp_path):
    """Only the default model falls back to the demo model; a named one that cannot be loaded is an error."""
    for model in ("nobody/x", "zxhezexin/openlrm-obj-large-1.1"):
        done = subprocess.run([sys.executable, "-m", "lrm", str(ROOT / "examples" / "torus.png"), "--out",
                               str(tmp_path), "--model", model], capture_output=True, text=True)
        assert done.returncode == 2 and f"cannot load model '{model}'" in done.stderr and "Traceback" not in done.stderr
        assert not any(tmp_path.iterdir())
    done = subprocess.run([sys.executable, "-m", "lrm", str(ROOT / "examples" / "torus.png"), "--out", str(tmp_path),
                           "--video-size", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "--video-size must be even and at least 2" in done.stderr


def test_empty_mesh_is_a_clear_message_and_the_video_is_still_made(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lrm", str(ROOT / "examples" / "torus.png"), "--out", str(tmp_path),
                           "--model", "lrm-demo-shapes", "--mesh-resolution", "32", "--threshold", "5000",
                           "--views", "2", "--video-size", "32"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "PARTLY" in done.stdout and "nothing is above the density threshold 5000" in done.stdout
    assert "lower the threshold" in done.stdout and "Traceback" not in done.stderr
    assert (tmp_path / "torus.mp4").is_file() and not (tmp_path / "torus.glb").exists()


def test_cli_falls_back_to_the_demo_model_offline(tmp_path):
    """The default Hub model is not reachable here (HF_HUB_OFFLINE=1, nothing cached): the embedded model runs."""
    done = subprocess.run([sys.executable, "-m", "lrm", str(ROOT / "examples" / "torus.png"), "--out", str(tmp_path),
                           "--mesh-resolution", "48", "--views", "4"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "NOTE: no --model given; Using the embedded demo model 'lrm-demo-shapes'" in done.stderr
    assert "openlrm-mix-base-1.1" in done.stderr
    assert (tmp_path / "torus.glb").is_file() and (tmp_path / "torus.mp4").is_file()
    # recentred at the demo model's own ratio (its training views' framing), not the released models' 0.85
    from lrm.train.data import FOREGROUND_RATIO
    assert_centred(Image.open(tmp_path / "torus_input.png"), ratio=FOREGROUND_RATIO)


def test_a_reference_mode_job_makes_the_original_codes_mesh(tiny_model, tmp_path):
    """JobOptions(mode="reference") through the whole job, on the fixture's input as the reference reads it: its planes
    and its PLY are the original OpenLRM code's (same header, size and faces)."""
    import json
    folder = REFCHECK / "refcheck-tiny-1.1" / "out"
    meta = json.loads((folder / "meta.json").read_text())
    job = JobOptions(mode="reference", mesh_resolution=meta["mesh_size"], threshold=meta["mesh_threshold"],
                     source_distance=meta["source_cam_dist"], formats=("ply",), n_views=2, video_size=16)
    result = reconstruct(tiny_model, REFCHECK / "inputs" / "disc_rgba.png", tmp_path, job, name="disc",
                         preprocessed=True)
    reference = np.load(folder / "intermediates.npz")["planes"]
    assert np.abs(result.planes.numpy() - reference).max() <= 1e-4 * np.abs(reference).max()
    ours, theirs = result.files["ply"].read_bytes(), (folder / "mesh.ply").read_bytes()
    assert len(ours) == len(theirs)
    assert trimesh.load(result.files["ply"], process=False).faces.tolist() == trimesh.load(
        folder / "mesh.ply", process=False).faces.tolist()
    assert imageio_ffmpeg.count_frames_and_secs(str(result.files["mp4"]))[0] == 2


def test_cli_reference_mode(tmp_path):
    """`--mode reference` reaches the job: its PLY is the reference field's mesh of the preprocessed input, made here
    directly with the library (and not the fast field's)."""
    done = subprocess.run([sys.executable, "-m", "lrm", str(ROOT / "examples" / "cone.png"), "--model", str(TINY),
                           "--out", str(tmp_path), "--mode", "reference", "--mesh-resolution", "24", "--formats", "ply",
                           "--no-video"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    model = lrm.load_model(TINY)
    image = lrm.image_to_tensor(Image.open(tmp_path / "cone_input.png"), model.infer_defaults.source_size)
    with torch.inference_mode():
        planes = model.forward_planes(image, lrm.source_camera())
    for field, same in ((ReferenceField(model, planes), True), (lrm.FastField(model, planes), False)):
        export_mesh(extract_mesh(field, 24), tmp_path / "direct.ply")
        assert ((tmp_path / "direct.ply").read_bytes() == (tmp_path / "cone.ply").read_bytes()) == same


# ---------------------------------------------------------------------------------------------------------------
# The CLI as a hostile user tries it


def test_cli_refuses_sizes_it_cannot_do_before_anything_runs(tmp_path):
    for flags, message in ((["--mesh-resolution", "10000"], "--mesh-resolution must be at most 1,024"),
                           (["--video-size", "100000"], "--video-size must be at most 2,048"),
                           (["--views", "1000000000"], "--views must be at most 3,600"),
                           (["--source-distance", "inf"], "--source-distance must be a finite number"),
                           (["--threshold", "nan"], "--threshold must be a finite number"),
                           (["--texture-size", "1000"], "--texture-size must be a power of two"),
                           (["--formats", "glb,stl"], "--formats: unknown mesh format(s) 'stl'")):
        done = subprocess.run([sys.executable, "-m", "lrm", str(ROOT / "examples" / "cone.png"), "--model", str(TINY),
                               "--out", str(tmp_path), *flags], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not any(tmp_path.iterdir())


def test_cli_one_input_fails_alone_whatever_the_error(tmp_path, capsys, monkeypatch):
    """An unexpected error in one input's job (here made on purpose), and a job too large for this machine's memory,
    are that input's line; the others run; the exit status says one failed; no traceback without --debug."""
    import lrm.__main__ as cli
    real = cli.reconstruct

    def flaky(model, source, *args, **kwargs):
        if Path(source).stem == "cone":
            raise RuntimeError("a bug of ours")
        return real(model, source, *args, **kwargs)
    monkeypatch.setattr(cli, "reconstruct", flaky)
    inputs = [str(ROOT / "examples" / f"{n}.png") for n in ("cone", "torus")]
    code = cli.main([*inputs, "--model", str(TINY), "--out", str(tmp_path), "--mesh-resolution", "24", "--no-video"])
    out = capsys.readouterr()
    assert code == 1 and "FAILED" in out.out and "unexpected RuntimeError: a bug of ours" in out.out
    assert "Traceback" not in out.out + out.err and (tmp_path / "torus.glb").is_file()
    assert "1/2 done" in out.out
    monkeypatch.setattr(lrm.pipeline, "memory_available", lambda device: 2 ** 30)  # a 1 GB machine
    code = cli.main([inputs[1], "--model", str(TINY), "--out", str(tmp_path / "big"), "--mesh-resolution", "1024"])
    out = capsys.readouterr().out
    assert code == 1 and "needs about" in out and "this machine has 1.0 GB; lower the mesh resolution" in out
    assert not (tmp_path / "big" / "torus.ply").exists()


def test_a_field_that_is_not_finite_is_said_so(tmp_path):
    """NaN weights give NaN planes: the job says so (no threshold advice, no blank video written as a success)."""
    import shutil
    from safetensors.torch import load_file, save_file
    broken = tmp_path / "broken"
    shutil.copytree(TINY, broken)
    weights = load_file(broken / "model.safetensors")
    weights["upsampler.bias"][:] = float("nan")
    save_file(weights, broken / "model.safetensors")
    done = subprocess.run([sys.executable, "-m", "lrm", str(ROOT / "examples" / "cone.png"), "--model", str(broken),
                           "--out", str(tmp_path / "out"), "--mesh-resolution", "24", "--views", "2"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "not finite (NaN or inf)" in done.stdout and "threshold" not in done.stdout
    assert not (tmp_path / "out" / "cone.mp4").exists()


def test_cli_names_are_safe_and_distinct(tmp_path):
    """Same stems (cone.png / cone.jpg, a/x.png / b/x.png), a long name, a newline, a leading dot: every input gets
    its own files, each name safe in every file format (the OBJ finds its texture) and said on its line."""
    src = tmp_path / "in"
    for folder in ("a", "b"):
        (src / folder).mkdir(parents=True)
    image = Image.open(ROOT / "examples" / "cone.png")
    names = ["cone.png", "cone.jpg", "a/x.png", "b/x.png", "y" * 244 + ".png", "two\nlines.png", ".png"]
    for name in names:
        image.convert("RGB").save(src / name, format="JPEG" if name.endswith("jpg") else "PNG")
    files = [str(src / n) for n in names]
    done = subprocess.run([sys.executable, "-m", "lrm", *files, "--model", str(TINY), "--out", str(tmp_path / "out"),
                           "--mesh-resolution", "24", "--no-video", "--texture-size", "64"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    objs = sorted(p.name for p in (tmp_path / "out").glob("*.obj"))
    assert len(objs) == len(names) and "cone.obj" in objs and "cone-2.obj" in objs and "x-2.obj" in objs
    assert "png.obj" in objs and not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert max(len(p.name.encode()) for p in (tmp_path / "out").iterdir()) <= 64 + len("_texture.png")
    assert "named cone-2: cone is" in done.stdout and "named x-2: x is" in done.stdout
    for obj in (tmp_path / "out").glob("*.obj"):
        assert trimesh.load(obj, force="mesh").visual.kind == "texture", obj.name  # its mtllib line is intact


def test_a_video_encoder_that_dies_is_one_clear_line(tmp_path):
    """ffmpeg killed mid-video (as when its worker's machine runs out of memory): an OSError naming the encoder and the
    file, without the encoder's command line or any server path, and no encoder process left behind."""
    from lrm.pipeline import describe_error

    def encoders() -> set[int]:  # this process's ffmpeg children
        return processes("ffmpeg") & set(map(int, os.popen(f"pgrep -P {os.getpid()}").read().split()))

    class Field:  # grey frames; the encoder is killed after the first chunk
        infer_defaults = lrm.config.InferDefaults(video_size=32)
        calls = 0

        def render(self, cameras, size, progress=None):
            Field.calls += 1
            if Field.calls == 2:
                for pid in encoders():
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
            return {"rgb": torch.full((len(cameras), 3, size, size), 0.5)}

    with pytest.raises(OSError) as caught:
        render_video(Field(), tmp_path / "cone.mp4", 400, 25)
    message = describe_error(caught.value)
    assert message.startswith("the video encoder (ffmpeg) stopped while writing cone.mp4:"), message
    assert "FFMPEG" not in message and "/" not in message.split(":", 1)[1], message
    assert not encoders()
