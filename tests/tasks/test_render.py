"""Tests for tasks.scenes.render: ray-object intersection against independent float64 references (scipy's
convex hull for the silhouettes of cubes and cylinders), occlusion order, projection, CLEVR's placement
rules, the visibility rule, determinism and bad input."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull

from tasks.scenes.render import (CLEVR_MARGIN, CLEVR_MIN_DIST, SHAPES, Camera, Lights, SceneBatch, directions,
                                 index_map, project, render, run_blocks, sample_geometry, sample_layout,
                                 visible_pixels)

H, W = 48, 72
CAM = Camera()


def _scene(objs, cam_pos=None, lights=None):
    """objs: list of (shape name, (x, y, z), r, rotation radians). One scene."""
    k = max(1, len(objs))
    pos, r, rot, shp = np.zeros((1, k, 3)), np.ones((1, k)), np.zeros((1, k)), np.full((1, k), -1)
    for i, (s, c, rr, th) in enumerate(objs):
        pos[0, i], r[0, i], rot[0, i], shp[0, i] = c, rr, th, SHAPES.index(s)
    return SceneBatch(position=pos, scale=r, rotation=rot, shape=shp, albedo=np.full((1, k, 3), 0.5),
                      metal=np.zeros((1, k), bool),
                      camera=np.asarray(CAM.location if cam_pos is None else cam_pos)[None],
                      lights=np.asarray(Lights().positions if lights is None else lights)[None],
                      ground_albedo=np.full((1, 3), 0.4))


def _rays64(cam_pos):
    """float64 reference rays through the pixel centres: origin (3,), unit directions (H, W, 3)."""
    right, up, fwd = CAM.basis()
    tx, ty = CAM.tan_half()
    u = (2 * (np.arange(W) + 0.5) / W - 1) * tx
    v = (1 - 2 * (np.arange(H) + 0.5) / H) * ty
    d = fwd + u[None, :, None] * right + v[:, None, None] * up
    return np.asarray(cam_pos, float), d / np.linalg.norm(d, axis=-1, keepdims=True)


def _hull_mask(points3d, cam_pos):
    """Pixels whose centre lies in the convex hull of the projected points (a convex solid's silhouette)."""
    pr = project(torch.tensor(points3d[None]), torch.tensor(np.asarray(cam_pos, float)[None]), CAM, H, W)[0].numpy()
    eq = ConvexHull(pr[:, :2]).equations  # (F, 3): inside iff normal . p + offset <= 0 for every facet
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    pix = np.stack([xx.ravel(), yy.ravel()], -1)
    return (pix @ eq[:, :2].T + eq[:, 2] <= 0).all(1).reshape(H, W)


def test_sphere_silhouette_matches_float64_point_line_distance():
    c, r = np.array([0.5, -0.3, 0.7]), 0.7
    m = index_map(_scene([("sphere", c, r, 0.0)]), CAM, H, W)[0].numpy()
    o, d = _rays64(CAM.location)
    # A ray hits the sphere iff its distance to the centre is at most r (the centre is in front).
    dist = np.linalg.norm(np.cross(d, c - o), axis=-1)
    ref = dist <= r
    assert ref.sum() > 40
    disagree = m.astype(bool) != ref
    # Only pixels whose ray grazes the surface (|dist - r| tiny) may differ through float32 rounding.
    assert np.all(np.abs(dist[disagree] - r) < 1e-4)
    assert set(np.unique(m)) == {0, 1}


@pytest.mark.parametrize("theta", [0.0, 0.6, 2.2])
def test_rotated_cube_silhouette_matches_convex_hull_of_corners(theta):
    c, a = np.array([-0.4, 0.8, 0.6]), 0.6
    corners = np.array([[sx, sy, sz] for sx in (-a, a) for sy in (-a, a) for sz in (-a, a)])
    rz = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    pts = c + corners @ rz.T
    m = index_map(_scene([("cube", c, a, theta)]), CAM, H, W)[0].numpy().astype(bool)
    ref = _hull_mask(pts, CAM.location)
    assert ref.sum() > 40
    assert (m != ref).sum() <= 2  # pixel centres exactly on a silhouette edge may go either way


@pytest.mark.parametrize("theta", [0.0, 1.3])
def test_cylinder_silhouette_matches_convex_hull_of_cap_circles(theta):
    c, r = np.array([0.9, 0.2, 0.5]), 0.5
    phi = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    ring = np.stack([r * np.cos(phi), r * np.sin(phi)], -1)
    pts = np.concatenate([np.c_[ring, np.full(len(phi), z)] for z in (-r, r)]) + c
    m = index_map(_scene([("cylinder", c, r, theta)]), CAM, H, W)[0].numpy().astype(bool)
    ref = _hull_mask(pts, CAM.location)
    assert ref.sum() > 30
    assert (m != ref).sum() <= 2  # the hull of 2000 points per circle is within 1e-6 of the true outline


def test_nearer_object_occludes_the_farther_one():
    cam = np.asarray(CAM.location)
    right, _, fwd = CAM.basis()
    near = cam + 6.0 * fwd  # both above the ground plane
    far = cam + 9.0 * fwd + 0.7 * right  # partly behind the near sphere
    objs = [("sphere", far, 0.8, 0.0), ("sphere", near, 0.5, 0.0)]
    m = index_map(_scene(objs), CAM, H, W)[0].numpy()
    o, d = _rays64(cam)
    hit = [np.linalg.norm(np.cross(d, np.asarray(p) - o), axis=-1) <= rr for _, p, rr, _ in objs]
    ref = np.where(hit[1], 2, np.where(hit[0], 1, 0))  # the near sphere (slot 1 -> index 2) wins
    assert (m == 2).sum() > 20 and (m == 1).sum() > 20
    assert (m != ref).sum() <= 3
    # Swapping the slots swaps the indices but not the silhouettes.
    m2 = index_map(_scene(objs[::-1]), CAM, H, W)[0].numpy()
    assert np.array_equal(m2, np.choose(m, [0, 2, 1]))


def test_render_masks_equal_index_map_and_partition_the_image():
    objs = [("cube", (0.0, 0.0, 0.5), 0.5, 0.3), ("sphere", (1.5, 1.0, 0.7), 0.7, 0.0),
            ("cylinder", (-1.5, 1.2, 0.35), 0.35, 0.0)]
    sc = _scene(objs)
    for ss in (1, 2):
        img, m = render(sc, CAM, H, W, supersample=ss)
        assert img.dtype == torch.uint8 and img.shape == (1, 3, H, W)
        assert m.dtype == torch.uint8 and torch.equal(m, index_map(sc, CAM, H, W))
    assert set(m.unique().tolist()) == {0, 1, 2, 3}
    # Every object is shaded differently from the ground somewhere: objects are drawn where the masks are.
    g = img[0].float().mean(0)
    assert all(abs(g[m[0] == k].mean() - g[m[0] == 0].mean()) > 3 for k in (1, 2, 3))


def test_shadow_falls_away_from_the_key_light():
    light = np.array(Lights().positions)
    sc = _scene([("sphere", (0.0, 0.0, 0.7), 0.7, 0.0)], lights=light)
    empty = _scene([], lights=light)
    img, m = render(sc, CAM, H, W, shadow_blur=0)
    img0, _ = render(empty, CAM, H, W, shadow_blur=0)
    diff = img0[0].float().mean(0) - img[0].float().mean(0)  # darkening of the ground by the sphere
    diff[m[0] > 0] = 0
    ys, xs = np.nonzero(diff.numpy() > 8)
    assert len(ys) > 10
    # The shadow's centre projects onto the ground on the far side of the sphere from the key light.
    key = light[0]
    away = -(key[:2] - 0.0) / np.linalg.norm(key[:2])
    tip = np.array([away[0], away[1], 0.0]) * 1.5
    p_tip = project(torch.tensor(tip[None, None]), torch.tensor(np.asarray(CAM.location)[None]), CAM, H, W)[0, 0]
    p_obj = project(torch.tensor([[[0.0, 0.0, 0.0]]]), torch.tensor(np.asarray(CAM.location)[None]), CAM, H, W)[0, 0]
    shadow = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    v_ref = (p_tip - p_obj)[:2].numpy()
    v = shadow - p_obj[:2].numpy()
    assert np.dot(v, v_ref) / np.linalg.norm(v) / np.linalg.norm(v_ref) > 0.8


def test_projection_inverts_the_pixel_rays_and_respects_the_window():
    o, d = _rays64(CAM.location)
    pts = o + 9.0 * d[[3, 20, 40], [5, 36, 70]]
    pr = project(torch.tensor(pts[None]), torch.tensor(o[None]), CAM, H, W)[0].numpy()
    assert np.allclose(pr[:, 0], [5.5, 36.5, 70.5], atol=1e-6) and np.allclose(pr[:, 1], [3.5, 20.5, 40.5], atol=1e-6)
    fwd = CAM.basis()[2]
    assert np.allclose(pr[:, 2], (pts - o) @ fwd)
    crop = Camera(native_size=(320, 240)).center_crop(0.8)
    assert crop.window == (64 / 320, 256 / 320, 24 / 240, 216 / 240)
    full = Camera(native_size=(320, 240))
    p = torch.tensor([[[0.3, -0.2, 0.5]]], dtype=torch.float64)
    cpos = torch.tensor([CAM.location], dtype=torch.float64)
    a, b = project(p, cpos, full, 240, 320)[0, 0], project(p, cpos, crop, 64, 64)[0, 0]
    assert torch.allclose(b[:2], (a[:2] - torch.tensor([64.0, 24.0], dtype=torch.float64)) * 64 / 192)


def test_directions_follow_the_image_axes():
    dirs = directions(CAM)
    cam = torch.tensor([CAM.location], dtype=torch.float64)
    base = torch.zeros(1, 1, 3, dtype=torch.float64)
    p0 = project(base, cam, CAM, H, W)[0, 0]
    for name, axis, sign in (("right", 0, 1), ("left", 0, -1), ("front", 1, 1), ("behind", 1, -1)):
        v = np.asarray(dirs[name])
        assert abs(np.linalg.norm(v) - 1) < 1e-12 and v[2] == 0
        p = project(base + torch.tensor(v), cam, CAM, H, W)[0, 0]
        assert sign * (p[axis] - p0[axis]) > 0.5  # 'front' moves down the image, towards the camera
    assert dirs["above"] == (0.0, 0.0, 1.0)


def test_sample_layout_obeys_clevr_rules():
    rng = np.random.default_rng(0)
    b, k = 300, 10
    num = rng.integers(3, 11, size=b)
    radii = rng.choice([0.7, 0.35, 0.7 / math.sqrt(2), 0.35 / math.sqrt(2)], size=(b, k))
    xy, ok = sample_layout(rng, num, radii, CAM)
    assert ok.mean() > 0.9  # a crowded scene may fail 20 restarts; the caller redraws it
    assert np.isnan(xy[~ok]).all()
    dvec = np.array([directions(CAM)[n][:2] for n in ("left", "right", "front", "behind")])
    for i in np.flatnonzero(ok):
        n = num[i]
        p = xy[i, :n]
        assert np.isnan(xy[i, n:]).all() and (np.abs(p) <= 3).all()
        for a in range(n):
            for c in range(a):
                delta = p[a] - p[c]
                assert np.linalg.norm(delta) - radii[i, a] - radii[i, c] >= CLEVR_MIN_DIST - 1e-12
                proj = dvec @ delta
                assert not ((proj > 0) & (proj < CLEVR_MARGIN)).any()
    with pytest.raises(ValueError, match="num_objects"):
        sample_layout(rng, np.array([11]), np.ones((1, 10)), CAM)


def test_sample_geometry_enforces_visibility_and_is_deterministic():
    rng = np.random.default_rng(5)
    g = sample_geometry(rng, 12, CAM, (0.7, 0.35), 3, 10, min_pixels=200, check_size=(64, 96))
    assert ((g["num_objects"] >= 3) & (g["num_objects"] <= 10)).all()
    present = g["shape"] >= 0
    assert np.array_equal(present.sum(1), g["num_objects"])
    assert not np.isnan(g["xy"][present]).any() and np.isnan(g["xy"][~present]).all()
    cube = g["shape"] == SHAPES.index("cube")
    size = np.array([0.7, 0.35])[g["size"].clip(0)]
    assert np.allclose(g["r"][present], np.where(cube, size / math.sqrt(2), size)[present])
    assert (np.abs(g["camera"] - np.asarray(CAM.location)) <= 0.5).all()
    assert (np.abs(g["lights"] - np.asarray(Lights().positions)) <= 1.0).all()
    from tasks.scenes.render import geometry_batch
    counts = visible_pixels(geometry_batch(g), CAM, 64, 96).numpy()
    need = round(200 * 64 * 96 / (480 * 320))
    assert (counts[present] >= need).all() and (counts[~present] == 0).all()
    g2 = sample_geometry(np.random.default_rng(5), 12, CAM, (0.7, 0.35), 3, 10, min_pixels=200, check_size=(64, 96))
    assert all(np.array_equal(g[k], g2[k], equal_nan=True) for k in g)


def test_render_is_deterministic_and_chunking_does_not_change_it():
    objs = [("cube", (0.0, 0.0, 0.5), 0.5, 0.3), ("sphere", (1.5, 1.0, 0.7), 0.7, 0.0)]
    sc = _scene(objs)
    two = SceneBatch(**{k: (None if getattr(sc, k) is None else torch.cat([getattr(sc, k)] * 2))
                        for k in ("position", "scale", "rotation", "shape", "albedo", "metal", "camera", "lights",
                                  "ground_albedo")})
    a = render(two, CAM, H, W, chunk=1)
    b = render(two, CAM, H, W, chunk=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0][0], a[0][1])


def _square(x):
    return x * x


def test_run_blocks_keeps_job_order_in_worker_processes():
    jobs = [(i,) for i in range(5)]
    assert run_blocks(_square, jobs, workers=1, progress=False) == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="workers"):
        run_blocks(_square, jobs, workers=0)


def test_bad_scene_input_is_rejected():
    sc = _scene([("sphere", (0, 0, 0.7), 0.7, 0.0)])
    with pytest.raises(ValueError, match="scale"):
        SceneBatch(position=sc.position, scale=torch.zeros(1, 1), rotation=sc.rotation, shape=sc.shape,
                   albedo=sc.albedo, metal=sc.metal, camera=sc.camera, lights=sc.lights, ground_albedo=sc.ground_albedo)
    with pytest.raises(ValueError, match="albedo"):
        SceneBatch(position=sc.position, scale=sc.scale, rotation=sc.rotation, shape=sc.shape,
                   albedo=torch.zeros(1, 1, 4), metal=sc.metal, camera=sc.camera, lights=sc.lights,
                   ground_albedo=sc.ground_albedo)
    with pytest.raises(ValueError, match="together"):
        SceneBatch(position=sc.position, scale=sc.scale, rotation=sc.rotation, shape=sc.shape, albedo=sc.albedo,
                   metal=sc.metal, camera=sc.camera, lights=sc.lights, ground_albedo=sc.ground_albedo,
                   texture=torch.zeros(1, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="window"):
        Camera(window=(0.5, 0.4, 0.0, 1.0))
    with pytest.raises(ValueError, match="supersample"):
        render(sc, CAM, H, W, supersample=0)


def test_sample_geometry_keeps_object_counts_when_redrawing():
    """CLEVR redraws the objects of a rejected scene with the same count (add_random_objects is called again
    with the same num_objects), so the counts stay uniform. Redrawing the count as well skews them towards
    small scenes: with ClevrTex's large objects, 10-object scenes came out at about 5% instead of 12.5%."""
    cam = Camera(native_size=(320, 240))
    g = sample_geometry(np.random.default_rng(3), 512, cam, (0.9, 0.6, 0.4), 3, 10)
    hist = np.bincount(g["num_objects"], minlength=11)[3:]
    assert hist.min() >= 45, hist.tolist()  # 64 expected per count, sd about 7.5; the skewed version gave ~26
    want = np.array([3, 10, 10, 7, 10, 4])
    g = sample_geometry(np.random.default_rng(4), 6, cam, (0.9, 0.6, 0.4), 3, 10, num_objects=want)
    assert np.array_equal(g["num_objects"], want) and np.array_equal((g["shape"] >= 0).sum(1), want)
    with pytest.raises(ValueError, match="num_objects"):
        sample_geometry(np.random.default_rng(4), 2, cam, (0.9,), 3, 10, num_objects=np.array([2, 5]))
