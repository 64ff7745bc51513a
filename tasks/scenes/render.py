"""A batched PyTorch ray caster for CLEVR's world, used by the CLEVR, ClevrTex and CLEVRER generators (App. F.2-F.4).

The real data sets were rendered with Blender/Cycles from one base scene (a grey ground, a fixed camera with
a little jitter, key/fill/back area lights); none of that can be shipped or run here, so this module
re-creates the scene analytically and renders whole batches of images at once:

- Geometry: spheres, oriented cubes and capped cylinders (CLEVR's three shapes, with CLEVR's convention that
  the unit shape is scaled by ``r`` and sits on the ground at height ``r``; cubes use ``r / sqrt(2)``), on the
  ground plane z = 0. Rays are intersected in each object's local frame (rotation about z, then the unit
  shape), objects of one shape are tested together as one tensor of shape (B, M, P).
- Camera: CLEVR's Blender camera (location, XYZ Euler rotation, 35 mm lens on a 32 mm sensor, 480x320
  frame) with uniform location jitter of +-0.5; a ``window`` renders a crop of the frame (ClevrTex's centre
  crop) and a non-square output squeezes the frame the way resizing 480x320 to 128x128 does.
- Lights: key, fill and back lights at CLEVR's positions (as published in the Kubric re-creation of the CLEVR
  scene) with +-1 jitter, a softened inverse-square fall-off and an ambient term. Shadows come from shadow
  rays to the key light, an area light sampled at a different point of its disc for every ray; the
  dithered visibility is then smoothed over neighbouring pixels of the same surface (or averaged over
  sub-pixels), which gives soft shadow edges.
- Materials: rubber is Lambertian with a faint broad highlight; metal is darker in diffuse, reflects a
  ground/sky environment tinted by its colour and has sharp Blinn-Phong highlights. Optional procedural
  textures (value noise, stripes, checks, marble) on objects and ground serve the ClevrTex generator.
- Output: uint8 images (gamma 2.2; object boundaries anti-aliased with extra rotated-grid rays, or every
  pixel supersampled) and uint8 index maps from the ray through each pixel centre (0 = ground, k = the
  object in slot k - 1), so an object's mask is exactly the set of pixels whose centre sees it.
- Speed: one torch thread, two scenes at a time (tensors stay in cache); about 20-26 ms per 128x128 CLEVR
  image on one core of a 2-core AMD EPYC (AVX2), visibility checks included (``run_blocks`` can use more processes).

Also here: CLEVR's object properties (``SHAPES``, ``COLORS``, ``MATERIALS``, ``SIZES``), the placement rules of
CLEVR's ``render_images.py`` (uniform positions in [-3, 3]^2, minimum distance 0.25 between footprints,
margin 0.4 along the four cardinal directions) vectorised over scenes, the visibility check (minimum
visible pixels per object), the cardinal directions and the camera projection that gives ``pixel_coords``.

Known limits: no inter-reflections (metal reflects a fixed environment, not the other objects), no bevels
on cubes and cylinders, no depth of field; lighting constants were tuned by eye to resemble the CLEVR
renders (ground brightness profile matched to CLEVR's sample images), not fitted. Generators render with
one thread, so their float32 output is reproducible on one machine; other CPUs may differ in the last bit
of a few pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = [
    "RENDER_VERSION", "SHAPES", "COLORS", "COLOR_NAMES", "MATERIALS", "SIZES", "CLEVR_MIN_DIST", "CLEVR_MARGIN",
    "CLEVR_MIN_PIXELS", "Camera", "Lights", "SceneBatch", "TEXTURES", "render", "index_map", "project",
    "directions", "sample_layout", "visible_pixels", "run_blocks",
    "sample_geometry", "geometry_batch", "cached_scenes",
]

# Version of everything here that shapes the generators' output (geometry, shading, placement rules,
# sample_geometry's random stream). The generated-data caches are keyed by it as well as by each
# generator's GENERATOR_VERSION, so bump it whenever a change here alters rendered bytes or drawn scenes.
RENDER_VERSION = "1"

# ---- CLEVR's object properties (data/properties.json of clevr-dataset-gen, in its order) ----------------
SHAPES = ("cube", "sphere", "cylinder")
COLORS = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
COLOR_NAMES = tuple(COLORS)
MATERIALS = ("rubber", "metal")
SIZES = {"large": 0.7, "small": 0.35}
# render_images.py defaults: min_dist, margin, min_pixels_per_object (at 480x320).
CLEVR_MIN_DIST = 0.25
CLEVR_MARGIN = 0.4
CLEVR_MIN_PIXELS = 200

# Procedural texture kinds (ClevrTex); 0 = plain colour.
TEXTURES = ("plain", "noise", "stripes", "checks", "marble")

_EPS = 1e-4
_INF = float("inf")
# Shading constants: light fall-off ((d0^2 + s) / (d^2 + s))^pow, and the colour of rays that miss the ground.
_FALLOFF_SOFT = 9.0
_FALLOFF_POW = 0.3
_SKY = (0.3, 0.3, 0.3)


# ---- camera ---------------------------------------------------------------------------------------------
def _euler_xyz(deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix of Blender's XYZ Euler angles (degrees): R = Rz @ Ry @ Rx."""
    ax, ay, az = (math.radians(a) for a in deg)
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Camera:
    """CLEVR's camera (``base_scene.blend``): a pinhole at ``location`` looking along its local -z.

    ``native_size`` (W, H) is the full frame (CLEVR 480x320, ClevrTex 320x240); ``pixel_coords`` are given in
    it. ``window`` = (x0, x1, y0, y1) is the part of the frame that is rendered, as fractions of the frame
    (y downwards); the full frame is (0, 1, 0, 1). ``jitter`` is the uniform +- range of the location jitter.
    """

    location: tuple[float, float, float] = (7.358891487121582, -6.925790786743164, 4.958309173583984)
    rotation_deg: tuple[float, float, float] = (63.559, 0.0, 46.692)
    focal_mm: float = 35.0
    sensor_mm: float = 32.0
    native_size: tuple[int, int] = (480, 320)
    window: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)
    jitter: float = 0.5

    def __post_init__(self) -> None:
        x0, x1, y0, y1 = self.window
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"Camera.window must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {self.window}")
        if min(self.native_size) < 1 or self.focal_mm <= 0 or self.sensor_mm <= 0:
            raise ValueError("Camera: native_size, focal_mm and sensor_mm must be positive")

    def basis(self) -> np.ndarray:
        """(3, 3) float64: rows are the world directions of image right, image up and viewing direction."""
        r = _euler_xyz(self.rotation_deg)
        return np.stack([r @ [1.0, 0, 0], r @ [0, 1.0, 0], r @ [0, 0, -1.0]])

    def tan_half(self) -> tuple[float, float]:
        """tan of the half field of view (horizontal, vertical); the sensor spans the larger frame side."""
        w, h = self.native_size
        t = self.sensor_mm / 2 / self.focal_mm
        return (t, t * h / w) if w >= h else (t * w / h, t)

    def center_crop(self, frac: float) -> "Camera":
        """This camera rendering only the centred square of side ``frac * min(W, H)`` (ClevrTex's crop),
        with the integer pixel box ``((W - c) // 2, (H - c) // 2, (W + c) // 2, (H + c) // 2)``, c = int(frac * min)."""
        w, h = self.native_size
        c = int(frac * min(w, h))
        if c < 1:
            raise ValueError(f"center_crop: frac={frac} leaves an empty crop of a {w}x{h} frame")
        box = ((w - c) // 2, (w + c) // 2, (h - c) // 2, (h + c) // 2)
        return replace(self, window=(box[0] / w, box[1] / w, box[2] / h, box[3] / h))


@dataclass(frozen=True)
class Lights:
    """CLEVR's lamps (key, fill, back: position, colour, relative intensity) and an ambient term standing in
    for Blender's world light. ``key_radius`` is the radius of the key light's disc (soft shadows)."""

    positions: tuple = ((6.44671, -2.90517, 4.2584), (-4.67112, -4.0136, 3.01122), (-1.1685, 2.64602, 5.81574))
    colors: tuple = ((1.0, 0.93, 0.82), (0.76, 0.82, 1.0), (1.0, 1.0, 1.0))
    intensities: tuple = (0.5, 0.2, 0.1)
    key_radius: float = 0.6
    ambient: float = 0.2
    jitter: float = 1.0


def directions(camera: Camera) -> dict[str, tuple[float, float, float]]:
    """CLEVR's six cardinal directions for a camera: 'behind' is the viewing direction projected onto the
    ground, 'left' the image-left direction projected onto the ground, 'above' the world up; 'front',
    'right', 'below' are their negatives. Values are unit 3-vectors (plain floats), as in the scenes JSON."""
    right, _, fwd = camera.basis()
    behind = np.array([fwd[0], fwd[1], 0.0])
    behind /= np.linalg.norm(behind)
    left = np.array([-right[0], -right[1], 0.0])
    left /= np.linalg.norm(left)
    up = np.array([0.0, 0.0, 1.0])
    out = {"behind": behind, "front": -behind, "left": left, "right": -left, "above": up, "below": -up}
    return {k: tuple(float(x) for x in v) for k, v in out.items()}


def _as(x, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``dtype`` from a tensor, numpy array or nested sequence (numpy input is copied)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.from_numpy(np.array(x, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


# ---- scene description ------------------------------------------------------------------------------------
@dataclass
class SceneBatch:
    """B scenes with up to K objects each (slot k of scene b; ``shape < 0`` marks an empty slot).

    Fields (float32 tensors unless stated):
        position (B, K, 3): object centres (x, y, z), z = r for objects resting on the ground.
        scale (B, K): r, the half-extent of the unit shape (sphere radius, cube half-side, cylinder radius
            and half-height).
        rotation (B, K): rotation about the vertical axis, radians.
        shape (B, K) int64: index into ``SHAPES`` or -1.
        albedo (B, K, 3): linear RGB reflectance in [0, 1].
        metal (B, K) bool: metal (specular) instead of rubber (diffuse).
        camera (B, 3): camera location of each scene (the orientation is the Camera's).
        lights (B, 3, 3): key, fill and back light positions.
        texture (B, K) int64, optional: index into ``TEXTURES`` (0 = plain); with it ``albedo2`` (B, K, 3)
            the second texture colour, ``tex_freq`` (B, K) the pattern frequency per world unit and
            ``tex_dir`` (B, K, 3) a unit vector orienting stripes/marble and seeding the noise.
        ground_albedo (B, 3): ground reflectance; ground_texture (B,) int64, ground_albedo2 (B, 3),
            ground_freq (B,), ground_dir (B, 3) likewise for the ground (z = 0), texture optional.
    """

    position: torch.Tensor
    scale: torch.Tensor
    rotation: torch.Tensor
    shape: torch.Tensor
    albedo: torch.Tensor
    metal: torch.Tensor
    camera: torch.Tensor
    lights: torch.Tensor
    ground_albedo: torch.Tensor
    texture: torch.Tensor | None = None
    albedo2: torch.Tensor | None = None
    tex_freq: torch.Tensor | None = None
    tex_dir: torch.Tensor | None = None
    ground_texture: torch.Tensor | None = None
    ground_albedo2: torch.Tensor | None = None
    ground_freq: torch.Tensor | None = None
    ground_dir: torch.Tensor | None = None

    def __post_init__(self) -> None:
        f32 = lambda x: _as(x, torch.float32)  # noqa: E731
        self.position, self.scale, self.rotation = f32(self.position), f32(self.scale), f32(self.rotation)
        self.albedo, self.camera, self.lights = f32(self.albedo), f32(self.camera), f32(self.lights)
        self.ground_albedo = f32(self.ground_albedo)
        self.shape = _as(self.shape, torch.int64)
        self.metal = _as(self.metal, torch.bool)
        if self.position.dim() != 3 or self.position.shape[-1] != 3:
            raise ValueError(f"SceneBatch.position must be (B, K, 3), got {tuple(self.position.shape)}")
        b, k = self.position.shape[:2]
        want = {"scale": (b, k), "rotation": (b, k), "shape": (b, k), "albedo": (b, k, 3), "metal": (b, k),
                "camera": (b, 3), "lights": (b, 3, 3), "ground_albedo": (b, 3)}
        for name, shp in want.items():
            if tuple(getattr(self, name).shape) != shp:
                raise ValueError(f"SceneBatch.{name} must have shape {shp}, got {tuple(getattr(self, name).shape)}")
        if bool((self.shape >= len(SHAPES)).any()):
            raise ValueError(f"SceneBatch.shape holds an index >= {len(SHAPES)}")
        if bool(((self.shape >= 0) & (self.scale <= 0)).any()):
            raise ValueError("SceneBatch.scale must be positive for every object")
        obj_tex = (self.texture, self.albedo2, self.tex_freq, self.tex_dir)
        if any(t is not None for t in obj_tex):
            if any(t is None for t in obj_tex):
                raise ValueError("SceneBatch: texture, albedo2, tex_freq and tex_dir must be given together")
            self.texture = _as(self.texture, torch.int64)
            self.albedo2, self.tex_freq, self.tex_dir = f32(self.albedo2), f32(self.tex_freq), f32(self.tex_dir)
            want_tex = {"texture": (b, k), "albedo2": (b, k, 3), "tex_freq": (b, k), "tex_dir": (b, k, 3)}
            for name, shp in want_tex.items():
                if tuple(getattr(self, name).shape) != shp:
                    raise ValueError(f"SceneBatch.{name} must have shape {shp}, got {tuple(getattr(self, name).shape)}")
        gnd_tex = (self.ground_texture, self.ground_albedo2, self.ground_freq, self.ground_dir)
        if any(t is not None for t in gnd_tex):
            if any(t is None for t in gnd_tex):
                raise ValueError("SceneBatch: ground_texture, ground_albedo2, ground_freq, ground_dir go together")
            self.ground_texture = _as(self.ground_texture, torch.int64)
            self.ground_albedo2, self.ground_freq = f32(self.ground_albedo2), f32(self.ground_freq)
            self.ground_dir = f32(self.ground_dir)
            for name, shp in {"ground_texture": (b,), "ground_albedo2": (b, 3), "ground_freq": (b,),
                              "ground_dir": (b, 3)}.items():
                if tuple(getattr(self, name).shape) != shp:
                    raise ValueError(f"SceneBatch.{name} must have shape {shp}, got {tuple(getattr(self, name).shape)}")

    def __len__(self) -> int:
        return self.position.shape[0]

    def select(self, idx: slice | torch.Tensor) -> "SceneBatch":
        """The scenes ``idx`` (a slice or a 1-d index tensor) as a new SceneBatch."""
        kw = {}
        for name in ("position", "scale", "rotation", "shape", "albedo", "metal", "camera", "lights",
                     "ground_albedo", "texture", "albedo2", "tex_freq", "tex_dir", "ground_texture",
                     "ground_albedo2", "ground_freq", "ground_dir"):
            v = getattr(self, name)
            kw[name] = None if v is None else v[idx]
        return SceneBatch(**kw)


# ---- rays -------------------------------------------------------------------------------------------------
def _pixel_dirs(camera: Camera, height: int, width: int, offsets: list[tuple[float, float]]) -> torch.Tensor:
    """Unnormalised ray directions (S, H*W, 3) for sub-pixel offsets (ox, oy) in [0, 1) of each pixel."""
    right, up, fwd = (torch.tensor(v, dtype=torch.float64) for v in camera.basis())
    tx, ty = camera.tan_half()
    x0, x1, y0, y1 = camera.window
    out = []
    for ox, oy in offsets:
        fx = x0 + (x1 - x0) * (torch.arange(width, dtype=torch.float64) + ox) / width  # fraction of frame
        fy = y0 + (y1 - y0) * (torch.arange(height, dtype=torch.float64) + oy) / height
        u = (2 * fx - 1) * tx  # (W,)
        v = (1 - 2 * fy) * ty  # (H,)
        d = fwd + u[None, :, None] * right + v[:, None, None] * up  # (H, W, 3)
        out.append(d.reshape(-1, 3))
    return torch.stack(out).float()


def project(points: torch.Tensor, camera_pos: torch.Tensor, camera: Camera, height: int, width: int) -> torch.Tensor:
    """Project world points into the rendered image.

    points: (B, N, 3); camera_pos: (B, 3). Returns (B, N, 3): x (column, pixel centres at j + 0.5), y (row,
    downwards) in the ``height`` x ``width`` rendering of ``camera.window``, and the depth along the
    viewing direction (the z that Blender's ``world_to_camera_view`` reports)."""
    basis = torch.tensor(camera.basis(), dtype=torch.float64)  # (3, 3): right, up, forward
    rel = points.double() - camera_pos.double()[:, None, :]  # (B, N, 3)
    cam = rel @ basis.T  # (B, N, 3): coordinates along right, up, forward
    tx, ty = camera.tan_half()
    fx = (cam[..., 0] / cam[..., 2] / tx + 1) / 2  # fraction of the frame, rightwards
    fy = (1 - cam[..., 1] / cam[..., 2] / ty) / 2  # downwards
    x0, x1, y0, y1 = camera.window
    px = (fx - x0) / (x1 - x0) * width
    py = (fy - y0) / (y1 - y0) * height
    return torch.stack([px, py, cam[..., 2]], -1).to(points.dtype)


# ---- intersection ----------------------------------------------------------------------------------------
def _t_sphere(ox, oy, oz, dx, dy, dz):
    """Unit sphere: nearest t > eps or inf. All inputs broadcast to (B, M, P)."""
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - 1.0
    disc = b * b - a * c
    t = (-b - torch.sqrt(disc.clamp_min(0.0))) / a
    return torch.where((disc >= 0) & (t > _EPS), t, _INF)


def _t_cube(ox, oy, oz, dx, dy, dz):
    """Unit cube [-1, 1]^3 (slab test): entry t > eps or inf."""
    tnear = None
    tfar = None
    for o, d in ((ox, dx), (oy, dy), (oz, dz)):
        inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t1 = (-1.0 - o) * inv
        t2 = (1.0 - o) * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tnear = lo if tnear is None else torch.maximum(tnear, lo)
        tfar = hi if tfar is None else torch.minimum(tfar, hi)
    return torch.where((tnear <= tfar) & (tnear > _EPS), tnear, _INF)


def _t_cylinder(ox, oy, oz, dx, dy, dz):
    """Unit capped cylinder (radius 1, |z| <= 1): nearest entry t > eps or inf."""
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - 1.0
    disc = b * b - a * c
    ts = (-b - torch.sqrt(disc.clamp_min(0.0))) / a.clamp_min(1e-12)
    zs = oz + ts * dz
    side = torch.where((disc >= 0) & (a > 1e-12) & (ts > _EPS) & (zs.abs() <= 1.0), ts, _INF)
    # The cap facing the ray: z = 1 when going down, z = -1 when going up.
    sgn = torch.where(dz < 0, 1.0, -1.0)
    dzs = torch.where(dz.abs() < 1e-12, torch.full_like(dz, 1e-12), dz)
    tc = (sgn - oz) / dzs
    xc, yc = ox + tc * dx, oy + tc * dy
    cap = torch.where((tc > _EPS) & (xc * xc + yc * yc <= 1.0), tc, _INF)
    return torch.minimum(side, cap)


_T_FNS = (_t_cube, _t_sphere, _t_cylinder)


def _groups(scene: SceneBatch):
    """Per shape: slots (B, M) of the objects of that shape (padded) and a validity mask (B, M)."""
    out = []
    for s in range(len(SHAPES)):
        sel = scene.shape == s  # (B, K)
        m = int(sel.sum(1).max()) if sel.numel() else 0
        if m == 0:
            out.append(None)
            continue
        order = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, :m]  # (B, M): that shape first
        out.append((order, sel.gather(1, order)))
    return out


def _intersect(scene: SceneBatch, groups, o: torch.Tensor, d: torch.Tensor, t_max: torch.Tensor | None = None):
    """Nearest object hit along rays o + t d.

    o: (B, Po, 3) with Po in {1, P}; d: (B or 1, P, 3). Returns t (B, P) (inf where nothing is hit before
    ``t_max`` (B, P)) and slot (B, P) int64 (-1 where nothing is hit)."""
    bsz = scene.position.shape[0]
    p = d.shape[1]
    t_best = torch.full((bsz, p), _INF)
    slot_best = torch.full((bsz, p), -1, dtype=torch.int64)
    ox_w, oy_w, oz_w = o[..., 0][:, None], o[..., 1][:, None], o[..., 2][:, None]  # (B, 1, Po)
    dx_w, dy_w, dz_w = d[..., 0][:, None], d[..., 1][:, None], d[..., 2][:, None]  # (B|1, 1, P)
    for s, grp in enumerate(groups):
        if grp is None:
            continue
        order, valid = grp  # (B, M)
        c = scene.position.gather(1, order[..., None].expand(-1, -1, 3))  # (B, M, 3)
        r = scene.scale.gather(1, order)[..., None]  # (B, M, 1)
        th = scene.rotation.gather(1, order)[..., None]
        cs, sn, inv_r = torch.cos(th), torch.sin(th), 1.0 / r
        # Into the local unit frame: translate, rotate by -theta about z, scale by 1/r (t is unchanged).
        rx, ry, rz = ox_w - c[..., 0:1], oy_w - c[..., 1:2], oz_w - c[..., 2:3]  # (B, M, Po)
        lox, loy, loz = (cs * rx + sn * ry) * inv_r, (cs * ry - sn * rx) * inv_r, rz * inv_r
        ldx, ldy, ldz = (cs * dx_w + sn * dy_w) * inv_r, (cs * dy_w - sn * dx_w) * inv_r, dz_w * inv_r  # (B, M, P)
        t = _T_FNS[s](lox, loy, loz, ldx, ldy, ldz)  # (B, M, P)
        t = torch.where(valid[..., None], t, _INF)
        t_min, j = t.min(1)  # (B, P)
        better = t_min < t_best
        t_best = torch.where(better, t_min, t_best)
        slot_best = torch.where(better, order.gather(1, j), slot_best)
    if t_max is not None:
        miss = t_best >= t_max
        t_best = torch.where(miss, _INF, t_best)
        slot_best = torch.where(miss, -1, slot_best)
    return t_best, slot_best


def _gather_obj(x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Per-ray object attribute: x (B, K[, C]) gathered at slot (B, P) (clamped at 0) -> (B, P[, C])."""
    s = slot.clamp_min(0)
    if x.dim() == 2:
        return x.gather(1, s)
    return x.gather(1, s[..., None].expand(-1, -1, x.shape[-1]))


def _normals_local(shape: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Outward normals (B, P, 3) at unit-frame points q (B, P, 3) of unit shapes ``shape`` (B, P)."""
    ax = q.abs()
    # Cube: the axis of the largest coordinate.
    k = ax.argmax(-1, keepdim=True)
    n_cube = torch.zeros_like(q).scatter_(-1, k, torch.sign(q.gather(-1, k)))
    # Cylinder: a cap where |z| dominates the radial distance, else the side.
    rad = torch.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2).clamp_min(1e-9)
    cap = ax[..., 2] >= rad
    n_side = torch.stack([q[..., 0] / rad, q[..., 1] / rad, torch.zeros_like(rad)], -1)
    n_cap = torch.stack([torch.zeros_like(rad), torch.zeros_like(rad), torch.sign(q[..., 2])], -1)
    n_cyl = torch.where(cap[..., None], n_cap, n_side)
    n_sph = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    s = shape[..., None]
    return torch.where(s == 0, n_cube, torch.where(s == 1, n_sph, n_cyl))


# ---- procedural textures -----------------------------------------------------------------------------------
def _hash3(ix, iy, iz, seed):
    """Deterministic pseudo-random values in [0, 1) on the integer lattice (float32 sine hash)."""
    h = torch.sin(ix * 12.9898 + iy * 78.233 + iz * 37.719 + seed * 4.1414) * 43758.5453
    return h - torch.floor(h)


def _value_noise(p: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Trilinear value noise in [0, 1): p (..., 3), seed (...) -> (...)."""
    i = torch.floor(p)
    f = p - i
    f = f * f * (3 - 2 * f)  # smoothstep
    out = torch.zeros(p.shape[:-1])
    for cx in (0.0, 1.0):
        wx = f[..., 0] if cx else 1 - f[..., 0]
        for cy in (0.0, 1.0):
            wy = f[..., 1] if cy else 1 - f[..., 1]
            for cz in (0.0, 1.0):
                wz = f[..., 2] if cz else 1 - f[..., 2]
                out = out + wx * wy * wz * _hash3(i[..., 0] + cx, i[..., 1] + cy, i[..., 2] + cz, seed)
    return out


def _fbm(p: torch.Tensor, seed: torch.Tensor, octaves: int = 3) -> torch.Tensor:
    """Fractal sum of value noise in [0, 1): p (..., 3) -> (...)."""
    total, amp, norm = torch.zeros(p.shape[:-1]), 0.5, 0.0
    for o in range(octaves):
        total = total + amp * _value_noise(p * (2.0 ** o), seed + 17.0 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def _texture(kind, c1, c2, freq, tdir, p):
    """Albedo of procedural textures at points p (B, P, 3) (object or ground coordinates, world units).

    kind (B, P) int64 index into TEXTURES; c1, c2 (B, P, 3) colours; freq (B, P); tdir (B, P, 3) unit
    vectors. Returns (B, P, 3)."""
    q = p * freq[..., None]
    seed = (tdir * torch.tensor([3.1, 5.7, 7.3])).sum(-1) * 10.0
    along = (q * tdir).sum(-1)  # coordinate along the pattern direction
    n = _fbm(q, seed)
    w_noise = n
    w_stripes = (torch.sin(2 * math.pi * along) > 0).float()
    # Checks in two directions perpendicular-ish to the pattern direction (world-aligned cells, rotated).
    cells = torch.floor(q[..., 0] + 0.37 * tdir[..., 0]) + torch.floor(q[..., 1] + 0.37 * tdir[..., 1]) \
        + torch.floor(q[..., 2] + 0.37 * tdir[..., 2])
    w_checks = torch.remainder(cells, 2.0)
    w_marble = 0.5 + 0.5 * torch.sin(2 * math.pi * (along + 1.6 * n))
    w_marble = w_marble ** 3
    w = torch.stack([torch.zeros_like(n), w_noise, w_stripes, w_checks, w_marble], -1)  # (B, P, 5)
    w = w.gather(-1, kind.clamp(0, len(TEXTURES) - 1)[..., None])  # (B, P, 1)
    return c1 + (c2 - c1) * w


class _threads:
    """Context manager: torch intra-op threads set to n, restored on exit."""

    def __init__(self, n: int) -> None:
        self.n, self.old = n, None

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.old)


# ---- shading ----------------------------------------------------------------------------------------------
def _shade(scene: SceneBatch, groups, lights: Lights, cam_o: torch.Tensor, d: torch.Tensor,
           key_offset: torch.Tensor):
    """Shade primary rays cam_o (B, 1, 3) + t d, with d (1 or B, P, 3).

    key_offset: (1 or B, P, 3) point on the key light's disc used by each ray's shadow test.
    Returns (base, key, vis, slot): linear RGB (B, P, 3) of everything but the key light, the key light's
    unshadowed contribution (B, P, 3), its visibility (B, P) in {0, 1}, and the slot hit (B, P) (-1 = ground).
    """
    bsz, p = scene.position.shape[0], d.shape[1]
    t_obj, slot = _intersect(scene, groups, cam_o, d)
    dz = d[..., 2].expand(bsz, p)
    t_gnd = torch.where(dz < -1e-9, -cam_o[..., 2] / dz.clamp_max(-1e-9), _INF)  # (B, P)
    hit_obj = t_obj < t_gnd
    slot = torch.where(hit_obj, slot, -1)
    t = torch.where(hit_obj, t_obj, t_gnd)
    sky = ~torch.isfinite(t)
    t = torch.where(sky, 0.0, t)
    x = cam_o + t[..., None] * d  # (B, P, 3) hit points
    dn = d / d.norm(dim=-1, keepdim=True)

    # Object frame quantities at the hit point.
    c = _gather_obj(scene.position, slot)
    r = _gather_obj(scene.scale, slot)[..., None]
    th = _gather_obj(scene.rotation, slot)
    cs, sn = torch.cos(th), torch.sin(th)
    rel = x - c
    lx, ly = cs * rel[..., 0] + sn * rel[..., 1], cs * rel[..., 1] - sn * rel[..., 0]
    q = torch.stack([lx, ly, rel[..., 2]], -1) / r  # (B, P, 3) in the unit frame
    n_loc = _normals_local(_gather_obj(scene.shape, slot), q)
    n_obj = torch.stack([cs * n_loc[..., 0] - sn * n_loc[..., 1], sn * n_loc[..., 0] + cs * n_loc[..., 1],
                         n_loc[..., 2]], -1)
    up = torch.zeros_like(n_obj)
    up[..., 2] = 1.0
    n = torch.where(hit_obj[..., None], n_obj, up)

    # Albedo: objects (plain, or textured in object coordinates) and ground (plain or textured).
    alb_obj = _gather_obj(scene.albedo, slot)
    if scene.texture is not None:
        alb_obj = _texture(_gather_obj(scene.texture, slot), alb_obj, _gather_obj(scene.albedo2, slot),
                           _gather_obj(scene.tex_freq, slot), _gather_obj(scene.tex_dir, slot), q * r)
    alb_gnd = scene.ground_albedo[:, None, :].expand(bsz, p, 3)
    if scene.ground_texture is not None:
        e = lambda v: v[:, None].expand(bsz, p, *v.shape[1:])  # noqa: E731
        alb_gnd = _texture(e(scene.ground_texture), alb_gnd, e(scene.ground_albedo2), e(scene.ground_freq),
                           e(scene.ground_dir), x)
    albedo = torch.where(hit_obj[..., None], alb_obj, alb_gnd)
    metal = (hit_obj & _gather_obj(scene.metal, slot))[..., None]  # (B, P, 1)

    view = -dn
    reflect = dn - 2 * (dn * n).sum(-1, keepdim=True) * n  # mirror direction
    # Rubber: Lambert plus a faint broad highlight. Metal: weak diffuse, strong sharp highlight and a
    # reflection of a grey-ground / bright-sky environment, both tinted by the metal's colour.
    kd = torch.where(metal, 0.12, 1.0)
    ks = torch.where(metal, 1.6 * albedo + 0.25, torch.full_like(albedo, 0.05))
    shin = torch.where(metal, 90.0, 10.0)
    rz = reflect[..., 2:3]
    env = torch.where(rz < 0, 0.05 + 0.12 * (1 + rz), 0.3 + 1.0 * rz.clamp(0, 1).sqrt())
    base = albedo * (lights.ambient * kd + torch.where(metal, env, 0.0))
    key = torch.zeros_like(base)
    vis = torch.ones(bsz, p)
    for li in range(3):
        lp = scene.lights[:, li][:, None, :]  # (B, 1, 3)
        to_l = lp - x
        dist2 = (to_l * to_l).sum(-1, keepdim=True)
        ldir = to_l / dist2.sqrt()
        ref2 = (scene.lights[:, li] ** 2).sum(-1)[:, None, None]
        # A softened, weakened inverse-square fall-off (tuned so that the ground's brightness from the
        # bottom to the top of the frame matches CLEVR's renders, where the world light dominates far away).
        atten = ((ref2 + _FALLOFF_SOFT) / (dist2 + _FALLOFF_SOFT)) ** _FALLOFF_POW
        irr = lights.intensities[li] * atten * torch.tensor(lights.colors[li])
        ndl = (n * ldir).sum(-1, keepdim=True).clamp_min(0.0)
        h = ldir + view
        h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        ndh = (n * h).sum(-1, keepdim=True).clamp_min(0.0)
        term = irr * (albedo * kd * ndl + ks * ndh ** shin * (ndl > 0))
        if li == 0:
            key = term
            # Shadow rays start just off the surface and end at a sample on the light's disc (the shading
            # itself uses the disc's centre, so that only the shadow, not the whole surface, is dithered).
            xo = x + n * 2e-3
            t_sh, _ = _intersect(scene, groups, xo, lp + key_offset - xo, t_max=torch.ones(bsz, p))
            vis = (~torch.isfinite(t_sh)).float()
        else:
            base = base + term
    base = torch.where(sky[..., None], torch.tensor(_SKY), base)
    key = torch.where(sky[..., None], 0.0, key)
    return base, key, vis, slot


def _tonemap(lin: torch.Tensor) -> torch.Tensor:
    """Linear RGB -> display values in [0, 1] (gamma 2.2)."""
    return lin.clamp(0.0, 1.0) ** (1 / 2.2)


def _key_offsets(n_sub: int, p: int, radius: float) -> torch.Tensor:
    """Deterministic points on the key light's disc (n_sub, P, 3): sample i of every pixel lies on ring
    sqrt((i + 0.5) / n_sub) at a pixel-dependent angle, so shadow edges dither instead of banding."""
    g = torch.Generator().manual_seed(1234)
    rot = torch.rand(p, generator=g) * 2 * math.pi  # (P,)
    out = []
    for i in range(n_sub):
        rho = radius * math.sqrt((i + 0.5) / n_sub)
        ang = rot + 2 * math.pi * i * 0.618034
        out.append(torch.stack([rho * torch.cos(ang), rho * torch.sin(ang), torch.zeros(p)], -1))
    return torch.stack(out)


def _filter_vis(vis: torch.Tensor, idx: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur shadow visibility (B, H, W) over a (2 radius + 1)^2 window, averaging only pixels that see the
    same surface (index map idx (B, H, W)), in two separable passes."""
    out = vis
    for dim in (2, 1):
        num = torch.zeros_like(out)
        den = torch.zeros_like(out)
        for s in range(-radius, radius + 1):
            v = torch.roll(out, s, dims=dim)
            same = (torch.roll(idx, s, dims=dim) == idx).float()
            if s > 0:  # do not wrap around the border
                same.narrow(dim, 0, s).zero_()
            elif s < 0:
                same.narrow(dim, same.shape[dim] + s, -s).zero_()
            num += v * same
            den += same
        out = num / den
    return out


# Rotated-grid sub-pixel offsets used for anti-aliasing object edges (plus the pixel centre).
_RGSS = ((0.375, 0.125), (0.875, 0.375), (0.625, 0.875), (0.125, 0.625))


def render(scene: SceneBatch, camera: Camera, height: int, width: int, supersample: int = 1,
           lights: Lights | None = None, shadow_blur: int = 2, chunk: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Render scenes to images and object index maps.

    Args:
        scene: B scenes (see ``SceneBatch``).
        camera: the camera model (orientation, lens, frame, window); per-scene locations are in ``scene``.
        height, width: output size in pixels.
        supersample: 1 = one ray per pixel centre, plus four rotated-grid rays in pixels on an object
            boundary (edge anti-aliasing), and a key-light shadow blurred over ``shadow_blur`` pixels;
            s >= 2 = s x s rays in every pixel (for fine textures), the shadow softened by averaging.
        lights: lighting constants (default ``Lights()``); positions come from ``scene.lights``.
        shadow_blur: radius in pixels of the shadow smoothing for supersample == 1 (0 = none).
        chunk: scenes rendered together; small chunks keep the tensors in the CPU cache (fastest with one
            torch thread), memory grows as chunk * s^2 * H * W.

    Returns:
        images uint8 (B, 3, height, width) (gamma-encoded RGB) and masks uint8 (B, height, width): 0 =
        ground, k = the object in slot k - 1, from the ray through each pixel centre.

    Runs with one torch thread (restored afterwards): the many small element-wise ops are faster that way
    on a shared 2-core machine; use ``run_blocks(workers=...)`` for parallelism.
    """
    with _threads(1):
        return _render(scene, camera, height, width, supersample, lights, shadow_blur, chunk)


def _render(scene, camera, height, width, supersample, lights, shadow_blur, chunk):
    if height < 1 or width < 1 or supersample < 1 or chunk < 1 or shadow_blur < 0:
        raise ValueError(f"render: height, width, supersample, chunk must be >= 1 and shadow_blur >= 0, got "
                         f"{height}, {width}, {supersample}, {chunk}, {shadow_blur}")
    if scene.position.shape[1] > 255:
        raise ValueError("render: at most 255 object slots fit a uint8 index map")
    lights = lights or Lights()
    p = height * width
    if supersample == 1:
        offs = [(0.5, 0.5)] + list(_RGSS)
    else:
        s = supersample
        offs = [((i + 0.5) / s, (j + 0.5) / s) for j in range(s) for i in range(s)]
    dirs = _pixel_dirs(camera, height, width, offs)  # (S, P, 3)
    keys = _key_offsets(len(offs), p, lights.key_radius)  # (S, P, 3)
    centre = _pixel_dirs(camera, height, width, [(0.5, 0.5)])  # (1, P, 3)
    images, masks = [], []
    for start in range(0, len(scene), chunk):
        sub = scene.select(slice(start, start + chunk))
        b = len(sub)
        groups = _groups(sub)
        o = sub.camera[:, None, :]  # (b, 1, 3)
        if supersample == 1:
            base, key, vis, slot = _shade(sub, groups, lights, o, dirs[0][None], keys[0][None])
            idx = (slot + 1).reshape(b, height, width)
            if shadow_blur > 0:
                vis = _filter_vis(vis.reshape(b, height, width), idx, shadow_blur).reshape(b, p)
            img = _tonemap(base + key * vis[..., None])  # (b, P, 3)
            img = _antialias_edges(sub, groups, lights, o, img, idx, dirs[1:], keys[1:])
        else:
            img = None
            for si in range(len(offs)):
                base, key, vis, _ = _shade(sub, groups, lights, o, dirs[si][None], keys[si][None])
                srgb = _tonemap(base + key * vis[..., None])
                img = srgb if img is None else img + srgb
            img = img / len(offs)
            idx = _index(sub, groups, centre, height, width)
        img = (img * 255.0).round_().clamp_(0, 255).to(torch.uint8)  # (b, P, 3)
        images.append(img.reshape(b, height, width, 3).permute(0, 3, 1, 2))
        masks.append(idx.to(torch.uint8))
    if not images:
        return torch.zeros(0, 3, height, width, dtype=torch.uint8), torch.zeros(0, height, width, dtype=torch.uint8)
    return torch.cat(images).contiguous(), torch.cat(masks)


def _antialias_edges(scene, groups, lights, o, img, idx, dirs, keys):
    """Average extra sub-pixel rays into pixels on an object boundary.

    img: (B, P, 3) centre-sample colours; idx: (B, H, W) centre index map; dirs, keys: (S, P, 3) sub-pixel
    ray directions and key-light samples. Returns the updated (B, P, 3)."""
    b, h, w = idx.shape
    edge = torch.zeros_like(idx, dtype=torch.bool)
    edge[:, :, :-1] |= idx[:, :, :-1] != idx[:, :, 1:]
    edge[:, :, 1:] |= idx[:, :, 1:] != idx[:, :, :-1]
    edge[:, :-1, :] |= idx[:, :-1, :] != idx[:, 1:, :]
    edge[:, 1:, :] |= idx[:, 1:, :] != idx[:, :-1, :]
    edge = edge.reshape(b, -1)
    e = int(edge.sum(1).max())
    if e == 0:
        return img
    order = torch.argsort((~edge).to(torch.int8), dim=1, stable=True)[:, :e]  # (b, E): edge pixels first
    valid = edge.gather(1, order)
    n_sub = dirs.shape[0]
    d = dirs[:, order].permute(1, 0, 2, 3).reshape(b, n_sub * e, 3)  # (b, S*E, 3)
    k = keys[:, order].permute(1, 0, 2, 3).reshape(b, n_sub * e, 3)
    base, key, vis, _ = _shade(scene, groups, lights, o, d, k)
    sub = _tonemap(base + key * vis[..., None]).reshape(b, n_sub, e, 3).sum(1)  # (b, E, 3)
    cur = img.gather(1, order[..., None].expand(-1, -1, 3))
    new = torch.where(valid[..., None], (cur + sub) / (n_sub + 1), cur)
    return img.scatter(1, order[..., None].expand(-1, -1, 3), new)


def _index(scene: SceneBatch, groups, d: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Index map (B, H, W) int64 of the rays d (1, H*W, 3) from each scene's camera."""
    o = scene.camera[:, None, :]
    t_obj, slot = _intersect(scene, groups, o, d)
    dz = d[..., 2].expand_as(t_obj)
    t_gnd = torch.where(dz < -1e-9, -o[..., 2] / dz.clamp_max(-1e-9), _INF)
    idx = torch.where(t_obj < t_gnd, slot + 1, 0)
    return idx.reshape(len(scene), height, width)


def index_map(scene: SceneBatch, camera: Camera, height: int, width: int, chunk: int = 4) -> torch.Tensor:
    """Object index maps only (no shading): uint8 (B, height, width), 0 = ground, k = slot k - 1.
    Runs with one torch thread, as ``render`` does."""
    if height < 1 or width < 1:
        raise ValueError(f"index_map: height and width must be >= 1, got {height}, {width}")
    d = _pixel_dirs(camera, height, width, [(0.5, 0.5)])
    with _threads(1):
        out = [_index(sub, _groups(sub), d, height, width).to(torch.uint8)
               for sub in (scene.select(slice(i, i + chunk)) for i in range(0, len(scene), chunk))]
    return torch.cat(out) if out else torch.zeros(0, height, width, dtype=torch.uint8)


def visible_pixels(scene: SceneBatch, camera: Camera, height: int, width: int) -> torch.Tensor:
    """Visible pixel count of every slot: int64 (B, K), from ``index_map`` at the given size."""
    idx = index_map(scene, camera, height, width, chunk=4).long().reshape(len(scene), -1)  # (B, H*W)
    k = scene.position.shape[1]
    counts = torch.zeros(len(scene), k + 1, dtype=torch.int64)
    counts.scatter_add_(1, idx, torch.ones_like(idx))
    return counts[:, 1:]


# ---- CLEVR's placement rules -------------------------------------------------------------------------------
def sample_layout(rng: np.random.Generator, num_objects: np.ndarray, radii: np.ndarray, camera: Camera,
                  min_dist: float = CLEVR_MIN_DIST, margin: float = CLEVR_MARGIN, extent: float = 3.0,
                  max_retries: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Place objects on the ground by CLEVR's rules, vectorised over scenes.

    Object i of a scene is drawn uniformly in [-extent, extent]^2 until it is at least ``min_dist`` away
    from every earlier object (distance between centres minus both footprint radii) and no earlier object
    is within ``(0, margin)`` along any of the four cardinal ground directions; after ``max_retries``
    failures for one object the whole scene is placed again (as in CLEVR's ``add_random_objects``).

    Args:
        rng: numpy Generator (consumed deterministically).
        num_objects: int (B,) objects per scene.
        radii: float (B, K) footprint radius of each slot (CLEVR's ``r``; only the first num_objects used).
        camera: gives the cardinal directions.

    Returns:
        xy float64 (B, K, 2) (NaN for unused slots) and ok bool (B,) (False where 20 restarts of a scene
        all failed; such scenes should be redrawn by the caller).
    """
    num_objects = np.asarray(num_objects)
    radii = np.asarray(radii, dtype=np.float64)
    b, k = radii.shape
    if num_objects.shape != (b,) or (num_objects > k).any() or (num_objects < 0).any():
        raise ValueError(f"sample_layout: num_objects must be (B,) with values in [0, K={k}]")
    dirs = directions(camera)
    dvec = np.array([dirs[n][:2] for n in ("left", "right", "front", "behind")])  # (4, 2)
    xy = np.full((b, k, 2), np.nan)
    todo = np.ones(b, dtype=bool)
    ok = np.zeros(b, dtype=bool)
    for _ in range(20):
        idx = np.flatnonzero(todo)
        if idx.size == 0:
            break
        pos = np.full((idx.size, k, 2), np.nan)
        failed = np.zeros(idx.size, dtype=bool)
        for i in range(k):
            need = (num_objects[idx] > i) & ~failed
            if not need.any():
                break
            cand = rng.uniform(-extent, extent, size=(idx.size, max_retries, 2))  # (n, T, 2)
            if i == 0:
                good = np.ones(cand.shape[:2], dtype=bool)
            else:
                delta = cand[:, :, None, :] - pos[:, None, :i, :]  # (n, T, i, 2)
                dist = np.sqrt((delta ** 2).sum(-1))
                far = dist - radii[idx][:, None, None, i] - radii[idx][:, None, :i] >= min_dist
                proj = delta @ dvec.T  # (n, T, i, 4)
                clear = ~((proj > 0) & (proj < margin)).any(-1)
                good = (far & clear).all(-1)  # (n, T)
            first = good.argmax(1)
            has = good.any(1)
            pos[need & has, i] = cand[need & has, first[need & has]]
            failed |= need & ~has
        done = ~failed
        xy[idx[done]] = pos[done]
        ok[idx[done]] = True
        todo[idx[done]] = False
    for bi in range(b):
        xy[bi, num_objects[bi]:] = np.nan
    return xy, ok


def geometry_batch(geom: dict[str, np.ndarray], albedo: np.ndarray | None = None, metal: np.ndarray | None = None,
                   ground_albedo: float | np.ndarray = 0.35, **texture) -> SceneBatch:
    """A SceneBatch from ``sample_geometry``'s arrays plus appearance.

    albedo: (B, K, 3) linear RGB (default mid grey); metal: (B, K) bool (default all rubber); ground_albedo:
    scalar or (B, 3); texture: optional SceneBatch texture fields (``texture``, ``albedo2``, ...).
    """
    b, k = geom["shape"].shape
    present = geom["shape"] >= 0
    pos = np.concatenate([np.nan_to_num(geom["xy"]), geom["r"][..., None]], -1)
    g = np.broadcast_to(np.asarray(ground_albedo, dtype=np.float32), (b, 3))
    return SceneBatch(
        position=pos, scale=np.where(present, geom["r"], 1.0), rotation=np.deg2rad(geom["rotation"]),
        shape=geom["shape"], albedo=np.full((b, k, 3), 0.5) if albedo is None else albedo,
        metal=np.zeros((b, k), bool) if metal is None else metal, camera=geom["camera"], lights=geom["lights"],
        ground_albedo=g, **texture)


def sample_geometry(rng: np.random.Generator, num_scenes: int, camera: Camera, size_values: tuple[float, ...],
                    min_objects: int, max_objects: int, min_pixels: int = CLEVR_MIN_PIXELS,
                    check_size: tuple[int, int] | None = None, lights: Lights | None = None,
                    extent: float = 3.0, max_rounds: int = 200, slots: int | None = None,
                    check: bool = True, num_objects: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Draw CLEVR-style scene geometry: object count, shapes, sizes, positions (CLEVR's placement rules),
    rotations, and camera / light jitter; redraw the objects of every scene in which some object has fewer
    than ``min_pixels`` visible pixels in the full native frame (CLEVR's visibility rule).

    As in CLEVR's ``render_images.py`` (which calls ``add_random_objects`` again with the same
    ``num_objects`` and the same camera), a redrawn scene keeps its object count and its camera / light
    jitter; only shapes, sizes, positions and rotations are drawn again. (Redrawing the count as well would
    bias the counts towards small scenes, which fail the rules more often.) ``num_objects`` (B,) fixes the
    counts instead of drawing them uniformly in [min_objects, max_objects].

    The visibility check renders index maps of the full frame at ``check_size`` (H, W) (default: the
    native size divided by 4) and scales ``min_pixels`` (given for the native frame) by the pixel ratio.
    With ``check=False`` it is skipped (for callers that check the final renders themselves).

    Returns numpy arrays (B = num_scenes, K = ``slots``, default max_objects):
        num_objects int64 (B,); shape int64 (B, K) (index into SHAPES, -1 for empty slots); size int64
        (B, K) (index into size_values, -1 empty); r float64 (B, K) (CLEVR's r: the size, divided by
        sqrt(2) for cubes); xy float64 (B, K, 2) (NaN empty); rotation float64 (B, K) (degrees in [0, 360));
        camera float64 (B, 3) and lights float64 (B, 3, 3) (jittered positions).
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    lights = lights or Lights()
    full = replace(camera, window=(0.0, 1.0, 0.0, 1.0))
    w, h = camera.native_size
    ch, cw = check_size or (max(1, h // 4), max(1, w // 4))
    need_px = max(1, int(round(min_pixels * ch * cw / (w * h))))
    b, k = num_scenes, max_objects if slots is None else slots
    if k < max_objects:
        raise ValueError(f"slots ({k}) must be >= max_objects ({max_objects})")
    out = {"num_objects": np.zeros(b, np.int64), "shape": np.full((b, k), -1, np.int64),
           "size": np.full((b, k), -1, np.int64), "r": np.ones((b, k)), "xy": np.full((b, k, 2), np.nan),
           "rotation": np.zeros((b, k)), "camera": np.zeros((b, 3)), "lights": np.zeros((b, 3, 3))}
    todo = np.arange(b)
    sizes = np.asarray(size_values, dtype=np.float64)
    if num_objects is None:
        num_all = rng.integers(min_objects, max_objects + 1, size=b)
    else:
        num_all = np.asarray(num_objects, dtype=np.int64)
        if num_all.shape != (b,) or (num_all < min_objects).any() or (num_all > max_objects).any():
            raise ValueError(f"sample_geometry: num_objects must be ({b},) with values in "
                             f"[{min_objects}, {max_objects}]")
    cam_all = np.asarray(camera.location) + rng.uniform(-camera.jitter, camera.jitter, size=(b, 3))
    lig_all = np.asarray(lights.positions) + rng.uniform(-lights.jitter, lights.jitter, size=(b, 3, 3))
    for _ in range(max_rounds):
        if todo.size == 0:
            return out
        n = todo.size
        num = num_all[todo]
        present = np.arange(k)[None] < num[:, None]
        shape = np.where(present, rng.integers(0, len(SHAPES), size=(n, k)), -1)
        size = np.where(present, rng.integers(0, len(sizes), size=(n, k)), -1)
        r = np.where(present, sizes[size.clip(0)], 1.0)
        r = np.where(shape == SHAPES.index("cube"), r / math.sqrt(2), r)
        rot = np.where(present, 360.0 * rng.random((n, k)), 0.0)
        cam, lig = cam_all[todo], lig_all[todo]
        xy, ok = sample_layout(rng, num, np.where(present, r, 0.0), camera, extent=extent)
        part = {"num_objects": num, "shape": shape, "size": size, "r": r, "xy": xy, "rotation": rot,
                "camera": cam, "lights": lig}
        good = ok.copy()
        if check:
            counts = visible_pixels(geometry_batch(part), full, ch, cw).numpy()  # (n, K)
            good &= ((counts >= need_px) | ~present).all(1)
        for key, val in part.items():
            out[key][todo[good]] = val[good]
        todo = todo[~good]
    raise RuntimeError(f"sample_geometry: {todo.size} scenes still had hidden objects after {max_rounds} rounds")


# ---- running generators block by block ----------------------------------------------------------------------
def _call_single_threaded(fn, args):
    with _threads(1):
        return fn(*args)


def run_blocks(fn, jobs: list[tuple], workers: int = 1, progress: bool = True, desc: str = "rendering",
               sizes: list[int] | None = None) -> list:
    """Run ``fn(*job)`` for every job and return the results in job order.

    Generators split their output into fixed blocks of scenes with one random stream per block, so blocks
    are independent and the result does not depend on ``workers``. Each block runs with one torch thread
    (small tensors stay in cache, which beats intra-op threading on few cores); ``workers`` > 1 runs blocks
    in that many spawned processes (``tasks.pool.run_jobs``: ``fn`` must be a module-level function); this
    pays off only when cores are free.
    ``sizes`` (items per job) drives the progress bar.
    """
    from tqdm import tqdm

    from tasks.pool import run_jobs

    sizes = sizes or [1] * len(jobs)
    bar = tqdm(total=sum(sizes), desc=desc, unit="img", disable=not progress or not jobs)
    try:
        return run_jobs(_call_single_threaded, [(fn, job) for job in jobs], workers,
                        on_done=lambda i, _: bar.update(sizes[i]))
    finally:
        bar.close()


def check_generation(count: int, seed: int, image_size: int, split: str | None = None, splits=(),
                     count_name: str = "num_images") -> None:
    """The argument checks every scene generator shares: ``count`` >= 0 items, ``seed`` >= 0, ``image_size``
    >= 8 and, when ``split`` is given, a key of ``splits``; raises ValueError naming the argument."""
    if count < 0:
        raise ValueError(f"{count_name} must be >= 0, got {count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if split is not None and split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")


def run_in_blocks(fn, count: int, block: int, job, workers: int = 1, progress: bool = True,
                  desc: str = "rendering") -> list:
    """Split ``count`` items into blocks of ``block`` (the last one shorter) and run ``fn(*job(index, size))``
    for each block with :func:`run_blocks`; returns the blocks' results in order. A block's random stream is
    a function of its index alone, so the first m items of a larger set equal a set of m."""
    sizes = [min(block, count - blk * block) for blk in range(-(-count // block))]
    jobs = [job(blk, size) for blk, size in enumerate(sizes)]
    return run_blocks(fn, jobs, workers=workers, progress=progress, desc=desc, sizes=sizes)


def concat_blocks(parts: list, empty_images: tuple, empty_masks: tuple) -> tuple[np.ndarray, np.ndarray, list]:
    """Join the (images, masks, metadata list) results of generator blocks: images and masks concatenated
    along the first axis (uint8 arrays of shape ``empty_images`` / ``empty_masks`` when there are none) and
    the metadata lists chained."""
    images = np.concatenate([p[0] for p in parts]) if parts else np.zeros(empty_images, np.uint8)
    masks = np.concatenate([p[1] for p in parts]) if parts else np.zeros(empty_masks, np.uint8)
    return images, masks, [m for p in parts for m in p[2]]


def cached_scenes(name: str, split: str, num_images: int | None, seed: int, splits, image_size: int, version: str,
                  generate, workers: int = 1, progress: bool = True,
                  cache_dir=None) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of ``num_images`` generated scenes of ``split`` (None: the split's size, ``splits[split][1]``),
    from the cache ``<name>-<split>`` (``tasks.scenes.cache``, keyed by the generator's ``version`` and
    ``RENDER_VERSION``) or built by ``generate(n, seed, split, workers=, progress=)``; meta is the SceneData's
    {"source": "<name>-generated", "split", "seed", "version"}."""
    from .cache import cached

    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
    n = splits[split][1] if num_images is None else int(num_images)
    params = {"split": split, "num_images": n, "seed": seed, "image_size": image_size}
    arrays = cached(f"{name}-{split}", params, f"{version}+render{RENDER_VERSION}",
                    lambda: generate(n, seed, split, workers=workers, progress=progress), cache_dir)
    return arrays, {"source": f"{name}-generated", "split": split, "seed": seed, "version": version}
