"""``deepsim similarity``: CT/MR patch similarity heat maps (and training, with the learned metric)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .common import output_path, parse_point, write_json


def register_parser(sub):
    p = sub.add_parser("similarity", help="CT/MR patch similarity: heat maps over the MR")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    h = actions.add_parser("heatmap", help="score one CT patch against every MR patch around the same position")
    h.add_argument("--ct", required=True, help="CT image file (2D or 3D)")
    h.add_argument("--mr", required=True, help="MR image file, same dimension; resampled onto the CT grid if needed")
    where = h.add_mutually_exclusive_group(required=True)
    where.add_argument("--point", type=parse_point, help="patch centre in mm, 'x,y[,z]' (LPS unless --ras)")
    where.add_argument("--index", type=parse_point, help="patch centre as CT voxel index 'i,j[,k]'")
    h.add_argument("--ras", action="store_true", help="--point is in RAS (as Slicer shows it), not LPS")
    h.add_argument("--metric", default="nmi", help="nmi, lcc or mind (default nmi)")
    h.add_argument("--patch-size", type=int, default=17, help="odd patch edge in voxels (default 17)")
    h.add_argument("--neighbourhood", type=int, default=81, help="odd in-plane edge of the searched area (default 81)")
    h.add_argument("--depth", type=int, default=9, help="odd number of slices searched for 3D images (default 9)")
    h.add_argument("--out", required=True, help="heat map image to write (.nii.gz, .nrrd, .mha), on the MR's geometry")
    h.add_argument("--out-json", help="also write the best match and score range as JSON")
    h.set_defaults(func=run_heatmap)


def run_heatmap(args):
    from ..heatmap import similarity_heatmap
    from ..image_io import read_image, write_image

    out = output_path(args.out, "--out")
    out_json = output_path(args.out_json, "--out-json") if args.out_json else None
    ct = read_image(args.ct)
    mr = read_image(args.mr)
    if ct.ndim != mr.ndim:
        raise InputError(args.mr, f"is {mr.ndim}D but the CT {args.ct} is {ct.ndim}D")
    point = index = None
    if args.point is not None:
        point = np.array(args.point, dtype=float)
        if args.ras:
            point[:2] *= -1  # RAS -> LPS flips the first two axes
    else:
        index = args.index
    for name in ("patch_size", "neighbourhood", "depth"):
        value = getattr(args, name)
        if value < 1 or value % 2 == 0:
            raise InputError("--" + name.replace("_", "-"), f"must be a positive odd number, got {value}")
    result = similarity_heatmap(ct, mr, point=point, index=index, metric=args.metric, patch_size=args.patch_size,
                                neighbourhood=args.neighbourhood, depth=args.depth)
    write_image(result.scores, out)
    centre_point = ct.index_to_physical(result.centre_index[::-1])
    shift = float(np.linalg.norm(result.best_point - centre_point))
    print(f"{result.metric} heat map {result.scores.size}: best match at LPS {np.round(result.best_point, 2).tolist()} mm, "
          f"{shift:.2f} mm from the CT point")
    print(f"wrote {out}")
    if out_json:
        write_json({"metric": result.metric, "centre_lps": centre_point.tolist(), "best_lps": result.best_point.tolist(),
                    "best_index_xyz": list(result.best_index[::-1]), "distance_mm": shift,
                    "score_min": float(result.scores.array.min()), "score_max": float(result.scores.array.max())}, out_json)
        print(f"wrote {out_json}")
