"""DeepSim_seg against each baseline, paired over the test pairs of runs that differ only by seed.

Reads 3D-network results (eval_registration_3d_net.py, e.g. the --merge-folds files of one protocol at
seeds 0, 1, 2) and prints, per seed and over the seeds, each loss's mean Dice; then, for each baseline, the
mean difference, how many pairs and (seed, pair) observations have DeepSim_seg at least the baseline, and
an exact Wilcoxon signed-rank p over the per-pair differences averaged over seeds
(DeepSimilarityLib/registration/paired_comparison.py says why the pairs are the units). Trains nothing.

    python benchmarks/compare_registration_seeds.py --runs S0.json,S1.json,S2.json [--loss deepsim-seg]
        [--baselines ncc,mse] --stem NAME   -> benchmarks/results/NAME.{json,md}
    (a run given by file name alone is read from benchmarks/results/)
"""

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def read_run(name: str) -> tuple:
    """(file stem, result) of ``name``: a path, or a file name in benchmarks/results/."""
    from DeepSimilarityLib.errors import InputError

    path = Path(name)
    if not path.is_file() and (RESULTS / name).is_file():
        path = RESULTS / name
    try:
        return path.stem, json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(name, f"cannot read a result file ({type(e).__name__})") from None


def markdown(comparisons: list, runs: dict) -> str:
    loss = comparisons[0]["loss"]
    names = [loss] + [c["baseline"] for c in comparisons]
    seeds = comparisons[0]["seeds"]
    n_pairs, n_obs = len(comparisons[0]["pairs"]), comparisons[0]["observations"]
    lines = [f"# {loss} against {', '.join(names[1:])}, paired over {n_pairs} test pairs and seeds "
             f"{', '.join(map(str, seeds))}", "",
             "Runs: " + "; ".join(f"`{name}` (seed {s})" for name, s in zip(runs, seeds)) + ".", "",
             f"Mean Dice over the {n_pairs} test pairs:", "",
             "| seed | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, s in zip(runs, seeds):
        means = [comparisons[0]["run_means"][name]["loss"]] + [c["run_means"][name]["baseline"] for c in comparisons]
        lines.append(f"| {s} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    overall = [comparisons[0]["mean_loss"]] + [c["mean_baseline"] for c in comparisons]
    lines += ["| mean over seeds | " + " | ".join(f"**{m:.3f}**" for m in overall) + " |", "",
              f"{loss} minus each baseline (Wilcoxon: exact, two-sided, over the {n_pairs} per-pair differences "
              f"averaged over seeds; its floor with {n_pairs} pairs is {comparisons[0]['p_floor']:.3f}):", "",
              f"| baseline | mean difference | pairs with {loss} >= baseline | (seed, pair) with {loss} >= baseline "
              "| Wilcoxon p |", "|---|---:|---:|---:|---:|"]
    for c in comparisons:
        lines.append(f"| {c['baseline']} | {c['mean_difference']:+.4f} | {c['pairs_at_least']} of {n_pairs} "
                     f"| {c['observations_at_least']} of {n_obs} | {c['wilcoxon_p']:.3f} |")
    lines += ["", "Per pair, mean over seeds of the difference:", "",
              "| pair | " + " | ".join(f"{loss} - {c['baseline']}" for c in comparisons) + " |",
              "|---|" + "---:|" * len(comparisons)]
    for i, pair in enumerate(comparisons[0]["pairs"]):
        lines.append(f"| {pair} | " + " | ".join(f"{c['per_pair'][i]['difference']:+.4f}" for c in comparisons) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    from DeepSimilarityLib.cli.common import write_json, write_text
    from DeepSimilarityLib.errors import InputError
    from DeepSimilarityLib.registration.paired_comparison import paired_comparison

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="comma-separated result files, one per seed")
    p.add_argument("--loss", default="deepsim-seg")
    p.add_argument("--baselines", default="ncc,mse", help="comma-separated")
    p.add_argument("--stem", required=True, help="the output's name in --out-dir")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    try:
        read = [read_run(f.strip()) for f in args.runs.split(",") if f.strip()]
        runs = dict(read)
        if len(runs) < len(read):
            raise InputError("--runs", "two files of the same name: each run is named by its file")
        comparisons = [paired_comparison(runs, args.loss, b.strip()) for b in args.baselines.split(",") if b.strip()]
        if not comparisons:
            raise InputError("--baselines", "no baseline given")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(comparisons, runs)
    print(text)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(text, out / f"{args.stem}.md")
    write_json({"comparisons": comparisons}, out / f"{args.stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
