"""Merging and reporting the trained-3D-network runs of :mod:`.experiment3d_net`.

Runs of disjoint losses under one setup (two processes, one per core) merge by
:func:`merge_3d_net_results`; runs of different folds (:func:`~.experiment3d_net.fold_pairs`)
by :func:`merge_3d_net_folds`; :func:`report_3d_net` writes the table, JSON and box plot.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .compare import FOLDING_LIMIT


def instance_on_test_pairs(instance: dict, test_pairs: list) -> dict:
    """``{loss: [Dice per test pair]}`` from the instance benchmark's result (``registration_3d.json``)."""
    where = [instance["setup"]["pairs"].index(p) for p in test_pairs]
    out = {name: [r["dice"][i] for i in where] for name, r in instance["losses"].items()}
    out["affine only"] = [instance["affine_only"]["dice"][i] for i in where]
    return out


def check_same_setup(results: list, ignore) -> None:
    """InputError unless ``results`` is not empty and every setup equals the first's outside ``ignore``."""
    if not results:
        raise InputError("results", "nothing to merge")
    first = {k: v for k, v in results[0]["setup"].items() if k not in ignore}
    for i, r in enumerate(results):
        setup = {k: v for k, v in r["setup"].items() if k not in ignore}
        if setup != first:
            diff = sorted(k for k in set(setup) | set(first) if setup.get(k) != first.get(k))
            raise InputError(f"results[{i}]", f"setup differs from the first run's in {diff}")


# Bookkeeping of how long the runs took and how many were merged (see combined_timing); never part of a protocol.
TIMING = ("minutes_total", "minutes_longest_run", "merged_runs")


def merge_3d_net_results(results: list) -> dict:
    """One result from runs of disjoint losses under the same setup (e.g. two processes, one per core).

    The setups must agree except for timing and feature-net entries; minutes add up. A run may itself be a
    merge (a loss added to an earlier merge later): its runs and longest run count as they were.
    """
    check_same_setup(results, ignore=TIMING + ("feature_nets",))
    out = {"setup": dict(results[0]["setup"]), "affine_only": results[0]["affine_only"], "losses": {}}
    for i, r in enumerate(results):
        twice = set(r["losses"]) & set(out["losses"])
        if twice:
            raise InputError(f"results[{i}]", f"losses {sorted(twice)} appear in more than one run")
        out["losses"].update(r["losses"])
        if "ablation" in r:
            out.setdefault("ablation", {}).update(r["ablation"])
        out["setup"]["feature_nets"] = {**out["setup"].get("feature_nets", {}), **r["setup"].get("feature_nets", {})}
    out["setup"].update(combined_timing(results))
    return out


def combined_timing(results: list) -> dict:
    """Minutes in all, the longest run and the number of runs of ``results``, counting a result that is itself
    a merge as the runs it was made of."""
    setups = [r["setup"] for r in results]
    return {"minutes_total": sum(s.get("minutes_total", 0.0) for s in setups),
            "minutes_longest_run": max(s.get("minutes_longest_run", s.get("minutes_total", 0.0)) for s in setups),
            "merged_runs": sum(s.get("merged_runs", 1) for s in setups)}


# Setup entries that differ between folds by design (or are timings); everything else must agree.
# A fold may also have its own lambda grid: one lambda chosen by a sweep on fold 0 is carried to folds 1 and 2
# as a single factor (each loss's lambda must still agree between folds).
PER_FOLD = ("fold", "pairs", "train_pairs", "feature_training", "feature_nets", "lambda_factors") + TIMING
CONCATENATED = ("dice", "dice_per_label", "folding", "train_dice", "train_folding", "val_dice")


def merge_3d_net_folds(results: list) -> dict:
    """One result over the test pairs of several folds (:func:`fold_pairs`), each run with the same losses.

    Per-pair lists are concatenated in the order of ``results``; lambdas and steps must agree; training
    seconds and inference times are averaged. A result without ``"fold"`` in its setup (made before
    folds existed) is fold 0. ``setup["folds"]`` and each loss's ``"fold_dice"`` keep the per-fold means.
    Lambda grids may differ between folds (each loss's lambda may not); they are then kept as
    ``setup["lambda_factors_by_fold"]``.
    """
    check_same_setup(results, ignore=PER_FOLD)
    folds = [r["setup"].get("fold", 0) for r in results]
    if len(set(folds)) != len(folds):
        raise InputError("results", f"folds {folds} repeat; each fold may appear once")
    for i, r in enumerate(results):
        if set(r["losses"]) != set(results[0]["losses"]):
            raise InputError(f"results[{i}]", f"losses {sorted(r['losses'])} differ from the first run's "
                                              f"{sorted(results[0]['losses'])}")
    setup = dict(results[0]["setup"], folds=folds, fold="all", pairs=[p for r in results for p in r["setup"]["pairs"]],
                 train_pairs=[r["setup"]["train_pairs"] for r in results],
                 feature_training="in each fold from its hub subject (" + "; ".join(
                     f"fold {f}: {r['setup']['feature_training']}" for f, r in zip(folds, results)) + ")",
                 feature_nets={k: v for r in results for k, v in r["setup"].get("feature_nets", {}).items()},
                 **combined_timing(results))
    grids = [r["setup"].get("lambda_factors", [1.0]) for r in results]
    if any(g != grids[0] for g in grids):
        setup["lambda_factors_by_fold"] = grids
    affine = {k: [v for r in results for v in r["affine_only"][k]] for k in results[0]["affine_only"]}
    out = {"setup": setup, "affine_only": affine, "losses": {}}
    for name in results[0]["losses"]:
        runs = [r["losses"][name] for r in results]
        for key in ("lambda", "steps", "augment"):
            if len({str(run.get(key)) for run in runs}) > 1:
                raise InputError("results", f"{name}: {key} differs between folds: {[run.get(key) for run in runs]}")
        merged = {k: [v for run in runs for v in run.get(k, [])] for k in CONCATENATED}
        merged.update({"lambda": runs[0]["lambda"], "steps": runs[0]["steps"], "augment": runs[0].get("augment")})
        merged.update(fold_dice=[float(np.mean(run["dice"])) for run in runs],
                      train_seconds=float(np.mean([run["train_seconds"] for run in runs])),
                      inference_ms=float(np.mean([run["inference_ms"] for run in runs])),
                      seconds_per_pair=float(np.mean([run["seconds_per_pair"] for run in runs])))
        out["losses"][name] = merged
    return out


AUGMENTED = "on (one random left-right flip + small affine for both images of a sample)"
POSED = " in a new random pose (flip + small affine, labels nearest) at every step"
STRIDED = ", the paper's encoder (stride-2 stages, no normalisation; levels at 1/2, 1/4, 1/8)"
BEFORE_WARP = ("; DeepSim trained on the moving image's feature maps warped by the displacement (extract "
               "before warp)")
HISTOGRAM_MATCHED = ("; every DeepSim input mapped onto the hub subject's foreground intensity quantiles "
                     "before the feature net")
PHASES = ", at all {} block-averaging offsets (exact sub-voxel shifts)"
MAJORITY = ", segmentation targets the most frequent label of each {0}x{0}x{0} block (not its corner voxel's)"
PROPAGATED = (", the nets trained on all three subjects' images, the hub's labels carried onto the other two by "
              "NCC instance registration (their own labels unread)")
VELOCITY = ", the nets output stationary velocity fields integrated by scaling and squaring"
ON_VELOCITY = " (the regulariser on the velocity field, not the displacement)"
LEVELS = "; DeepSim over the {} finest feature levels of each net, not all"
ENSEMBLE = "; {} feature nets per DeepSim loss (seeds seed, seed + 1, ...), the loss averaged over them"
CONTRASTED = (", each step on a new random contrast of it (bias field, gamma 0.7-1.5, noise; "
              "MONAI transforms)")


def _mean_per_label(runs: list) -> dict:
    """``{label: mean Dice over the pairs where it is present}`` from a list of per-pair ``{label: Dice}``."""
    labels = sorted({k for r in runs for k in r}, key=int)
    return {k: float(np.mean([r[k] for r in runs if k in r])) for k in labels}


def label_lines(result: dict) -> list:
    """Markdown lines: mean test Dice per label for affine and every loss, and for each DeepSim loss on how
    many labels it beats each other loss (where a loss wins: a few structures or all of them)."""
    losses = {n: _mean_per_label(r["dice_per_label"]) for n, r in result["losses"].items() if "dice_per_label" in r}
    if len(losses) < 2 or "dice_per_label" not in result["affine_only"]:
        return []  # one loss, or a result without per-label scores: nothing to compare
    affine = _mean_per_label(result["affine_only"]["dice_per_label"])
    names = list(losses)
    out = ["", "Mean test Dice per seg35 label (over the test pairs where the label is present):", "",
           "| label | affine only | " + " | ".join(names) + " |", "|---|" + "---:|" * (len(names) + 1)]
    for k in affine:
        out.append(f"| {k} | {affine[k]:.3f} | " + " | ".join(f"{losses[n].get(k, float('nan')):.3f}" for n in names)
                   + " |")
    out.append("")
    for d in (n for n in names if n.startswith("deepsim")):
        for other in (n for n in names if n != d):
            common = [k for k in losses[d] if k in losses[other]]
            wins = sum(losses[d][k] > losses[other][k] for k in common)
            out.append(f"- {d} above {other} on {wins} of {len(common)} labels")
    return out


def report_3d_net(result: dict, out_dir, stem: str, instance: dict | None = None, log=print) -> str:
    """Writes ``{stem}.{json,md,png}`` for a :func:`run_net_comparison_3d` result; returns the markdown."""
    from .report import write_report

    s = result["setup"]
    g = "x".join(str(n) for n in s["network_grid"])
    factors = s.get("lambda_factors", [1.0])
    rules = {"folding": f"the smallest whose folding on the training pairs stays under {100 * FOLDING_LIMIT:g}% "
                        f"(label-free)",
             "validation": "the one with the highest mean Dice on 4 synthetic smooth deformations of the hub "
                           "subject (its own labels; no test label)"}
    if factors == [1.0]:
        lam = f"lambda per loss from {s['lambda_source']} (the 3D instance benchmark's label-free folding rule)"
    elif len(factors) == 1:
        lam = f"lambda per loss: {s['lambda_source']}'s times {factors[0]:g}"
    else:
        lam = (f"lambda per loss: {s['lambda_source']}'s times {factors}, {rules[s.get('lambda_rule', 'folding')]}; "
               f"every run under 'sweep' in the JSON")
    if s.get("lambda_factors_by_fold"):
        lam += (f" (lambda factors per fold: {s['lambda_factors_by_fold']}; a fold with one factor takes the lambda "
                f"the sweep chose)")
    minutes = (f"{s['minutes_total']:.1f} min in all" if s.get("merged_runs", 1) == 1 else
               f"{s['minutes_total']:.1f} min of compute in {s['merged_runs']} runs (the longest "
               f"{s['minutes_longest_run']:.1f} min)")
    folds = s.get("folds")
    if folds:
        tested = f"all {len(s['pairs'])} directed pairs, each held out in one of the folds {folds}"
        split = ("Cross-validated over the three subjects: in fold k the net trains on the 4 directed pairs between "
                 "subject k (the hub) and the other two, and is tested on the 2 directed pairs between those two")
    else:
        tested = f"the held-out directed pairs {' and '.join(s['pairs'])}"
        split = f"Trained on the 4 directed pairs {', '.join(s.get('train_pairs', ['vxm <-> OASIS 0001 / 0002']))}"
    header = (("QUICK SMOKE RUN, NOT A RESULT. " if s.get("quick") else "") +
              f"Trained 3D registration networks (MONAI U-Net, one per loss), brain MR, tested on {tested}\n\n"
              f"{split}, on the {g} grid ({s['factor']}x block-averaged), {s['steps']} steps of batch 1, Adam lr "
              f"{s['lr']}{', seed ' + str(s['seed']) if s.get('seed') else ''}{VELOCITY if s.get('velocity') else ''}"
              f"{ON_VELOCITY if s.get('regularise') == 'velocity' else ''}, "
              f"augmentation {AUGMENTED if s['augment'] else 'off'}; {lam}. DeepSim feature nets: 3D, "
              f"{s['feature_steps']} steps, "
              f"{s.get('feature_training', 'the vxm subject only')}{POSED if s.get('feature_augment') else ''}"
              f"{CONTRASTED if s.get('feature_intensity') else ''}"
              f"{STRIDED if s.get('feature_encoder') == 'strided' else ''}"
              f"{PHASES.format(s['factor'] ** 3) if s.get('feature_phases') else ''}"
              f"{MAJORITY.format(s['factor']) if s.get('feature_block_labels') == 'majority' else ''}"
              f"{PROPAGATED if s.get('feature_propagated_labels') else ''}"
              f"{BEFORE_WARP if s.get('deepsim_before_warp') else ''}"
              f"{HISTOGRAM_MATCHED if s.get('deepsim_histogram_match') else ''}"
              f"{'; feature channels ' + str(s['feature_channels']) if s.get('feature_channels') else ''}"
              f"{'; feature-net dropout ' + str(s['feature_dropout']) if s.get('feature_dropout') else ''}"
              f"{ENSEMBLE.format(s['feature_ensemble']) if s.get('feature_ensemble', 1) > 1 else ''}"
              f"{LEVELS.format(s['feature_levels']) if s.get('feature_levels') else ''}. "
              f"Dice over seg35 labels on the full "
              f"{'x'.join(str(n) for n in s['grid'])} grid, "
              f"folding on the network grid; ms / pair = inference (network + upsampling the displacement) on one "
              f"CPU thread. {minutes}. Paper column: the paper's 3D networks (hundreds of "
              f"volumes), for ordering only.")
    lines = ["", "| loss | net: test Dice | instance opt.: same pairs | net: training-pair Dice | training s | steps |",
             "|---|---:|---:|---:|---:|---:|"]
    inst = instance_on_test_pairs(instance, s["pairs"]) if instance else {}
    ref = lambda name: f"{np.mean(inst[name]):.3f}" if name in inst else ""  # noqa: E731
    lines.append(f"| affine only | {np.mean(result['affine_only']['dice']):.3f} | {ref('affine only')} | | | |")
    rows = [(n, r) for n, r in result["losses"].items()] + [(f"{n} (augment {r['augment']})", r)
                                                            for n, r in result.get("ablation", {}).items()]
    for name, r in rows:
        lines.append(f"| {name} | {np.mean(r['dice']):.3f} | {ref(name)} | {np.mean(r['train_dice']):.3f} | "
                     f"{r['train_seconds']:.0f} | {r['steps']} |")
    if folds:
        lines += ["", "Mean test Dice per fold (2 directed pairs each):", "",
                  "| loss | " + " | ".join(f"fold {f}: {s['pairs'][2 * i]} and back" for i, f in enumerate(folds)) +
                  " | all |", "|---|" + "---:|" * (len(folds) + 1)]
        per_fold = lambda dice: [np.mean(dice[2 * i:2 * i + 2]) for i in range(len(folds))]  # noqa: E731
        for name, dice in [("affine only", result["affine_only"]["dice"])] + [(n, r["dice"]) for n, r in rows]:
            lines.append(f"| {name} | " + " | ".join(f"{d:.3f}" for d in per_fold(dice)) + f" | {np.mean(dice):.3f} |")
    swept = [(n, r) for n, r in result["losses"].items() if len(r.get("sweep", [])) > 1]
    if swept:
        lines += ["", f"Lambda sweep (chosen by the {s.get('lambda_rule', 'folding')} rule alone; test Dice shown for "
                      f"every run):", "",
                  "| loss | lambda | training-pair folding % | validation Dice | test Dice | test folding % | chosen |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for name, r in swept:
            for run in r["sweep"]:
                val = f"{np.mean(run['val_dice']):.3f}" if run.get("val_dice") else ""
                lines.append(f"| {name} | {run['lambda']:g} | {100 * np.mean(run['train_folding']):.3f} | {val} | "
                             f"{np.mean(run['dice']):.3f} | {100 * np.mean(run['folding']):.3f} | "
                             f"{'yes' if run['lambda'] == r['lambda'] else ''} |")
    lines += label_lines(result)
    title = f"3D brain MR, trained nets, {len(s['pairs'])} held-out pairs, {g} grid"
    text = write_report(result, out_dir, stem, header, title,
                        footer="\n".join(lines) + "\n")
    log(text)
    return text
