"""Digital head phantom: a matching CT and T1-like MR of one synthetic head.

Demos and tests need a CT/MR pair of the same anatomy with known labels and,
optionally, a known misalignment; this module renders one from ellipsoids, so
nothing depends on real data. The anatomy is fixed, in millimetres in an LPS
head frame centred on the head (x to the patient's left, y posterior, z
superior); a 2D phantom is the axial plane ``z = EYE_LEVEL_MM`` of the 3D head,
chosen so the eyes, the sinus between them, the ventricles and the skull ring
all show. 2D and 3D share one code path: 2D is a 3D grid one sample thick.

Partial volume comes from rendering at ``SUPERSAMPLE`` times the resolution,
averaging back down, then a Gaussian point-spread function. The ``seed`` only
drives noise and the MR bias field, so the label map never depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError
from .image_io import Volume

# name: (label, CT in Hounsfield units, T1-like MR signal on a 0..~1000 scale)
TISSUES = {
    "background": (0, -1000.0, 0.0),
    "scalp": (1, -60.0, 850.0),  # skin and fat (also orbital fat, soft tissue below the skull base)
    "skull": (2, 1400.0, 40.0),  # cortical bone: outer and inner tables
    "diploe": (3, 600.0, 450.0),  # marrow between the tables: fatty, so moderately bright on T1
    "csf": (4, 5.0, 120.0),
    "grey_matter": (5, 40.0, 520.0),
    "white_matter": (6, 25.0, 720.0),
    "ventricles": (7, 5.0, 120.0),
    "sinus": (8, -1000.0, 0.0),  # air inside bone
    "eye": (9, 10.0, 150.0),  # vitreous
    "lens": (10, 100.0, 450.0),
}
LABELS = {name: t[0] for name, t in TISSUES.items()}
_CT = np.array([t[1] for t in TISSUES.values()], np.float32)  # indexed by label value
_MR = np.array([t[2] for t in TISSUES.values()], np.float32)
_INTRACRANIAL = [LABELS[n] for n in ("csf", "grey_matter", "white_matter")]

SKULL_MM = (70.0, 89.0, 97.0)  # outer-table semi-axes (x, y, z); every layer scales from it
EYE_LEVEL_MM = -20.0  # z of the 2D slice: eyes, sinus and lower ventricles in one plane
SUPERSAMPLE = 2
# Noise is relative to these: CT noise is set against soft-tissue contrast (0.02 -> 5 HU,
# so grey/white matter stay distinguishable), MR noise against its full scale.
CT_NOISE_HU, MR_NOISE = 250.0, 1000.0
MAX_VOXELS = 2**24  # 256^3: the supersampled intensities then take 0.5 GB


@dataclass
class HeadPhantom:
    """A rendered phantom; all three volumes share one grid.

    Attributes:
        ct: float32 Hounsfield-like image, ``(y, x)`` or ``(z, y, x)``.
        mr: float32 T1-like image on the same grid (moved by ``transform``
            when ``misalign`` was given; labels then follow the CT).
        labels: uint8 label map of the CT anatomy, values from ``label_names``.
        label_names: name -> label value (a copy of ``LABELS``).
        transform: rigid SimpleITK transform mapping CT (fixed) physical points
            to the MR (moving) points of the same anatomy: what registering
            the MR to the CT should recover; identity when not misaligned.
    """

    ct: Volume
    mr: Volume
    labels: Volume
    label_names: dict
    transform: sitk.Transform


def _paint(lab, axes, value, centre, semi, where=None, angle=0.0):
    """Set ``lab`` to ``value`` inside an ellipsoid, only where it holds a label in ``where``.

    ``centre``/``semi`` are mm in (x, y, z); ``angle`` (radians) turns the
    ellipsoid about z. Only the bounding box is evaluated, which keeps small
    shapes cheap on large grids.
    """
    r = (max(semi[:2]),) * 2 if angle else semi[:2]
    box = tuple(slice(np.searchsorted(a, c - h), np.searchsorted(a, c + h, side="right"))
                for a, c, h in zip(axes, centre[::-1], (semi[2],) + r[::-1]))
    z, y, x = (a[s] for a, s in zip(axes, box))
    dx, dy, dz = x[None, None, :] - centre[0], y[None, :, None] - centre[1], z[:, None, None] - centre[2]
    if angle:
        dx, dy = np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy
    inside = (dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2 < 1.0
    sub = lab[box]  # a view: assignments land in lab
    if where is not None:
        inside &= np.isin(sub, where)
    sub[inside] = value


def _render(axes) -> np.ndarray:
    """Label map sampled at the grid of ``axes`` = (z, y, x) 1D mm coordinates -> (nz, ny, nx) uint8."""
    z, y, x = (np.asarray(a, np.float32) for a in axes)
    qx, qy, qz = x[None, None, :] / SKULL_MM[0], y[None, :, None] / SKULL_MM[1], z[:, None, None] / SKULL_MM[2]
    rho = np.sqrt(qx * qx + qy * qy + qz * qz)  # 1 on the outer table
    inv = 1.0 / np.maximum(rho, 1e-6)
    dx, dy, dz = qx * inv, qy * inv, qz * inv  # direction from the centre
    # Skull thickness (in rho units) varies: thin temporal bone, thick frontal/occipital, lumpy.
    t = 0.09 + 0.025 * (dy * dy - dx * dx) + 0.01 * dz + 0.008 * np.sin(11 * dx + 7 * dy + 5 * dz)
    brain = 1.0 - t - 0.03  # CSF rim about 2.5 mm
    # Grey matter 2..7 mm thick; its wavy inner edge and CSF-filled sulci stand for gyri.
    gyri = np.sin(23 * dx + 3 * dy) * np.sin(19 * dy - 4 * dz) + 0.5 * np.sin(17 * dz + 5 * dx)
    gyri = np.clip(gyri, -1.0, 1.0)
    sulci = brain - 0.05 * np.maximum(gyri - 0.3, 0.0)
    lab = np.zeros(rho.shape, np.uint8)
    for bound, name in [(1.07, "scalp"), (1.0, "skull"), (1.0 - 0.3 * t, "diploe"), (1.0 - 0.7 * t, "skull"),
                        (1.0 - t, "csf"), (sulci, "grey_matter"), (brain - 0.06 - 0.035 * gyri, "white_matter")]:
        lab[rho < bound] = LABELS[name]
    brainy = [LABELS["grey_matter"], LABELS["white_matter"]]
    # Interhemispheric fissure in front of and behind the corpus callosum.
    _paint(lab, axes, LABELS["csf"], (0.0, -90.0, 10.0), (1.2, 62.0, 90.0), brainy)
    _paint(lab, axes, LABELS["csf"], (0.0, 95.0, 10.0), (1.2, 60.0, 90.0), brainy)
    for side in (-1.0, 1.0):  # deep grey nuclei, and lateral ventricles diverging towards the back
        _paint(lab, axes, LABELS["grey_matter"], (24.0 * side, 8.0, -12.0), (9.0, 17.0, 14.0), angle=0.3 * side)
        _paint(lab, axes, LABELS["ventricles"], (11.0 * side, 4.0, -8.0), (7.0, 30.0, 26.0), angle=-0.25 * side)
    # Skull base below the orbits; under it the "intracranial" layers are face and neck soft tissue.
    zs = axes[0]
    for z0, z1, name in [(-50.0, -44.0, "skull"), (-np.inf, -50.0, "scalp")]:
        sub = lab[np.searchsorted(zs, z0):np.searchsorted(zs, z1)]
        sub[np.isin(sub, _INTRACRANIAL + [LABELS["ventricles"]])] = LABELS[name]
    for side in (-1.0, 1.0):  # orbits: bony wall, fat, globe, lens
        eye = (32.0 * side, -68.0, EYE_LEVEL_MM)
        orbit = (eye[0], eye[1] + 3.0, eye[2])
        _paint(lab, axes, LABELS["skull"], orbit, (20.0,) * 3, _INTRACRANIAL + [LABELS["diploe"]])
        _paint(lab, axes, LABELS["scalp"], orbit, (16.0,) * 3, list(range(1, len(LABELS))))
        _paint(lab, axes, LABELS["eye"], eye, (12.0,) * 3)
        _paint(lab, axes, LABELS["lens"], (eye[0], eye[1] - 9.0, eye[2]), (4.5, 2.0, 4.5))
    # Air sinuses in bone: frontal/ethmoid between the eyes, maxillary below the skull base.
    for centre, semi in [((0.0, -70.0, -14.0), (9.0, 9.0, 14.0)),
                         ((-25.0, -40.0, -66.0), (11.0, 14.0, 13.0)), ((25.0, -40.0, -66.0), (11.0, 14.0, 13.0))]:
        _paint(lab, axes, LABELS["skull"], centre, tuple(s + 4.0 for s in semi), list(range(1, len(LABELS))))
        _paint(lab, axes, LABELS["sinus"], centre, semi)
    return lab


def _check_number(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or not lo <= value <= hi:
        raise InputError(name, f"must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def _rigid(misalign, ndim) -> sitk.Transform:
    """Parse ``misalign`` into a rigid transform about the head centre (the physical origin)."""
    if misalign is None:
        misalign = {}
    if isinstance(misalign, (tuple, list)) and len(misalign) == 2:
        misalign = {"rotation": misalign[0], "translation": misalign[1]}
    if not isinstance(misalign, dict) or set(misalign) - {"rotation", "translation"}:
        raise InputError("misalign", f"must be None, (rotation, translation) or a dict of those, got {misalign!r}")
    try:
        rot = np.atleast_1d(np.asarray(misalign.get("rotation", 0.0), float))
        shift = np.atleast_1d(np.asarray(misalign.get("translation", (0.0,) * ndim), float))
    except (TypeError, ValueError):
        raise InputError("misalign", f"rotation and translation must be numbers, got {misalign!r}") from None
    if rot.ndim != 1 or rot.size not in ((1,) if ndim == 2 else (1, 3)) or shift.shape != (ndim,) \
            or not np.all(np.isfinite(rot)) or not np.all(np.isfinite(shift)) or np.any(np.abs(rot) > 180):
        angles = "one angle" if ndim == 2 else "one angle about z or three about x, y, z"
        raise InputError("misalign", f"{ndim}D needs rotation in degrees ({angles}, |angle| <= 180) "
                         f"and {ndim} finite translation values in mm, got {misalign!r}")
    rot = np.radians(rot)
    if ndim == 2:
        return sitk.Euler2DTransform((0.0, 0.0), float(rot[0]), tuple(shift))
    rx, ry, rz = (0.0, 0.0, rot[0]) if rot.size == 1 else rot
    return sitk.Euler3DTransform((0.0, 0.0, 0.0), float(rx), float(ry), float(rz), tuple(shift))


def make_head_phantom(shape=(256, 256), spacing=None, seed=0, noise=0.02, blur=1.0, bias=0.1,
                      misalign=None) -> HeadPhantom:
    """Render a CT, a T1-like MR and the label map of one synthetic head.

    Args:
        shape: array shape, ``(H, W)`` for an axial slice at eye level or
            ``(D, H, W)`` for the whole head; each at least 32.
        spacing: voxel size in mm in ``(x, y[, z])`` order. Default: a 256 mm
            field of view in-plane (1 mm at 256) and slices twice as thick.
            The head (about 150 x 190 x 210 mm) is centred on the grid.
        seed: non-negative int for ``np.random.default_rng``; same seed,
            bit-identical output.
        noise: relative noise standard deviation: Gaussian on CT in units of
            250 HU (0.02 is 5 HU), Rician on MR in units of 1000 (0.02 is 20);
            0 for clean images.
        blur: full width at half maximum of the Gaussian point-spread
            function, in voxels; 0 leaves only the supersampling partial volume.
        bias: amplitude of the smooth multiplicative MR bias field (0.1: the
            field spans 0.90..1.11).
        misalign: ``None`` (MR voxel-aligned with CT), or ``{"rotation": deg,
            "translation": (mm, ...)}`` / ``(rotation, translation)``: a rigid
            motion of the MR anatomy about the head centre. Rotation is one
            angle (about z) or, in 3D, three angles about x, y, z (ITK Euler).

    Returns:
        HeadPhantom with ``ct``, ``mr`` (float32) and ``labels`` (uint8) of
        array shape ``shape``, identical geometry, and the ground-truth transform.

    Raises:
        InputError: naming the first bad parameter.
    """
    if not isinstance(shape, (tuple, list)) or len(shape) not in (2, 3) \
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in shape):
        raise InputError("shape", f"must be 2 or 3 integers, (H, W) or (D, H, W), got {shape!r}")
    if min(shape) < 32 or np.prod(shape, dtype=np.int64) > MAX_VOXELS:
        raise InputError("shape", f"each size must be >= 32 and at most {MAX_VOXELS} voxels in all, got {tuple(shape)}")
    ndim, size = len(shape), tuple(int(n) for n in reversed(shape))  # size is (x, y[, z])
    if spacing is None:
        s = 256.0 / max(size[:2])
        spacing = (s, s, 2 * s)[:ndim]
    if not isinstance(spacing, (tuple, list, np.ndarray)) or len(spacing) != ndim:
        raise InputError("spacing", f"must be {ndim} numbers (x, y{', z' if ndim == 3 else ''}) in mm, got {spacing!r}")
    spacing = tuple(_check_number("spacing", s, 1e-3, 1e3) for s in spacing)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed!r}")
    noise, blur = _check_number("noise", noise, 0, 1), _check_number("blur", blur, 0, 10)
    bias = _check_number("bias", bias, 0, 1)
    transform = _rigid(misalign, ndim)
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(size, spacing))  # grid centre on the head centre

    def axes(f):  # (z, y, x) sample coordinates, f per voxel at offsets symmetric about its centre
        ax = [o + ((np.arange(n * f) + 0.5) / f - 0.5) * s for n, s, o in zip(size, spacing, origin)][::-1]
        return ([np.array([EYE_LEVEL_MM])] if ndim == 2 else []) + ax

    def render(f):  # in slabs of ~4M samples, which bounds the temporaries' memory
        z, y, x = axes(f)
        step = max(1, 2**22 // (y.size * x.size))
        return np.concatenate([_render((z[i:i + step], y, x)) for i in range(0, z.size, step)])

    labels = render(1).reshape(shape)
    fine = render(SUPERSAMPLE).reshape(tuple(n * SUPERSAMPLE for n in shape))
    blocks = tuple(v for n in shape for v in (n, SUPERSAMPLE))

    def image(lut):  # partial volume: mean over each voxel's subsamples, then the PSF
        a = lut[fine].reshape(blocks).mean(axis=tuple(range(1, 2 * ndim, 2)), dtype=np.float32)
        return ndimage.gaussian_filter(a, blur / 2.3548, mode="nearest") if blur > 0 else a

    geometry = dict(spacing=spacing, origin=origin)
    ct, mr = image(_CT), image(_MR)
    if misalign is not None:  # MR(q) = anatomy(T^-1 q): resample through the inverse
        grid = Volume(mr, **geometry).to_sitk()
        mr = sitk.GetArrayFromImage(sitk.Resample(grid, grid, transform.GetInverse(), sitk.sitkLinear, 0.0))
    rng = np.random.default_rng(seed)
    if bias > 0:  # smooth random quadratic log-field, scaled so its extremes are +-bias
        u = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
        terms = [ui for ui in u] + [u[i] * u[j] for i in range(ndim) for j in range(i, ndim)]
        field = sum(c * b for c, b in zip(rng.uniform(-1.0, 1.0, len(terms)), terms)) + np.zeros(shape, np.float32)
        mr = mr * np.exp(bias * field / max(float(np.abs(field).max()), 1e-6)).astype(np.float32)
    gauss = [np.float32(noise) * rng.standard_normal(shape, dtype=np.float32) for _ in range(3)]
    ct = ct + CT_NOISE_HU * gauss[0]
    mr = np.hypot(mr + MR_NOISE * gauss[1], MR_NOISE * gauss[2])  # Rician: magnitude of complex Gaussian noise
    return HeadPhantom(ct=Volume(ct.astype(np.float32), **geometry), mr=Volume(mr.astype(np.float32), **geometry),
                       labels=Volume(labels, **geometry), label_names=dict(LABELS), transform=transform)
