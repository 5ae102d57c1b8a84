"""The classical reference: SimpleITK B-spline registration with Mattes mutual information."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..image_io import Volume


def register_bspline(fixed: Volume, moving: Volume, mesh: int = 8, iterations: int = 50, bins: int = 32,
                     shrink=(4, 2, 1), seed: int = 1, mesh_refine=None) -> sitk.Transform:
    """B-spline transform (``mesh`` control cells per axis) mapping fixed points to moving points.

    Multi-resolution (``shrink``), L-BFGS-B, Mattes MI on 20% of the fixed voxels; one thread,
    so that repeated runs agree and timings compare with the single-threaded networks.
    ``mesh_refine``: one factor per level (e.g. ``(1, 2, 4)``) by which the mesh grows from level to level,
    coarse control grids for the coarse images; then the optimiser is gradient descent with a line search and
    scales from physical shifts, since SimpleITK's L-BFGS-B cannot follow a parameter count that changes.
    """
    if mesh_refine is not None and len(mesh_refine) != len(shrink):
        raise InputError("mesh_refine", f"needs one factor per level of shrink {tuple(shrink)}, got {mesh_refine}")
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    transform = sitk.BSplineTransformInitializer(f, [mesh] * fixed.ndim)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([max(s - 1, 0) for s in shrink])
    if mesh_refine is None:
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations,
                                 maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000)
        reg.SetInitialTransform(transform, inPlace=True)
    else:
        # Each step's base length: half the finest voxel. Without a cap, the noisy MI of a coarse level's few
        # random samples threw a 2D test's control points ~100 px away.
        reg.SetOptimizerAsGradientDescentLineSearch(5.0, iterations, convergenceMinimumValue=1e-4,
                                                    convergenceWindowSize=5, estimateLearningRate=reg.EachIteration,
                                                    maximumStepSizeInPhysicalUnits=0.5 * min(fixed.spacing))
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransformAsBSpline(transform, inPlace=True, scaleFactors=[int(f) for f in mesh_refine])
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        reg.Execute(f, m)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return transform


def transform_to_displacement(transform: sitk.Transform, reference: Volume) -> np.ndarray:
    """Displacement of ``transform`` on the reference grid, ``(dims, ...)`` in voxels per array axis.

    Assumes an axis-aligned reference (as the brain slices are): physical mm divided by spacing.
    """
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.size, reference.origin,
                                              reference.spacing, tuple(reference.direction.ravel()))
    u = sitk.GetArrayFromImage(field)  # (..., dims) in physical (x, y[, z]) order
    u = u / np.asarray(reference.spacing)
    return np.moveaxis(u[..., ::-1], -1, 0)  # -> (dims, ...) in array axis order
