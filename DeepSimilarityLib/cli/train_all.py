"""``deepsim train all``: retrain every shipped model with its recipe and write the weights manifest.

Each recipe is the ``deepsim`` command that trains the model; it is parsed
by the same parser and run in this process (the command recorded in the
manifest is the one that ran). A model is trained to a staging name beside
its file, checked (size limit), then renamed into place, so a failed or
interrupted model leaves the previous file; ``--resume`` continues a
killed run from its checkpoint.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Recipe:
    kind: str
    file: str
    data_folder: str  # under the shared data folder
    argv: tuple  # the deepsim command, without --out
    quick: tuple = ()  # option values replaced (or added) in --quick mode
    threads_option: bool = True  # the command takes --threads
    extra: dict = field(default_factory=dict)  # copied into the manifest entry


ENCODER_USAGE = "DeepSimilarityLib.retrieval.models_io.load_retrieval_model(path) -> Encoder (model_id = sha256)"
RECIPES = (
    Recipe("ctmr-similarity", "ctmr_similarity.pt", "ct-mr-slices",
           ("similarity", "train", "--region", "head", "--mr", "T1,T2", "--max-outline-distance", "8", "--setting",
            "modern", "--pairs", "20000", "--negatives", "4", "--jitter", "1", "--patch-norm", "patch"),
           quick=("--pairs", "40")),
    Recipe("deepsim-features", "deepsim_features_seg_2d.pt", "brain-mr",
           ("train", "features", "--mode", "seg", "--epochs", "20"), quick=("--epochs", "1"), threads_option=False),
    # the feature net above is the registration loss's: trained first, read from the output folder
    Recipe("deepsim-registration", "registration_deepsim_seg_2d.pt", "brain-mr",
           ("train", "registration", "--loss", "deepsim-seg", "--lambda", "0.075", "--epochs", "10",
            "--features", "{features}"), quick=("--epochs", "1"), threads_option=False),
    Recipe("retrieval-siamese", "siamese_fundus.pt", "fundus",
           ("train", "siamese", "--data", "fundus", "--epochs", "30"), quick=("--epochs", "1"),
           extra={"encoder": ENCODER_USAGE}),
    Recipe("retrieval-hashing", "osdh_nih_64bit.pt", "chest-xray/nih1000",
           ("train", "hashing", "--data", "nih", "--bits", "64", "--epochs", "15"), quick=("--epochs", "1"),
           extra={"encoder": ENCODER_USAGE}),
)
KINDS = tuple(r.kind for r in RECIPES)
CTMR_BENCHMARK = "benchmarks/results/rank_error_head_T1_modern_neg4_jit1_patchnorm_plusT2_train8px_pairs20000"


def add_parser(kinds) -> None:
    a = kinds.add_parser("all", help="retrain every shipped model with its recipe and write DIR/manifest.json",
                         description="Trains " + ", ".join(KINDS) + " on ../shared/data with the recipes of "
                                     "weights/manifest.json, then writes DIR/manifest.json (sha256, size, command, "
                                     "hyper-parameters, training data, evaluation numbers of the recipe).")
    a.add_argument("--out", required=True, help="folder for the weight files and manifest.json (created if missing)")
    a.add_argument("--only", help=f"comma-separated kinds to train (default all: {','.join(KINDS)})")
    a.add_argument("--quick", action="store_true", help="tiny epochs / pairs: a smoke test of the pipeline")
    a.add_argument("--resume", action="store_true", help="continue interrupted models from their checkpoints")
    a.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a.set_defaults(func=run_train_all)


def chosen_recipes(only: str | None) -> list[Recipe]:
    if not only:
        return list(RECIPES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in KINDS]
    if unknown or not names:
        raise InputError("--only", f"unknown kind(s) {unknown or only!r}; choose from {', '.join(KINDS)}")
    return [r for r in RECIPES if r.kind in names]


def mean_psi(result: dict) -> dict:
    """``{"learned": ..., "nmi": ..., ...}``: mean psi_3 per method of one rank-error benchmark result."""
    mean = {name: round(sum(v) / len(v), 1) for name, v in result["psi"].items()}
    return {"learned": mean.pop("multimodal SDAE + deep NN"), **mean}


def recipe_evaluation(recipe: Recipe, shipped: dict) -> dict:
    """The evaluation numbers of the recipe: the benchmark of the CT/MR recipe, else the shipped manifest's block."""
    from ..paths import PROJECT_ROOT

    if recipe.kind == "ctmr-similarity":
        path = PROJECT_ROOT / f"{CTMR_BENCHMARK}.json"
        if not path.is_file():
            return {}
        result = json.loads(path.read_text())
        # The same recipe run with other seeds lies beside it as ..._seedN.json; the target counts for all.
        seeds = {0: mean_psi(result)}
        for other in sorted(path.parent.glob(f"{path.stem}_seed*.json")):
            seeds[int(other.stem.rsplit("_seed", 1)[1])] = mean_psi(json.loads(other.read_text()))
        seeds = {str(k): v for k, v in sorted(seeds.items())}  # glob order puts seed10 before seed2
        met = {seed: bool(2 * psi["learned"] <= min(psi["nmi"], psi["lcc"])) for seed, psi in seeds.items()}
        return {"source": f"{CTMR_BENCHMARK}.md (same recipe, leave-one-patient-out, {len(result['folds'])} folds)",
                "mean_psi3_head": seeds["0"],
                "target": "learned mean psi at most half of NMI's and LCC's",
                "mean_psi3_head_per_seed": seeds,
                "target_met_per_seed": met,
                "target_met": all(met.values())}
    entry = next((e for e in shipped.get("models", []) if e.get("file") == recipe.file), None)
    return dict(entry.get("evaluation") or {}) if entry else {}


def with_options(argv: list, options) -> list:
    """``argv`` with each ``--option value`` pair of ``options`` replacing the option's value, or appended."""
    argv = list(argv)
    for name, value in zip(options[::2], options[1::2]):
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
    return argv


def _train_one(recipe: Recipe, folder: Path, args) -> tuple[dict, float]:
    """Run the recipe into a staging file, check it, rename it into place; returns (manifest entry, seconds)."""
    from ..paths import shipped_weights
    from ..weights_manifest import model_entry
    from . import build_parser

    argv = list(recipe.argv)
    if "{features}" in argv:
        features = folder / "deepsim_features_seg_2d.pt"
        if not features.is_file():  # --only registration: the shipped feature net
            features = shipped_weights("deepsim_features_seg_2d.pt")
        argv[argv.index("{features}")] = str(features)
    if recipe.threads_option:
        argv += ["--threads", str(args.threads)]
    if args.quick:
        argv = with_options(argv, recipe.quick)
    final = folder / recipe.file
    staging = folder / f".{recipe.file}.training"  # a stable name: its checkpoint is found again by --resume
    run_args = build_parser().parse_args(argv + ["--out", str(staging)] + (["--resume"] if args.resume else []))
    print(f"== {recipe.kind}: deepsim {shlex.join(argv)}", file=sys.stderr)
    start = time.perf_counter()
    status = run_args.func(run_args)
    seconds = time.perf_counter() - start
    if status:
        raise InputError(recipe.kind, f"training failed (exit status {status}); {final} was left as it was")
    try:
        command = "deepsim " + shlex.join(argv + ["--out", str(final)])
        entry = model_entry(staging, recipe.kind, command, f"../shared/data/{recipe.data_folder}",
                            recipe_evaluation(recipe, args.shipped_manifest), wall_seconds=round(seconds, 1),
                            **recipe.extra)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    entry["file"] = recipe.file
    staging.replace(final)
    return entry, seconds


def run_train_all(args):
    import torch

    from ..paths import weights_dir
    from ..weights_manifest import read_manifest, write_manifest

    recipes = chosen_recipes(args.only)
    folder = Path(args.out)
    if not folder.parent.is_dir():
        raise InputError("--out", f"folder {folder.parent} does not exist")
    if folder.exists() and not folder.is_dir():
        raise InputError("--out", f"{folder} is a file, expected a folder")
    read_manifest(folder)  # a damaged manifest there is an error before hours of training
    folder.mkdir(exist_ok=True)
    torch.set_num_threads(max(1, args.threads))
    # read before training: --out may be the shipped folder itself, whose manifest is rewritten
    args.shipped_manifest = read_manifest(weights_dir())
    header = {"generated_by": "deepsim train all" + (" --quick" if args.quick else ""), "quick": bool(args.quick)}
    if args.quick:
        header["note"] = "quick smoke-test models; the evaluation blocks describe the full recipes, not these files"
    timings = {}
    for recipe in recipes:
        entry, timings[recipe.kind] = _train_one(recipe, folder, args)
        write_manifest(folder, [entry], **header)  # after every model: an interruption keeps the finished ones
        print(f"== {recipe.kind}: {entry['size_bytes'] / 2 ** 20:.2f} MB in {timings[recipe.kind]:.0f} s -> "
              f"{folder / recipe.file}", file=sys.stderr)
    print("trained " + ", ".join(f"{k} {s:.0f} s" for k, s in timings.items()) + f"; wrote {folder / 'manifest.json'}")
