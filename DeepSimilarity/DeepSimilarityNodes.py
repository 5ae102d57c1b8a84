"""The one bridge between MRML nodes and DeepSimilarityLib volumes.

The library works on :class:`~DeepSimilarityLib.image_io.Volume` objects:
``(z, y, x)`` arrays with LPS geometry (ITK's convention). Slicer nodes hold
``(k, j, i)`` voxel arrays placed by an IJK-to-RAS matrix. The two world
frames differ by the sign of x and y, ``LPS = diag(-1, -1, 1) RAS``, applied
to points, vectors and direction columns alike.

Slicer volumes are always 3D. A node one voxel thick whose slice is axial
(the third index axis along z, the first two in the x-y plane) becomes a 2D
Volume, since the 2D networks and heat maps want ``(y, x)`` arrays; going
back, a 2D Volume is placed on the slice of a reference node.

This file needs Slicer (or the ``slicer-core`` package) but no Qt; the
library itself never imports Slicer.
"""

import numpy as np
import vtk

import slicer
from DeepSimilarityLib.image_io import Volume

# RAS <-> LPS: its own inverse.
FLIP = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras(node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as an array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def geometry_lps(node) -> tuple:
    """``(spacing, origin, direction)`` of a volume node in LPS, each for the axes ``(i, j, k)``."""
    matrix = ijk_to_ras(node)
    linear = FLIP @ matrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return spacing, FLIP @ matrix[:3, 3], linear / spacing


def _is_axial_slice(shape, direction, tol=1e-6) -> bool:
    return shape[0] == 1 and np.all(np.abs(direction[2, :2]) < tol) and np.all(np.abs(direction[:2, 2]) < tol)


def volume_from_node(volumeNode, name: str = "volume") -> Volume:
    """A Volume (LPS) holding a copy of a scalar volume node's voxels.

    One-slice axial nodes give 2D Volumes ``(y, x)``; others 3D ``(z, y, x)``.
    Raises ValueError naming ``name`` when the node is missing or has no voxels.
    """
    if volumeNode is None:
        raise ValueError(f"{name}: no volume selected")
    if volumeNode.GetImageData() is None:
        raise ValueError(f"{name}: node {volumeNode.GetName()!r} holds no image")
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    spacing, origin, direction = geometry_lps(volumeNode)
    if array.ndim == 3 and _is_axial_slice(array.shape, direction):
        return Volume(array[0], spacing[:2], origin[:2], direction[:2, :2])
    return Volume(array, spacing, origin, direction)


def _lift(volume: Volume, reference=None) -> tuple:
    """3D ``(array, spacing, origin, direction)`` of a Volume; a 2D one on ``reference``'s slice."""
    if volume.ndim == 3:
        return volume.array, np.asarray(volume.spacing), np.asarray(volume.origin), volume.direction
    array = volume.array[None]  # (1, y, x[, c])
    z_spacing, z_origin, z_direction = 1.0, 0.0, 1.0
    if reference is not None:
        ref_spacing, ref_origin, ref_direction = geometry_lps(reference)
        z_spacing, z_origin, z_direction = ref_spacing[2], ref_origin[2], np.sign(ref_direction[2, 2]) or 1.0
    direction = np.eye(3)
    direction[:2, :2] = volume.direction
    direction[2, 2] = z_direction
    return (array, np.array([*volume.spacing, z_spacing]), np.array([*volume.origin, z_origin]), direction)


def update_node_from_volume(volume: Volume, node, reference=None):
    """Put a Volume's voxels and geometry into ``node`` (a volume node); returns the node.

    A 2D Volume is placed on the slice of ``reference`` (a volume node), or at z = 0.
    """
    array, spacing, origin, direction = _lift(volume, reference)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    matrix = np.eye(4)
    matrix[:3, :3] = FLIP @ (direction * spacing)
    matrix[:3, 3] = FLIP @ origin
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    node.Modified()
    return node


def ras_from_index(node, index) -> np.ndarray:
    """RAS point of a voxel index ``(i, j[, k])`` of ``node`` (k = 0 when only two are given)."""
    ijk = np.zeros(4)
    ijk[: len(index)] = index
    ijk[3] = 1.0
    return (ijk_to_ras(node) @ ijk)[:3]


def index_from_ras(node, point_ras) -> np.ndarray:
    """Continuous voxel index ``(i, j, k)`` of a RAS point in ``node``."""
    return np.linalg.solve(ijk_to_ras(node), np.array([*point_ras, 1.0]))[:3]


def grid_transform_from_field(field: Volume, transformNode, reference=None):
    """Fill a ``vtkMRMLGridTransformNode`` from a displacement-field Volume; returns the node.

    ``field``: the library's convention (``registration.apply``): array ``(..., dims)``
    of LPS millimetre vectors ``T(p) - p`` on the fixed grid, ``T`` mapping fixed points to
    moving points - ITK's *resampling* direction. Slicer calls that direction the
    transform *from parent* (world = fixed frame -> the moving image's local frame), which is
    also how Slicer stores an ITK displacement field read from a file. So the grid is set with
    ``SetAndObserveTransformFromParent``; a moving volume placed under this node is then shown
    aligned with the fixed one (Slicer inverts it to display). Vectors are converted to RAS
    (x, y negated); a 2D field is placed on ``reference``'s slice with zero z displacement.
    """
    if not field.is_vector or field.array.shape[-1] != field.ndim:
        raise ValueError(f"displacement field: expected an array (..., {field.ndim}), got {field.array.shape}")
    vectors = field.array
    if field.ndim == 2:
        vectors = np.concatenate([vectors, np.zeros(vectors.shape[:-1] + (1,))], axis=-1)
    geometry = Volume(field.array[..., 0], field.spacing, field.origin, field.direction)
    _, spacing, origin, direction = _lift(geometry, reference)
    if vectors.ndim == 3:  # (y, x, 3) -> one slice
        vectors = vectors[None]
    vectors_ras = np.ascontiguousarray(vectors @ FLIP, dtype=np.float64)  # FLIP is diagonal: row vectors too

    image = vtk.vtkImageData()
    image.SetDimensions(vectors.shape[2], vectors.shape[1], vectors.shape[0])
    image.SetSpacing(*spacing)
    image.SetOrigin(*(FLIP @ origin))
    image.AllocateScalars(vtk.VTK_DOUBLE, 3)
    from vtk.util import numpy_support

    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(vectors_ras.reshape(-1, 3), deep=True,
                                                              array_type=vtk.VTK_DOUBLE))
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(image)
    directions = np.eye(4)
    directions[:3, :3] = FLIP @ direction  # columns: the grid axes in RAS
    grid.SetGridDirectionMatrix(slicer.util.vtkMatrixFromArray(directions))
    grid.SetInterpolationModeToLinear()
    transformNode.SetAndObserveTransformFromParent(grid)
    return transformNode
