"""Image I/O and geometry: the one bridge between files, SimpleITK and numpy.

A :class:`Volume` is a numpy array with the physical geometry that places it
in the patient (spacing, origin, direction, in ITK's LPS convention). Arrays
are indexed like SimpleITK's ``GetArrayFromImage`` and Slicer's
``arrayFromVolume``: ``(K, J, I)`` = ``(z, y, x)`` for 3D and ``(y, x)`` for
2D, while spacing, origin and index tuples are in ``(x, y[, z])`` order.

Readers handle NIfTI, NRRD, MetaImage, PNG/JPEG/TIFF slices and DICOM series
folders; writers handle the same and always write to a temporary file that is
renamed into place, so a failed write never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_output
from .errors import InputError

# Single-file formats that SimpleITK writes; ".mhd"/".nhdr" split header and
# data into two files, which cannot be renamed into place atomically.
WRITABLE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
READABLE_EXTENSIONS = WRITABLE_EXTENSIONS + (".mhd", ".nhdr", ".dcm", ".bmp")
SLICE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Refuse images whose array would not fit comfortably in memory on a 24 GB machine.
MAX_VOXELS = 2_000_000_000


def extension(path) -> str:
    """Lower-case file extension, treating ``.nii.gz`` as one extension."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


@dataclass
class Volume:
    """An image array with its physical geometry (LPS millimetres).

    Attributes:
        array: ``(z, y, x)`` for 3D or ``(y, x)`` for 2D; a trailing channel
            axis only for colour images read with ``color="keep"``.
        spacing: voxel size in mm, ``(x, y[, z])``.
        origin: physical position of voxel 0 in mm (LPS), ``(x, y[, z])``.
        direction: ``(D, D)`` matrix whose columns are the directions of the
            index axes ``x, y[, z]`` in LPS.
    """

    array: np.ndarray
    spacing: tuple = None
    origin: tuple = None
    direction: np.ndarray = field(default=None)
    is_vector: bool = False

    def __post_init__(self):
        self.array = np.asarray(self.array)
        d = self.ndim
        self.spacing = tuple(float(s) for s in (self.spacing if self.spacing is not None else (1.0,) * d))
        self.origin = tuple(float(o) for o in (self.origin if self.origin is not None else (0.0,) * d))
        direction = self.direction if self.direction is not None else np.eye(d)
        self.direction = np.asarray(direction, dtype=float).reshape(d, d)
        if len(self.spacing) != d or len(self.origin) != d:
            raise InputError("geometry", f"spacing {self.spacing} and origin {self.origin} must have {d} values")

    @property
    def ndim(self) -> int:
        """Spatial dimension (2 or 3), not counting a colour channel axis."""
        return self.array.ndim - (1 if self.is_vector else 0)

    @property
    def size(self) -> tuple:
        """Grid size in ``(x, y[, z])`` order, as SimpleITK reports it."""
        return tuple(reversed(self.array.shape[: self.ndim]))

    def index_to_physical(self, index) -> np.ndarray:
        """Continuous index ``(x, y[, z])`` -> LPS point in mm."""
        index = np.asarray(index, dtype=float)
        return np.asarray(self.origin) + self.direction @ (np.asarray(self.spacing) * index)

    def physical_to_index(self, point) -> np.ndarray:
        """LPS point in mm -> continuous index ``(x, y[, z])``."""
        offset = np.asarray(point, dtype=float) - np.asarray(self.origin)
        return np.linalg.solve(self.direction, offset) / np.asarray(self.spacing)

    def with_array(self, array) -> "Volume":
        """A new volume on the same grid holding ``array``."""
        array = np.asarray(array)
        if array.shape[: self.ndim] != self.array.shape[: self.ndim]:
            raise InputError("array", f"shape {array.shape} does not match grid {self.array.shape[: self.ndim]}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), is_vector=array.ndim > self.ndim)

    def same_grid(self, other: "Volume", tol: float = 1e-4) -> bool:
        """True when both volumes share size, spacing, origin and direction."""
        return (
            self.ndim == other.ndim
            and self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array, isVector=self.is_vector)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        vector = image.GetNumberOfComponentsPerPixel() > 1
        d = image.GetDimension()
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            np.asarray(image.GetDirection()).reshape(d, d),
            is_vector=vector,
        )


def _to_grey(image: sitk.Image, name: str) -> sitk.Image:
    """One channel from a colour image: the first when all are equal, else luminance."""
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return image
    channels = [sitk.VectorIndexSelectionCast(image, c, sitk.sitkFloat32) for c in range(min(n, 3))]
    first = sitk.GetArrayViewFromImage(channels[0])
    if all(np.array_equal(first, sitk.GetArrayViewFromImage(c)) for c in channels[1:]):
        return channels[0]
    if n not in (3, 4):  # luminance is defined for RGB(A) only
        raise InputError(name, f"image has {n} channels; cannot convert to grey")
    return channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114


def _read_dicom_series(folder: Path, series_id: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(folder, "folder holds no DICOM series")
    if series_id is None:
        if len(ids) > 1:
            raise InputError(folder, f"folder holds {len(ids)} DICOM series {list(ids)}; choose one with series_id")
        series_id = ids[0]
    elif series_id not in ids:
        raise InputError(folder, f"no DICOM series {series_id!r}; found {list(ids)}")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_id))
    return reader.Execute()


def read_image(path, ndim: int | None = None, color: str = "grey", dtype=np.float32,
               series_id: str | None = None, allow_nonfinite: bool = False) -> Volume:
    """Read an image file or DICOM series folder into a :class:`Volume`.

    Args:
        path: file (NIfTI, NRRD, MHA/MHD, PNG, JPEG, TIFF, DICOM) or a folder
            holding one DICOM series.
        ndim: required spatial dimension (2 or 3). A 3D image with a single
            slice is accepted as 2D (and squeezed).
        color: ``"grey"`` reduces colour images to one channel (the first if all
            channels are equal, as in the CT/MR PNG slices, else luminance);
            ``"keep"`` keeps the channels as a trailing array axis.
        dtype: numpy dtype of the returned array (``None`` keeps the file's).
        series_id: which series when a DICOM folder holds several.
        allow_nonfinite: accept NaN/inf voxels (otherwise an error).

    Raises:
        InputError: missing or unreadable file, wrong dimensionality, empty
            image, non-finite values; the message names ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        if path.is_dir():
            image = _read_dicom_series(path, series_id)
        else:
            if path.stat().st_size == 0:
                raise InputError(path, "file is empty")
            if path.name.lower().endswith(".gz"):
                _check_gzip_complete(path)
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()  # the header alone: sizes are checked before any voxel is allocated
            _check_size(reader.GetSize(), path)
            image = reader.Execute()
    except RuntimeError as exc:  # SimpleITK reports unreadable files this way
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "Could not" in ln or "Unable" in ln),
                      "not a readable image")
        raise InputError(path, f"cannot read image ({detail.strip()[:160]})") from None
    _check_size(image.GetSize(), path)
    if image.GetDimension() not in (2, 3):
        raise InputError(path, f"expected a 2D or 3D image, got {image.GetDimension()}D of size {image.GetSize()}")
    if "complex" in image.GetPixelIDTypeAsString():
        raise InputError(path, f"complex-valued voxels ({image.GetPixelIDTypeAsString()}) are not supported")
    if color == "grey":
        image = _to_grey(image, path)
    elif color != "keep":
        raise InputError("color", f"must be 'grey' or 'keep', not {color!r}")
    if image.GetDimension() == 3 and image.GetSize()[2] == 1 and ndim == 2:
        image = image[:, :, 0]
    if ndim is not None and image.GetDimension() != ndim:
        raise InputError(path, f"expected a {ndim}D image, got {image.GetDimension()}D of size {image.GetSize()}")
    volume = Volume.from_sitk(image)
    if dtype is not None:
        volume.array = volume.array.astype(dtype, copy=False)
    if not allow_nonfinite and np.issubdtype(volume.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise InputError(path, f"image has {bad} NaN or infinite voxels")
    return volume


def _check_size(size, path) -> None:
    if any(s == 0 for s in size):
        raise InputError(path, f"image has zero size {tuple(size)}")
    if np.prod(size, dtype=np.float64) > MAX_VOXELS:
        raise InputError(path, f"image of size {tuple(size)} is too large")


def _check_gzip_complete(path: Path) -> None:
    """Read a gzip file through: SimpleITK's NIfTI reader fills a truncated stream's missing voxels with zeros."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"cannot read image (compressed file is truncated or damaged: "
                               f"{type(exc).__name__})") from None


def check_volume(volume: Volume, name: str, ndim: int | None = None) -> Volume:
    """Validate an in-memory volume the way :func:`read_image` validates files."""
    if not isinstance(volume, Volume):
        raise InputError(name, f"expected a Volume, got {type(volume).__name__}")
    if volume.array.size == 0:
        raise InputError(name, "image is empty")
    if ndim is not None and volume.ndim != ndim:
        raise InputError(name, f"expected a {ndim}D image, got {volume.ndim}D of shape {volume.array.shape}")
    if np.issubdtype(volume.array.dtype, np.floating) and not np.all(np.isfinite(volume.array)):
        raise InputError(name, "image has NaN or infinite voxels")
    return volume


def _slice_pixels(volume: Volume, path: Path) -> sitk.Image:
    """Cast to the 8-bit or 16-bit pixels that PNG/JPEG hold.

    Floats in [0, 1] map to 0..255; other floats are rescaled from their
    min..max; integers that fit 8 or 16 bits are kept.
    """
    a = volume.array
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            a = np.round(a * 255.0)
        else:
            a = np.round((a - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(a)
        a = a.astype(np.uint8)
    elif a.min() >= 0 and a.max() <= 255:
        a = a.astype(np.uint8)
    elif a.min() >= 0 and a.max() <= 65535 and extension(path) != ".jpg":
        a = a.astype(np.uint16)
    else:
        raise InputError(path, f"values {a.min()}..{a.max()} do not fit an 8/16-bit {extension(path)} file")
    return volume.with_array(a).to_sitk()


def write_image(volume: Volume, path, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` atomically (temporary file, then rename).

    The format follows the extension (see ``WRITABLE_EXTENSIONS``); a path with
    no extension or ending in ``/`` is written as a DICOM series folder.
    Returns the path written.
    """
    path = Path(path)
    ext = extension(path)
    if ext == "" or str(path).endswith(os.sep):
        return write_dicom_series(volume, path)
    if ext not in WRITABLE_EXTENSIONS:
        raise InputError(path, f"cannot write {ext!r} files; use one of {', '.join(WRITABLE_EXTENSIONS)}")
    if not path.parent.exists():
        raise InputError(path, f"folder {path.parent} does not exist")
    image = _slice_pixels(volume, path) if ext in SLICE_EXTENSIONS else volume.to_sitk()
    if ext in SLICE_EXTENSIONS and volume.ndim != 2:
        raise InputError(path, f"{ext} holds 2D slices, got a {volume.ndim}D image")
    with atomic_output(path, suffix=ext) as tmp:
        sitk.WriteImage(image, tmp, compress and ext not in SLICE_EXTENSIONS)
    return path


def write_dicom_series(volume: Volume, folder) -> Path:
    """Write a 3D (or 2D) volume as a DICOM series of int16 slices in ``folder``.

    The folder is built beside its final place and renamed into it, so an
    interrupted write leaves no partial series; an existing folder is refused.
    """
    folder = Path(folder)
    if folder.exists():
        raise InputError(folder, "DICOM output folder already exists")
    if not folder.parent.exists():
        raise InputError(folder, f"folder {folder.parent} does not exist")
    v = volume if volume.ndim == 3 else Volume(volume.array[None], volume.spacing + (1.0,), volume.origin + (0.0,),
                                               np.pad(volume.direction, ((0, 1), (0, 1))) + np.diag([0, 0, 1.0]))
    image = v.to_sitk()
    image = sitk.Cast(sitk.Round(image) if np.issubdtype(v.array.dtype, np.floating) else image, sitk.sitkInt16)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        direction = v.direction
        uid = "1.2.826.0.1.3680043.2.1125." + str(abs(hash((v.size, v.origin))) % 10**12)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(image.GetDepth()):
            s = image[:, :, k]
            position = v.index_to_physical((0, 0, k))
            tags = {
                "0008|0060": "OT",
                "0020|000e": uid,
                "0020|000d": uid + ".1",
                "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{p:.6f}" for p in position),
                "0020|0037": "\\".join(f"{c:.6f}" for c in np.concatenate([direction[:, 0], direction[:, 1]])),
                "0018|0050": f"{v.spacing[2]:.6f}",
                "0028|0030": f"{v.spacing[1]:.6f}\\{v.spacing[0]:.6f}",
            }
            for tag, value in tags.items():
                s.SetMetaData(tag, value)
            writer.SetFileName(str(tmp / f"slice_{k:04d}.dcm"))
            writer.Execute(s)
        os.replace(tmp, folder)
    except BaseException:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
        raise
    return folder


def normalise_intensity(array, lower: float = 1.0, upper: float = 99.0, mask=None) -> np.ndarray:
    """Map intensities to [0, 1] by robust percentiles, clipping outside.

    ``lower``/``upper`` are percentiles of the voxels (inside ``mask`` if
    given); a constant image maps to zeros rather than NaN.
    """
    a = np.asarray(array, dtype=np.float32)
    values = a[mask] if mask is not None else a
    if values.size == 0:
        raise InputError("mask", "mask selects no voxels")
    lo, hi = np.percentile(values, [lower, upper])
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resample_to(volume: Volume, reference: Volume, transform: sitk.Transform | None = None,
                interpolation: str = "linear", default: float = 0.0) -> Volume:
    """Resample ``volume`` onto the grid of ``reference``.

    ``transform`` maps reference (fixed) physical points to ``volume``
    (moving) points, as SimpleITK registration returns it. ``interpolation``
    is ``"linear"``, ``"nearest"`` (use for label maps) or ``"bspline"``.
    """
    methods = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
    if interpolation not in methods:
        raise InputError("interpolation", f"must be one of {list(methods)}")
    if volume.ndim != reference.ndim:
        raise InputError("volume", f"{volume.ndim}D image cannot be resampled onto a {reference.ndim}D grid")
    transform = transform or sitk.Transform(volume.ndim, sitk.sitkIdentity)
    out = sitk.Resample(volume.to_sitk(), reference.to_sitk(), transform, methods[interpolation], float(default),
                        sitk.sitkUnknown)
    result = Volume.from_sitk(out)
    result.array = result.array.astype(volume.array.dtype, copy=False)
    return result


def physical_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box (min corner, max corner) of the voxels' extent."""
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in volume.size], indexing="ij")).reshape(volume.ndim, -1).T
    points = np.array([volume.index_to_physical(c) for c in corners])
    return points.min(0), points.max(0)


def check_overlap(a: Volume, b: Volume, name_a: str = "fixed", name_b: str = "moving") -> float:
    """Fraction of ``a``'s bounding box that ``b``'s covers; error when zero."""
    lo_a, hi_a = physical_bounds(a)
    lo_b, hi_b = physical_bounds(b)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None)
    extent = np.maximum(hi_a - lo_a, 1e-6)
    frac = float(np.prod(np.minimum(inter / extent, 1.0)))
    if frac == 0.0:
        raise InputError(f"{name_a}/{name_b}", "the two images do not overlap in physical space")
    return frac
