"""The classical reference: SimpleITK B-spline registration with Mattes mutual information."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..image_io import Volume


def register_bspline(fixed: Volume, moving: Volume, mesh: int = 8, iterations: int = 50, bins: int = 32,
                     shrink=(4, 2, 1), seed: int = 1) -> sitk.Transform:
    """B-spline transform (``mesh`` control cells per axis) mapping fixed points to moving points.

    Multi-resolution (``shrink``), L-BFGS-B, Mattes MI on 20% of the fixed voxels; one thread,
    so that repeated runs agree and timings compare with the single-threaded networks.
    """
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    transform = sitk.BSplineTransformInitializer(f, [mesh] * fixed.ndim)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations,
                             maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([max(s - 1, 0) for s in shrink])
    reg.SetInitialTransform(transform, inPlace=True)
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
