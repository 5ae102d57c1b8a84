"""Affine and rigid registration by Mattes mutual information (SimpleITK).

Used to align the paired CT/MR slices before patches are cut from them, and
as the pre-alignment step before deformable registration. One code path for
2D and 3D: the transform type follows the images' dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .image_io import Volume, check_overlap, check_volume, resample_to


@dataclass
class AffineResult:
    """Outcome of :func:`register_affine`.

    Attributes:
        transform: maps fixed physical points (LPS mm) to moving points, the
            direction SimpleITK's resampler needs.
        warped: the moving image resampled onto the fixed grid.
        metric_before: Mattes MI metric value after initialisation (lower is better).
        metric_after: Mattes MI metric value at the end.
        stop_reason: the optimiser's reason for stopping.
    """

    transform: sitk.Transform
    warped: Volume
    metric_before: float
    metric_after: float
    stop_reason: str


def _transform(kind: str, dim: int) -> sitk.Transform:
    if kind == "rigid":
        return sitk.Euler2DTransform() if dim == 2 else sitk.Euler3DTransform()
    if kind == "similarity":
        return sitk.Similarity2DTransform() if dim == 2 else sitk.Similarity3DTransform()
    if kind == "affine":
        return sitk.AffineTransform(dim)
    raise InputError("kind", f"must be 'rigid', 'similarity' or 'affine', not {kind!r}")


def register_affine(fixed: Volume, moving: Volume, kind: str = "affine", bins: int = 32,
                    sampling: float = 0.1, shrink=(4, 2, 1), iterations: int = 100,
                    initialise: str = "moments", seed: int = 1) -> AffineResult:
    """Register ``moving`` to ``fixed`` by Mattes MI, multi-resolution.

    Args:
        fixed, moving: volumes of the same dimension (2D or 3D), any grids.
        kind: ``"rigid"``, ``"similarity"`` or ``"affine"``; affine is first
            initialised by a rigid stage, which makes it robust for CT/MR.
        bins: histogram bins of Mattes MI.
        sampling: fraction of fixed voxels sampled per iteration (fixed seed).
        shrink: shrink factors of the resolution pyramid, coarse to fine.
        iterations: maximum optimiser iterations per level.
        initialise: ``"moments"`` (centres of mass) or ``"geometry"`` (centres).
    """
    check_volume(fixed, "fixed")
    check_volume(moving, "moving")
    if fixed.ndim != moving.ndim:
        raise InputError("moving", f"is {moving.ndim}D but fixed is {fixed.ndim}D")
    for name, v in (("fixed", fixed), ("moving", moving)):
        if float(np.ptp(v.array)) == 0.0:
            raise InputError(name, "image is constant; nothing to register")
    check_overlap(fixed, moving)
    # One thread: multithreaded metric sums change with scheduling and the optimiser can then end
    # in another optimum (scales 10% apart seen on a CT/MR slice); one thread is reproducible and
    # costs about 2x (1.5 -> 2.8 s per 512 x 512 slice). The metric's threads follow the global default.
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return _register(fixed, moving, kind, bins, sampling, shrink, iterations, initialise, seed)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _register(fixed, moving, kind, bins, sampling, shrink, iterations, initialise, seed) -> AffineResult:
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    mode = {"moments": sitk.CenteredTransformInitializerFilter.MOMENTS,
            "geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY}
    if initialise not in mode:
        raise InputError("initialise", f"must be 'moments' or 'geometry', not {initialise!r}")
    shrink = tuple(int(s) for s in shrink)
    smallest = min(fixed.size)
    shrink = tuple(s for s in shrink if smallest // s >= 16) or (1,)
    transform = sitk.CenteredTransformInitializer(f, m, _transform("rigid", fixed.ndim), mode[initialise])
    stages = ["rigid"] if kind == "rigid" else ["rigid", kind]
    before = after = None
    reason = ""
    for stage in stages:
        if stage != "rigid":
            nxt = _transform(stage, fixed.ndim)
            nxt.SetCenter(transform.GetCenter())
            nxt.SetMatrix(transform.GetMatrix()) if hasattr(nxt, "SetMatrix") else None
            nxt.SetTranslation(transform.GetTranslation())
            transform = nxt
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, seed)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                     numberOfIterations=iterations,
                                                     relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(shrink))
        reg.SetSmoothingSigmasPerLevel([max(s - 1, 0) for s in shrink])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(transform, inPlace=True)
        if before is None:
            before = reg.MetricEvaluate(f, m)
        reg.Execute(f, m)
        reason = reg.GetOptimizerStopConditionDescription()
        after = reg.MetricEvaluate(f, m)
    warped = resample_to(moving, fixed, transform)
    return AffineResult(transform, warped, float(before), float(after), reason)
