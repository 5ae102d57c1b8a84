"""``deepsim info``, ``deepsim phantom`` and ``deepsim register``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import output_path


def register_parser(sub):
    p = sub.add_parser("info", help="print an image's size, spacing, origin, direction and value range")
    p.add_argument("image", help="image file or DICOM series folder")
    p.set_defaults(func=run_info)

    p = sub.add_parser("phantom", help="write the digital head phantom's CT, MR and labels (2D or 3D)")
    p.add_argument("--out-ct", required=True, help="CT file to write (.nii.gz, .nrrd, .mha, .png for 2D)")
    p.add_argument("--out-mr", required=True, help="MR file to write")
    p.add_argument("--out-labels", help="label map file to write")
    p.add_argument("--shape", default="256,256", help="array shape, 'H,W' or 'D,H,W' (default 256,256)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--misalign", action="store_true", help="rotate and shift the MR slightly, to test registration")
    p.set_defaults(func=run_phantom)

    p = sub.add_parser("register", help="register a moving image to a fixed image")
    p.add_argument("--fixed", required=True, help="fixed image file")
    p.add_argument("--moving", required=True, help="moving image file (same dimension as fixed)")
    p.add_argument("--method", default="affine", choices=["rigid", "similarity", "affine", "deformable"],
                   help="transform model: rigid/similarity/affine by Mattes mutual information, or deformable: "
                        "affine pre-alignment then a trained registration network (default affine)")
    p.add_argument("--net", help="deformable: registration weights (default: the shipped "
                                 "weights/registration_deepsim_seg_2d.pt, 2D brain MR)")
    p.add_argument("--pre-align", default="affine", choices=["rigid", "similarity", "affine", "none"],
                   help="deformable: affine pre-alignment model, 'none' when already aligned (default affine)")
    p.add_argument("--out-transform", help="ITK transform file to write (.tfm or .h5; deformable: .h5 displacement "
                                           "field transform, LPS, fixed -> moving; Slicer loads both)")
    p.add_argument("--out-warped", help="moving image resampled onto the fixed grid")
    p.add_argument("--out-field", help="deformable: displacement field as a vector image (.nii.gz/.nrrd/.mha), "
                                       "mm, fixed -> moving, LPS components unless --ras")
    p.add_argument("--ras", action="store_true", help="deformable: write --out-field components in RAS (Slicer's)")
    p.add_argument("--out-json", help="deformable: also write the folding fraction and the times as JSON")
    p.set_defaults(func=run_register)

    p = sub.add_parser("jacobian", help="Jacobian determinant map of a displacement field and its folding count")
    p.add_argument("field", help="displacement field: vector image (.nii.gz, .nrrd, .mha; mm) or ITK .h5 transform")
    p.add_argument("--out", help="write the determinant map (scalar image on the field's grid)")
    p.set_defaults(func=run_jacobian)


def run_info(args):
    from ..image_io import read_image

    v = read_image(args.image, dtype=None, allow_nonfinite=True)
    finite = np.isfinite(v.array) if np.issubdtype(v.array.dtype, np.floating) else np.ones(v.array.shape, bool)
    print(f"file:      {args.image}")
    print(f"dimension: {v.ndim}D, size {v.size} (x, y[, z]), dtype {v.array.dtype}")
    print(f"spacing:   {tuple(round(s, 5) for s in v.spacing)} mm")
    print(f"origin:    {tuple(round(o, 4) for o in v.origin)} mm (LPS)")
    print(f"direction: {np.round(v.direction, 5).tolist()}")
    if finite.any():
        print(f"values:    {v.array[finite].min()} .. {v.array[finite].max()}, {int((~finite).sum())} non-finite")


def run_phantom(args):
    from ..image_io import write_image
    from ..phantom import make_head_phantom

    try:
        shape = tuple(int(s) for s in args.shape.split(","))
    except ValueError:
        raise InputError("--shape", f"expected integers like 256,256 or 64,128,128, got {args.shape!r}") from None
    outputs = [output_path(args.out_ct, "--out-ct"), output_path(args.out_mr, "--out-mr")]
    if args.out_labels:
        outputs.append(output_path(args.out_labels, "--out-labels"))
    misalign = (5.0, (4.0, -3.0, 2.0)[: len(shape)]) if args.misalign else None
    phantom = make_head_phantom(shape, seed=args.seed, misalign=misalign)
    for volume, path in zip((phantom.ct, phantom.mr, phantom.labels), outputs):
        write_image(volume, path)
        print(f"wrote {path}")


def _write_transform(transform, path: Path):
    import SimpleITK as sitk

    from ..atomic import atomic_output

    with atomic_output(path, suffix=path.suffix or ".tfm") as tmp:
        sitk.WriteTransform(transform, tmp)


def run_register(args):
    from ..affine_registration import register_affine
    from ..image_io import read_image, write_image
    from ..intensity_metrics import mutual_information
    from ..image_io import resample_to

    if args.method == "deformable":
        return run_register_deformable(args)
    for name in ("net", "out_field", "out_json"):
        if getattr(args, name):
            raise InputError("--" + name.replace("_", "-"), "is used by --method deformable only")
    out_t = output_path(args.out_transform, "--out-transform") if args.out_transform else None
    out_w = output_path(args.out_warped, "--out-warped") if args.out_warped else None
    if out_t is None and out_w is None:
        raise InputError("register", "give --out-transform and/or --out-warped")
    if out_t is not None and out_t.suffix not in (".tfm", ".txt", ".h5", ".hdf5", ".mat"):
        raise InputError("--out-transform", f"use a .tfm, .txt, .h5 or .mat file, not {out_t.name}")
    fixed = read_image(args.fixed)
    moving = read_image(args.moving)
    if fixed.ndim != moving.ndim:
        raise InputError(args.moving, f"is {moving.ndim}D but the fixed image {args.fixed} is {fixed.ndim}D")
    result = register_affine(fixed, moving, kind=args.method)
    before = float(mutual_information(fixed.array.ravel(), resample_to(moving, fixed).array.ravel(), 32))
    after = float(mutual_information(fixed.array.ravel(), result.warped.array.ravel(), 32))
    print(f"{args.method} registration: mutual information {before:.4f} -> {after:.4f} "
          f"({result.stop_reason.split(':')[0]})")
    if out_t:
        _write_transform(result.transform, out_t)
        print(f"wrote {out_t} (ITK convention: maps fixed points to moving points, LPS mm)")
    if out_w:
        write_image(result.warped, out_w)
        print(f"wrote {out_w}")


def run_register_deformable(args):
    from ..image_io import read_image, write_image
    from ..paths import shipped_weights
    from ..registration.apply import register_deformable, to_sitk_transform

    out_t = output_path(args.out_transform, "--out-transform") if args.out_transform else None
    out_w = output_path(args.out_warped, "--out-warped") if args.out_warped else None
    out_f = output_path(args.out_field, "--out-field") if args.out_field else None
    out_j = output_path(args.out_json, "--out-json") if args.out_json else None
    if out_t is None and out_w is None and out_f is None:
        raise InputError("register", "give --out-transform, --out-warped and/or --out-field")
    if out_t is not None and out_t.suffix not in (".h5", ".hdf5", ".tfm", ".txt"):
        raise InputError("--out-transform", f"use a .h5 file for a displacement field transform, not {out_t.name}")
    net = args.net or shipped_weights("registration_deepsim_seg_2d.pt")

    def read(path):  # a one-slice 3D file (e.g. the OASIS 2D slices) is a 2D image for the 2D networks
        v = read_image(path)
        return read_image(path, ndim=2) if v.ndim == 3 and v.array.shape[0] == 1 else v

    fixed, moving = read(args.fixed), read(args.moving)
    if fixed.ndim != moving.ndim:
        raise InputError(args.moving, f"is {moving.ndim}D but the fixed image {args.fixed} is {fixed.ndim}D")
    result = register_deformable(fixed, moving, net, affine=None if args.pre_align == "none" else args.pre_align)
    print(f"deformable registration in {result.seconds['total']:.2f} s "
          f"(network {1000 * result.seconds['network']:.0f} ms); "
          f"folding {100 * result.folding:.3f}% of voxels")
    if out_t:
        _write_transform(to_sitk_transform(result.displacement), out_t)
        print(f"wrote {out_t} (ITK displacement field transform: fixed points -> moving points, LPS mm)")
    if out_f:
        field = result.displacement
        if args.ras:
            a = field.array.copy()
            a[..., :2] *= -1
            field = field.with_array(a)
        write_image(field, out_f)
        print(f"wrote {out_f} (displacement in mm, fixed -> moving, {'RAS' if args.ras else 'LPS'} components)")
    if out_w:
        write_image(result.warped, out_w)
        print(f"wrote {out_w}")
    if out_j:
        from .common import write_json

        write_json({"folding": result.folding, "seconds": result.seconds}, out_j)
        print(f"wrote {out_j}")


def _read_field(path):
    import SimpleITK as sitk

    from ..image_io import Volume, read_image

    path = Path(path)
    if path.suffix in (".h5", ".hdf5", ".tfm"):
        if not path.is_file():
            raise InputError(path, "file not found")
        try:
            t = sitk.ReadTransform(str(path))
            if t.GetName() == "CompositeTransform" and t.GetNumberOfTransforms() == 1:
                t = t.GetNthTransform(0)
            t = sitk.DisplacementFieldTransform(t)
            return Volume.from_sitk(t.GetDisplacementField())
        except RuntimeError:
            raise InputError(path, "not a displacement field transform") from None
    field = read_image(path, color="keep")
    if not field.is_vector:
        # read_image keeps vector components as a trailing axis only for vector images.
        raise InputError(path, "not a vector image (expected one displacement vector per voxel)")
    return field


def run_jacobian(args):
    from ..image_io import Volume, write_image
    from ..registration.evaluate import jacobian_determinant

    out = output_path(args.out, "--out") if args.out else None
    field = _read_field(args.field)
    if field.array.shape[-1] != field.ndim:
        raise InputError(args.field, f"has {field.array.shape[-1]} components on a {field.ndim}D grid")
    # (x, y[, z]) physical components -> index units along array axes (axis-aligned up to the direction).
    u = field.array.astype(np.float64) @ field.direction  # LPS -> index-axis directions, mm
    ddf = np.moveaxis(u[..., ::-1], -1, 0)
    det = jacobian_determinant(ddf, spacing=field.spacing[::-1])
    folded = int(np.count_nonzero(det <= 0))
    print(f"Jacobian determinant: min {det.min():.4f}, mean {det.mean():.4f}, max {det.max():.4f}")
    print(f"folding: {folded} of {det.size} voxels ({100 * folded / det.size:.4f}%) with determinant <= 0")
    if out:
        write_image(Volume(det.astype(np.float32), field.spacing, field.origin, field.direction.copy()), out)
        print(f"wrote {out}")
