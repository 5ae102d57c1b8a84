"""Logic of the four panels beyond test_slicer_logic.py, on a real MRML scene (slicer-core):
Networks (shipped weights, manifest, loading, training jobs), background heat map and
registration jobs with Dice, loading a retrieved case, and the dependency pins.

Jobs run through an in-process launcher (the ``deepsim`` command line called as a
function, its output played back to the Job) so that the file bridge and the
reading of results are tested without paying a process start per test; the real
subprocess path is tested in test_slicer_jobs.py.
"""

import contextlib
import dataclasses
import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_slicer_logic import NET, ROOT, _write_pngs, add_volume, logic, module, scene, slicer  # noqa: F401

from DeepSimilarityLib.image_io import Volume  # noqa: E402
from DeepSimilarityLib.phantom import make_head_phantom  # noqa: E402


class InProcessLauncher:
    """Runs ``python -m DeepSimilarityLib ARGS`` as ``cli.main(ARGS)`` here; the Job reads its lines after."""

    def __init__(self):
        self.calls = []

    def __call__(self, args, env):
        from DeepSimilarityLib.cli import main

        assert args[1:4] == ["-m", "DeepSimilarityLib", "--progress-json"]
        self.calls.append(args[3:])
        out, err = io.StringIO(), io.StringIO()
        from DeepSimilarityLib.progress import set_json_progress

        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(args[3:])
        finally:
            set_json_progress(False)  # main() switched this process's bars to JSON
        lines = [("stdout", line) for line in out.getvalue().splitlines()]
        lines += [("stderr", line) for line in err.getvalue().splitlines()]
        return _Finished(lines, code)


class _Finished:
    def __init__(self, lines, code):
        self.lines, self.code = lines, code

    def read_lines(self):
        lines, self.lines = self.lines, []
        return lines

    def returncode(self):
        return self.code

    def kill(self):
        pass


def finish(job):
    job.start()
    while job.poll():
        time.sleep(0.01)
    return job


# -------------------------------------------------------------------- Networks


def test_shipped_networks_are_listed_per_kind_with_their_manifest(logic):
    assert logic.shipped_networks("similarity") == ["ctmr_similarity.pt"]
    assert logic.shipped_networks("registration") == ["registration_deepsim_seg_2d.pt"]
    assert logic.shipped_networks("hashing") == ["osdh_nih_64bit.pt"]
    assert logic.shipped_networks("siamese") == ["siamese_fundus.pt"]
    assert logic.shipped_networks("deepsim") == ["deepsim_features_seg_2d.pt"]
    text = logic.manifest_text("osdh_nih_64bit.pt")
    entry = next(e for e in logic.manifest_entries() if e["file"] == "osdh_nih_64bit.pt")
    for expected in ("Training data: nih", "chest-xray/nih1000", entry["date"], "Hyper-parameters", '"n_bits": 64',
                     "Evaluation", "0.1744", f"sha256: {entry['sha256']}"):
        assert expected in text, expected
    with pytest.raises(ValueError, match="model kind"):
        logic.shipped_networks("segmentation")
    with pytest.raises(ValueError, match="no entry"):
        logic.manifest_text("unknown.pt")


def test_load_shipped_checks_kind_and_sha256(logic, tmp_path, monkeypatch):
    path = logic.load_shipped_network("registration", "registration_deepsim_seg_2d.pt")
    assert Path(path) == ROOT / "weights" / "registration_deepsim_seg_2d.pt"
    assert logic.networks["registration"] == path
    assert logic.network_for("registration") == path
    with pytest.raises(ValueError, match="not a shipped CT/MR patch similarity"):
        logic.load_shipped_network("similarity", "registration_deepsim_seg_2d.pt")
    # A damaged copy: same manifest, one byte changed.
    copy = tmp_path / "weights"
    shutil.copytree(ROOT / "weights", copy)
    data = bytearray((copy / "siamese_fundus.pt").read_bytes())
    data[-1] ^= 0xFF
    (copy / "siamese_fundus.pt").write_bytes(bytes(data))
    monkeypatch.setenv("DEEPSIM_WEIGHTS", str(copy))
    with pytest.raises(ValueError, match="sha256"):
        logic.load_shipped_network("siamese", "siamese_fundus.pt")
    assert "siamese" not in logic.networks


def test_load_network_file_rejects_another_kind(logic, tmp_path):
    registration = ROOT / "weights" / "registration_deepsim_seg_2d.pt"
    with pytest.raises(ValueError, match="not a CT/MR patch similarity network"):
        logic.load_network_file("similarity", registration)
    with pytest.raises(ValueError, match="not a hashing retrieval network"):
        logic.load_network_file("hashing", ROOT / "weights" / "siamese_fundus.pt")
    with pytest.raises(ValueError, match="not found"):
        logic.load_network_file("deepsim", tmp_path / "missing.pt")
    assert logic.networks == {}
    assert logic.load_network_file("registration", registration) == str(registration)
    assert logic.load_network_file("siamese", ROOT / "weights" / "siamese_fundus.pt").endswith("siamese_fundus.pt")


def test_training_jobs_build_the_deepsim_command_and_set_the_current_network(logic, tmp_path):
    p = make_head_phantom((64, 64), seed=2)
    ctNode, mrNode = add_volume(p.ct, "ct"), add_volume(p.mr, "mr")
    labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    import DeepSimilarityNodes as nodes

    nodes.update_node_from_volume(p.labels.with_array(p.labels.array.astype(np.int16)), labelNode)
    seen = []

    def launcher(args, env):
        command = args[4:]  # after python -m DeepSimilarityLib --progress-json
        seen.append(command)
        # Inputs were written for the process: every file argument exists while it runs.
        for flag in ("--ct-image", "--mr-image", "--image", "--labels"):
            if flag in command:
                assert Path(command[command.index(flag) + 1]).is_file(), flag
        shutil.copy(ROOT / "weights" / "ctmr_similarity.pt", command[command.index("--out") + 1])
        return _Finished([("stdout", '{"progress": 1.0, "desc": "training"}')], 0)

    out = tmp_path / "sim.pt"
    job = finish(logic.training_job("similarity", out, pairs=50, ctNode=ctNode, mrNode=mrNode, threads=1,
                                    launcher=launcher))
    assert job.state == "succeeded" and logic.networks["similarity"] == str(out)
    assert seen[0][:2] == ["similarity", "train"] and seen[0][seen[0].index("--pairs") + 1] == "50"
    assert "--threads" in seen[0]
    folder = Path(seen[0][seen[0].index("--ct-image") + 1]).parent
    assert not folder.exists()  # the temporary inputs are removed once the job ends
    job = finish(logic.training_job("deepsim", tmp_path / "f.pt", epochs=3, imageNode=mrNode, labelNode=labelNode,
                                    launcher=launcher))
    assert seen[1][:3] == ["train", "features", "--mode"] and seen[1][seen[1].index("--epochs") + 1] == "3"
    images = tmp_path / "images"
    _write_pngs(images, 3)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,labels\ncase0.png,a\ncase1.png,b\ncase2.png,a\n")
    finish(logic.training_job("hashing", tmp_path / "h.pt", epochs=2, bits=16, images_folder=images, labels_csv=csv,
                              launcher=launcher))
    assert seen[2][:2] == ["train", "hashing"] and seen[2][seen[2].index("--bits") + 1] == "16"
    # Bad input: ValueError naming the parameter, nothing launched.
    with pytest.raises(ValueError, match="training MR volume"):
        logic.training_job("similarity", out, ctNode=ctNode, mrNode=None, launcher=launcher)
    with pytest.raises(ValueError, match="bits"):
        logic.training_job("hashing", out, bits=12, images_folder=images, labels_csv=csv, launcher=launcher)
    with pytest.raises(ValueError, match="labels CSV"):
        logic.training_job("siamese", out, images_folder=images, labels_csv=None, launcher=launcher)
    with pytest.raises(ValueError, match="output file"):
        logic.training_job("similarity", tmp_path / "no" / "x.pt", ctNode=ctNode, mrNode=mrNode, launcher=launcher)
    assert len(seen) == 3


def test_3d_training_from_the_scene_whole_volume_features_then_registration_on_checked_volumes(logic, tmp_path):
    """'Whole volume (3D)' makes a 3D feature net; checked training volumes train a registration net on them
    (``--images``), in-process, end to end; bad combinations are refused before anything starts."""
    import DeepSimilarityNodes as nodes

    a, b = make_head_phantom((32, 32, 32), seed=1), make_head_phantom((32, 32, 32), seed=2, misalign=(3.0, (2.0, 0.0, 0.0)))
    aNode, bNode = add_volume(a.mr, "mr_a"), add_volume(b.mr, "mr_b")
    labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels_a")
    nodes.update_node_from_volume(a.labels.with_array(a.labels.array.astype(np.int16)), labelNode)
    sliceNode = add_volume(make_head_phantom((32, 32), seed=3).mr, "slice")
    launcher = InProcessLauncher()
    job = finish(logic.training_job("deepsim", tmp_path / "f3d.pt", epochs=2, imageNode=aNode, labelNode=labelNode,
                                    volume3D=True, threads=1, launcher=launcher))
    assert job.state == "succeeded", job.error
    assert launcher.calls[-1][launcher.calls[-1].index("--dims") + 1] == "3"
    from DeepSimilarityLib.registration.feature_net import load_feature_net

    assert load_feature_net(logic.networks["deepsim"]).dims == 3
    job = finish(logic.training_job("registration", tmp_path / "r3d.pt", epochs=1, loss="deepsim",
                                    trainingVolumes=[aNode, bNode], launcher=launcher, velocity=True))
    assert job.state == "succeeded", job.error
    command = launcher.calls[-1]
    assert "--velocity" in command
    assert command[command.index("--features") + 1] == str(tmp_path / "f3d.pt")
    assert len(command[command.index("--images") + 1:command.index("--features")]) == 2
    from DeepSimilarityLib.registration.network import load_registration_net

    config = load_registration_net(logic.networks["registration"]).config
    assert config["spatial_dims"] == 3 and config["velocity"] is True  # 'Velocity field' reached the net
    calls = len(launcher.calls)
    with pytest.raises(ValueError, match="training volumes: only 'mr_a' is checked"):
        logic.training_job("registration", tmp_path / "x.pt", loss="mse", trainingVolumes=[aNode], launcher=launcher)
    with pytest.raises(ValueError, match=r"training volumes: mix 2D slices and 3D volumes \('mr_a' \(3D\)"):
        logic.training_job("registration", tmp_path / "x.pt", loss="mse", trainingVolumes=[aNode, sliceNode],
                           launcher=launcher)
    with pytest.raises(ValueError, match="velocity: only registration networks"):
        logic.training_job("deepsim", tmp_path / "x.pt", imageNode=aNode, labelNode=labelNode, velocity=True,
                           launcher=launcher)
    with pytest.raises(ValueError, match="training image: a whole-volume .* 'slice' is one slice"):
        logic.training_job("deepsim", tmp_path / "x.pt", imageNode=sliceNode, labelNode=labelNode, volume3D=True,
                           launcher=launcher)
    logic.load_shipped_network("deepsim", "deepsim_features_seg_2d.pt")  # a 2D feature net for 3D volumes
    with pytest.raises(ValueError, match=r"DeepSim feature net: the current one \(deepsim_features_seg_2d.pt\) is "
                                         r"for 2D images and the training volumes are 3D; .*'Whole volume \(3D\)'"):
        logic.training_job("registration", tmp_path / "x.pt", loss="deepsim", trainingVolumes=[aNode, bNode],
                           launcher=launcher)
    assert len(launcher.calls) == calls and not (tmp_path / "x.pt").exists()


def test_added_feature_nets_form_an_ensemble_that_registration_training_averages_over(logic, tmp_path):
    """'Add to the current feature nets' keeps the current ones; a DeepSim registration net trained after it gets
    every one of them (``--features a b``); nets that cannot be averaged are refused before anything changes."""
    from DeepSimilarityLib.registration.feature_net import FeatureNet, save_feature_net

    shipped = str(ROOT / "weights" / "deepsim_features_seg_2d.pt")
    seed1 = tmp_path / "seed1.pt"
    shutil.copy(shipped, seed1)
    logic.load_shipped_network("deepsim", "deepsim_features_seg_2d.pt")
    assert logic.load_network_file("deepsim", seed1, add=True) == str(seed1)
    logic.load_network_file("deepsim", seed1, add=True)  # already one of them: not twice
    assert logic.current_networks("deepsim") == [shipped, str(seed1)]
    volume3d = tmp_path / "f3d.pt"
    save_feature_net(FeatureNet(3, "seg", 4), volume3d)
    with pytest.raises(ValueError, match=r"DeepSim feature net: f3d.pt \(3D, seg, 3 levels\) cannot join "
                                         r"deepsim_features_seg_2d.pt \(2D, seg, 3 levels\)"):
        logic.load_network_file("deepsim", volume3d, add=True)
    with pytest.raises(ValueError, match="add: only DeepSim feature nets form an ensemble"):
        logic.load_network_file("registration", ROOT / "weights" / "registration_deepsim_seg_2d.pt", add=True)
    assert logic.current_networks("deepsim") == [shipped, str(seed1)] and "registration" not in logic.networks

    seen = []

    def launcher(args, env):
        seen.append(args[4:])
        shutil.copy(ROOT / "weights" / "registration_deepsim_seg_2d.pt", args[args.index("--out") + 1])
        return _Finished([], 0)

    nodes = [add_volume(make_head_phantom((64, 64), seed=s).mr, f"slice{s}") for s in (1, 2)]
    job = finish(logic.training_job("registration", tmp_path / "r.pt", epochs=1, loss="deepsim",
                                    trainingVolumes=nodes, launcher=launcher))
    assert job.state == "succeeded", job.error
    assert seen[0][seen[0].index("--features") + 1:seen[0].index("--out")] == [shipped, str(seed1)]
    # Training a 3D net to add to 2D ones is refused before it starts; a 2D one joins once trained.
    import DeepSimilarityNodes

    def image_and_labels(shape, name):
        phantom = make_head_phantom(shape, seed=1)
        labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name}_labels")
        DeepSimilarityNodes.update_node_from_volume(
            phantom.labels.with_array(phantom.labels.array.astype(np.int16)), labels)
        return add_volume(phantom.mr, name), labels

    image3d, labels3d = image_and_labels((32, 32, 32), "head3d")
    with pytest.raises(ValueError, match=r"add: the current feature net deepsim_features_seg_2d.pt is a 2D seg net "
                                         r"and this training makes a 3D seg net; uncheck 'Whole volume \(3D\)'"):
        logic.training_job("deepsim", tmp_path / "x.pt", imageNode=image3d, labelNode=labels3d, volume3D=True,
                           add=True, launcher=launcher)
    assert len(seen) == 1

    def feature_launcher(args, env):
        seen.append(args[4:])
        shutil.copy(shipped, args[args.index("--out") + 1])
        return _Finished([], 0)

    image2d, labels2d = image_and_labels((64, 64), "head2d")
    job = finish(logic.training_job("deepsim", tmp_path / "seed2.pt", epochs=1, imageNode=image2d, labelNode=labels2d,
                                    add=True, launcher=feature_launcher))
    assert job.state == "succeeded", job.error
    assert seen[-1][seen[-1].index("--seed") + 1] == "2"  # not the seed of a net already there
    assert logic.current_networks("deepsim") == [shipped, str(seed1), str(tmp_path / "seed2.pt")]
    # Without 'add', a net replaces the ensemble.
    logic.load_network_file("deepsim", seed1)
    assert logic.networks["deepsim"] == str(seed1) and logic.current_networks("deepsim") == [str(seed1)]


def test_a_failed_training_keeps_the_current_network(logic, tmp_path):
    p = make_head_phantom((64, 64), seed=2)
    flat_ct = dataclasses.replace(p.ct, array=np.full_like(p.ct.array, 40.0))  # soft tissue only: no bone anywhere
    ctNode, mrNode = add_volume(flat_ct, "ct"), add_volume(p.mr, "mr")
    job = finish(logic.training_job("similarity", tmp_path / "s.pt", ctNode=ctNode, mrNode=mrNode,
                                    launcher=InProcessLauncher()))
    # A CT without bone gives the library's pair sampler nothing to sample: its own message comes back.
    assert job.state == "failed" and job.error.startswith("deepsim: error: slices: no skull edge")
    assert "similarity" not in logic.networks


# ---------------------------------------------------------------- heat map job


def test_heatmap_job_equals_the_in_process_map(logic):
    import DeepSimilarityNodes as nodes

    p = make_head_phantom((64, 64), seed=4)
    ctNode, mrNode = add_volume(p.ct, "ct"), add_volume(p.mr, "mr")
    point = nodes.ras_from_index(ctNode, (30, 28))
    assert not logic.heatmap_in_background(ctNode, 21)
    assert logic.heatmap_in_background(ctNode, 81)
    assert logic.heatmap_in_background(add_volume(Volume(np.zeros((3, 8, 8), np.float32) + 1), "3d"), 5)
    expected, expected_best = logic.compute_heatmap(ctNode, mrNode, point, "lcc", neighbourhood=11, patch_size=7)
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    launcher = InProcessLauncher()
    job = logic.heatmap_job(ctNode, mrNode, point, "lcc", neighbourhood=11, patch_size=7, launcher=launcher)
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before  # nothing until it succeeds
    finish(job)
    assert job.state == "succeeded", job.error
    heat, best = job.result
    np.testing.assert_allclose(slicer.util.arrayFromVolume(heat), slicer.util.arrayFromVolume(expected), atol=1e-5)
    assert nodes.volume_from_node(heat).same_grid(nodes.volume_from_node(expected))
    assert best == pytest.approx(expected_best)
    with pytest.raises(ValueError, match="point"):
        logic.heatmap_job(ctNode, mrNode, (1e4, 0.0, 0.0), launcher=launcher)
    # learned+nmi (the rank sum) runs the Networks panel's similarity network in the job as in process
    logic.networks["similarity"] = str(ROOT / "weights" / "ctmr_similarity.pt")
    expected, expected_best = logic.compute_heatmap(ctNode, mrNode, point, "learned+nmi", neighbourhood=11,
                                                    patch_size=17)
    job = logic.heatmap_job(ctNode, mrNode, point, "learned+nmi", neighbourhood=11, patch_size=17, launcher=launcher)
    finish(job)
    assert job.state == "succeeded", job.error
    assert launcher.calls[-1][launcher.calls[-1].index("--weights") + 1] == logic.networks["similarity"]
    # the job uses the arithmetic the in-process map settled on ("auto" would time it again, maybe differently)
    settled = logic._metric("learned+nmi").metrics[0].resolved_precision()
    assert launcher.calls[-1][launcher.calls[-1].index("--precision") + 1] == settled
    heat, best = job.result
    np.testing.assert_allclose(slicer.util.arrayFromVolume(heat), slicer.util.arrayFromVolume(expected), atol=1e-5)
    assert best == pytest.approx(expected_best)


def test_heatmap_precision_chosen_in_the_panel(logic):
    import DeepSimilarityHeatmap
    import DeepSimilarityNodes as nodes
    from DeepSimilarityLib.ctmr.learned_metric import PRECISIONS
    from DeepSimilarityLib.heatmap import similarity_heatmap
    from DeepSimilarityLib.patch_metrics import get_metric

    assert DeepSimilarityHeatmap.PRECISIONS == PRECISIONS  # the module's copy of the library's list
    p = make_head_phantom((64, 64), seed=4)
    ctNode, mrNode = add_volume(p.ct, "ct"), add_volume(p.mr, "mr")
    point = nodes.ras_from_index(ctNode, (30, 28))
    weights = str(ROOT / "weights" / "ctmr_similarity.pt")
    logic.networks["similarity"] = weights
    # float32 in the panel: the library's float32 map, and a job told so before any in-process map
    launcher = InProcessLauncher()
    job = logic.heatmap_job(ctNode, mrNode, point, "learned", neighbourhood=11, patch_size=17, launcher=launcher,
                            precision="float32")
    finish(job)
    assert job.state == "succeeded", job.error
    assert launcher.calls[-1][launcher.calls[-1].index("--precision") + 1] == "float32"
    expected = similarity_heatmap(p.ct, p.mr, index=(30, 28), metric=get_metric("learned", weights, "float32"),
                                  patch_size=17, neighbourhood=11)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(job.result[0])[0], expected.scores.array)
    heat, _ = logic.compute_heatmap(ctNode, mrNode, point, "learned", neighbourhood=11, patch_size=17,
                                    precision="float32")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(heat)[0], expected.scores.array)
    assert logic._metric("learned", "float32").resolved_precision() == "float32"
    assert logic._metric("learned", "float32") is not logic._metric("learned")  # one kept object per choice
    # the hand-made metrics have one arithmetic: the panel's choice does not apply to them
    assert logic._metric("nmi", "int8") is logic._metric("nmi")
    assert logic._settledPrecision("nmi", "int8") is None
    with pytest.raises(ValueError, match="precision"):
        logic.compute_heatmap(ctNode, mrNode, point, "learned", neighbourhood=11, patch_size=17, precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        logic.heatmap_job(ctNode, mrNode, point, "nmi", neighbourhood=11, patch_size=17, precision="double")


# ------------------------------------------------------ registration and Dice


@pytest.fixture
def label_pair():
    """The phantom and a copy shifted by (3, -2) mm, MR and labels alike (the phantom's own
    ``misalign`` moves the MR only, its labels follow the CT)."""
    import SimpleITK as sitk

    from DeepSimilarityLib.image_io import resample_to

    p = make_head_phantom((64, 64), seed=5)
    shift = sitk.TranslationTransform(2, (3.0, -2.0))
    moved = type(p)(**{**p.__dict__, "mr": resample_to(p.mr, p.mr, shift),
                       "labels": resample_to(p.labels, p.labels, shift, "nearest")})
    return p, moved


def add_labels(volume, name):
    import DeepSimilarityNodes as nodes

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    return nodes.update_node_from_volume(volume.with_array(volume.array.astype(np.int16)), node)


@pytest.mark.skipif(not NET.is_file(), reason=f"shipped network {NET} missing")
def test_registration_job_fills_the_scene_and_measures_dice(logic, label_pair):
    import DeepSimilarityNodes as nodes
    from DeepSimilarityLib.image_io import resample_to
    from DeepSimilarityLib.registration.apply import register_deformable, to_sitk_transform
    from DeepSimilarityLib.registration.evaluate import dice_scores

    p, shifted = label_pair
    fixedNode, movingNode = add_volume(p.mr, "fixed"), add_volume(shifted.mr, "moving")
    fixedLabels, movingLabels = add_labels(p.labels, "fixed labels"), add_labels(shifted.labels, "moving labels")
    warpedNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    before = slicer.mrmlScene.GetNumberOfNodes()
    job = logic.registration_job(fixedNode, movingNode, NET, None, warpedNode, affine="none",
                                 fixedLabelNode=fixedLabels, movingLabelNode=movingLabels, launcher=InProcessLauncher())
    assert slicer.mrmlScene.GetNumberOfNodes() == before and movingNode.GetTransformNodeID() is None
    finish(job)
    assert job.state == "succeeded", job.error
    transform = job.result
    assert transform.IsA("vtkMRMLGridTransformNode") and movingNode.GetTransformNodeID() == transform.GetID()
    expected = register_deformable(p.mr, shifted.mr, NET, affine=None)
    np.testing.assert_allclose(nodes.volume_from_node(warpedNode).array, expected.warped.array, atol=1e-3)
    grid = transform.GetTransformFromParent()
    for i, j in [(10, 10), (32, 32), (50, 20)]:  # the field went through a file and back unchanged
        u = expected.displacement.array[j, i]
        p_ras = nodes.ras_from_index(fixedNode, (i, j))
        assert np.array(grid.TransformPoint(*p_ras)) == pytest.approx(p_ras + [-u[0], -u[1], 0.0], abs=1e-3)
    # Dice: the library's dice_scores of the moving labels warped (nearest) by the same field.
    warped_labels = resample_to(shifted.labels, p.labels, to_sitk_transform(expected.displacement), "nearest")
    per_label = dice_scores(warped_labels.array.astype(int), p.labels.array.astype(int))
    mean, got = logic.lastDice
    assert got.keys() == per_label.keys() and len(got) >= 2
    assert [got[k] for k in sorted(got)] == pytest.approx([per_label[k] for k in sorted(per_label)], abs=0.02)
    assert mean == pytest.approx(np.mean(list(per_label.values())), abs=0.02)
    unregistered = np.mean(list(dice_scores(shifted.labels.array.astype(int), p.labels.array.astype(int)).values()))
    assert mean > unregistered  # registration improved the overlap
    assert logic.lastRegistrationInfo["folding"] >= 0.0


def test_registration_rejects_half_given_labels_before_changing_the_scene(logic, label_pair):
    p, shifted = label_pair
    fixedNode, movingNode = add_volume(p.mr, "fixed"), add_volume(shifted.mr, "moving")
    fixedLabels = add_labels(p.labels, "fixed labels")
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="labels"):
        logic.register(fixedNode, movingNode, NET, transform, fixedLabelNode=fixedLabels)
    with pytest.raises(ValueError, match="labels"):
        logic.registration_job(fixedNode, movingNode, NET, fixedLabelNode=fixedLabels, launcher=InProcessLauncher())
    empty = add_labels(p.labels.with_array(np.zeros_like(p.labels.array)), "empty labels")
    with pytest.raises(ValueError, match="moving labels: the label map is empty"):
        logic.registration_job(fixedNode, movingNode, NET, fixedLabelNode=fixedLabels, movingLabelNode=empty)
    assert slicer.mrmlScene.GetNumberOfNodes() == before + 1  # only the label node made here
    assert movingNode.GetTransformNodeID() is None


def test_dice_is_one_for_identical_labels(logic, label_pair):
    p, _ = label_pair
    zero = Volume(np.zeros(p.labels.array.shape + (2,)), p.labels.spacing, p.labels.origin,
                  p.labels.direction.copy(), is_vector=True)
    mean, per_label = logic.dice(zero, p.labels, p.labels)
    assert mean == pytest.approx(1.0) and set(per_label.values()) == {1.0}


# ------------------------------------------------------------------ retrieval


def test_double_clicked_case_loads_into_the_scene(logic, tmp_path):
    images = _write_pngs(tmp_path / "images")
    db = tmp_path / "cases.db"
    logic.create_database(db)
    job = finish(logic.add_folder_job(db, tmp_path / "images", launcher=InProcessLauncher()))
    assert job.state == "succeeded" and "6 cases added" in job.result
    queryNode = add_volume(Volume(images[2].astype(np.float32)), "query")
    table = logic.query_database(db, queryNode, 3, slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode"))
    node = logic.load_case(table, 0)
    assert node.GetName().startswith("case2")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[0], images[2])
    Path(table.GetCellText(1, 1)).unlink()
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="gone"):
        logic.load_case(table, 1)
    with pytest.raises(ValueError, match="row"):
        logic.load_case(table, 7)
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    # A case added from the scene has its node name as source: that node is the case.
    logic.add_to_database(db, [queryNode])
    logic.query_database(db, queryNode, 1, table)
    assert table.GetCellText(0, 1) in ("query", str(tmp_path / "images" / "case2.png"))
    with pytest.raises(ValueError, match="database"):
        logic.add_folder_job(tmp_path / "missing.db", tmp_path / "images")


# --------------------------------------------------------------- dependencies


def test_pinned_requirements_equal_pyproject():
    import DeepSimilarityDependencies as deps

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert deps.REQUIREMENTS == project["dependencies"]


def test_missing_dependencies_are_installed_only_after_confirmation():
    import DeepSimilarityDependencies as deps

    installed = set()

    def find_spec(name):
        return None if name in ("torch", "monai") and name not in installed else object()

    asked, pip = [], []
    with pytest.raises(ValueError, match="not installed"):
        deps.ensure_dependencies(confirm=lambda text: asked.append(text) or False, install=pip.append,
                                 find_spec=find_spec)
    assert "torch==2.13.0 monai==1.6.1" in asked[0] and pip == []

    def install(text):
        pip.append(text)
        installed.update({"torch", "monai"})

    deps.ensure_dependencies(confirm=lambda text: True, install=install, find_spec=find_spec)
    assert pip == ["torch==2.13.0 monai==1.6.1"]
    deps.ensure_dependencies(confirm=lambda text: pytest.fail("asked again"), install=install, find_spec=find_spec)
    assert deps.missing_requirements() == []  # this environment has them all


# ------------------------------------------------- the widget's job handling


class _Widget:
    """Attributes standing in for Qt widgets (PythonQt exposes Qt properties as attributes)."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def setRange(self, lo, hi):
        self.range = (lo, hi)


class _Timer:
    def __init__(self):
        self.active, self.interval = False, None

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


@pytest.fixture
def widget(module, scene, monkeypatch):
    import types

    qt = types.ModuleType("qt")
    qt.QTimer = _Timer
    monkeypatch.setitem(sys.modules, "qt", qt)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text), raising=False)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    w = module.DeepSimilarityWidget.__new__(module.DeepSimilarityWidget)
    w._job, w.errors = None, errors
    w.ui = types.SimpleNamespace(cancelButton=_Widget(enabled=False), progressBar=_Widget(value=0, range=(0, 100)),
                                 statusLabel=_Widget(text=""), heatmapButton=_Widget(text="Compute heat map"),
                                 registerButton=_Widget(text="Register"))
    return w


def _python_job(script, on_success=None):
    import DeepSimilarityJobs as jobs

    return jobs.Job([sys.executable, "-c", script], "test job", on_success=on_success)


def _drive(w, timeout=30.0):
    deadline = time.monotonic() + timeout
    while w._job is not None:
        assert w._jobTimer.active and time.monotonic() < deadline
        w.onJobTimer()
        time.sleep(0.02)


def test_widget_apply_button_turns_into_cancel_and_back(widget):
    w, shown = widget, []
    script = "import json,time\nfor i in range(3):\n print(json.dumps({'progress': i / 2}), flush=True)\n time.sleep(0.05)"
    w.runJob(_python_job(script, on_success=lambda job: "result"), w.ui.heatmapButton, shown.append)
    assert w.ui.heatmapButton.text == "Cancel" and w.ui.cancelButton.enabled
    assert w.ui.progressBar.range == (0, 0) and w._jobTimer.interval <= 200
    with pytest.raises(ValueError, match="busy"):  # one job at a time
        w.cancelJobFrom(w.ui.registerButton)
    _drive(w)
    assert shown == ["result"] and w.ui.heatmapButton.text == "Compute heat map"
    assert not w.ui.cancelButton.enabled and w.ui.progressBar.value == 100 and not w._jobTimer.active
    assert w.cancelJobFrom(w.ui.heatmapButton) is False  # nothing running: the button applies again


def test_widget_cancel_and_failure_leave_one_message(widget):
    w, shown = widget, []
    w.runJob(_python_job("import time; time.sleep(30)"), w.ui.registerButton, shown.append)
    assert w.cancelJobFrom(w.ui.registerButton) is True
    assert w._job is None and w.ui.registerButton.text == "Register" and shown == []
    assert "Cancelled" in w.ui.statusLabel.text and w.errors == []
    w.runJob(_python_job("import sys; sys.exit('deepsim: error: --fixed: file not found')"), w.ui.registerButton,
             shown.append)
    _drive(w)
    assert shown == [] and w.errors == ["Test job failed: deepsim: error: --fixed: file not found"]
    assert w.ui.registerButton.text == "Register" and w.ui.progressBar.value == 0


def test_the_module_self_test_runs_headless(module, scene):
    """DeepSimilarityTest's heat map tests (one runs a real background deepsim process), as Slicer runs them;
    test_module_loads needs Slicer's parameter node wrapper and runs only in Slicer."""
    import unittest

    class SelfTest(module.DeepSimilarityTest, unittest.TestCase):
        def __init__(self):
            unittest.TestCase.__init__(self, "runTest")

        def delayDisplay(self, message):
            pass

        def runTest(self):
            self.test_heatmap_logic()
            slicer.mrmlScene.Clear(0)
            self.test_background_heatmap()

    result = unittest.TestResult()
    SelfTest().run(result)
    assert result.wasSuccessful(), result.errors + result.failures


def test_loading_the_module_imports_no_heavy_library():
    """Slicer imports every module at start-up: PyTorch and MONAI must wait for the first action."""
    import subprocess

    script = f"""
import sys, types
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "DeepSimilarity")!r}]
stub = types.ModuleType("slicer.ScriptedLoadableModule")
for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
             "ScriptedLoadableModuleTest"):
    setattr(stub, name, type(name, (), {{}}))
sys.modules[stub.__name__] = stub
wrapper = types.ModuleType("slicer.parameterNodeWrapper")
wrapper.parameterNodeWrapper = lambda cls: cls
wrapper.Choice = wrapper.WithinRange = lambda *a, **k: None
sys.modules[wrapper.__name__] = wrapper
import DeepSimilarity
heavy = sorted(m for m in ("torch", "monai", "skimage", "faiss") if m in sys.modules)
print("heavy:", heavy)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "heavy: []"


class _Combo(_Widget):
    def __init__(self):
        super().__init__(items=[], enabled=True)

    count = property(lambda self: len(self.items))
    currentText = property(lambda self: self.items[0] if self.items else "")

    def clear(self):
        self.items = []

    def addItem(self, text):
        self.items.append(text)

    def blockSignals(self, block):
        return False


def test_networks_panel_lists_shows_and_loads(module, scene, monkeypatch):
    import types

    import DeepSimilarityPanels as panels

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(panels, "ensure_dependencies", lambda: None)

    class Any(_Widget):
        def connect(self, signal, slot):
            self.slot = slot

        def setVisible(self, visible):
            self.visible = visible

        def setPlainText(self, text):
            self.plain = text

        def setReadOnly(self, value):
            self.readOnly = value

    names = {n for pair in panels.KIND_ROWS for n in pair} | {
        "loadShippedButton", "loadWeightsButton", "trainButton", "manifestTextBrowser", "currentNetworkLabel",
        "weightsPathLineEdit"}
    ui = types.SimpleNamespace(**{n: Any(text="", enabled=True, currentPath="") for n in names})
    ui.shippedWeightsComboBox = _Combo()
    ui.shippedWeightsComboBox.connect = lambda signal, slot: None
    widget = types.SimpleNamespace(ui=ui, logic=module.DeepSimilarityLogic())
    panel = panels.NetworksPanel(widget)
    assert ui.manifestTextBrowser.readOnly is True
    panel.showKind("hashing")
    assert ui.shippedWeightsComboBox.items == ["osdh_nih_64bit.pt"] and ui.loadShippedButton.enabled
    assert "Training data: nih" in ui.manifestTextBrowser.plain
    assert ui.bitsSpinBox.visible and ui.trainCsvPathLineEdit.visible and not ui.pairsSpinBox.visible
    panel.showKind("similarity")
    assert ui.pairsSpinBox.visible and ui.trainCtVolumeSelector.visible and not ui.epochsSpinBox.visible
    panel.showKind("registration")
    assert ui.trainVolumesSelector.visible and ui.trainVelocityCheckBox.visible and not ui.trainVolume3DCheckBox.visible
    panel.showKind("deepsim")
    assert ui.trainVolume3DCheckBox.visible
    assert not (ui.trainVolumesSelector.visible or ui.trainVelocityCheckBox.visible)
    # Checking 'Whole volume (3D)' raises a slice-sized epoch count to the command line's 3D default, and
    # leaves a larger one, or an unchecking, alone.
    from DeepSimilarityLib.cli.train_registration import FEATURE_EPOCHS

    assert panels.VOLUME_3D_EPOCHS == FEATURE_EPOCHS[3]
    widget._parameterNode = types.SimpleNamespace(epochs=10)
    ui.trainVolume3DCheckBox.slot(True)
    assert widget._parameterNode.epochs == FEATURE_EPOCHS[3]
    widget._parameterNode.epochs = 300
    ui.trainVolume3DCheckBox.slot(True)
    ui.trainVolume3DCheckBox.slot(False)
    assert widget._parameterNode.epochs == 300
    assert ui.addFeatureNetCheckBox.visible
    widget._parameterNode.addFeatureNet = True
    panel.onLoadShippedButton()
    assert ui.currentNetworkLabel.text == "deepsim_features_seg_2d.pt"
    widget.logic.networks["deepsim"] = [widget.logic.networks["deepsim"], "/x/seed1.pt"]
    panel.showCurrent()
    assert ui.currentNetworkLabel.text == "deepsim_features_seg_2d.pt + seed1.pt (ensemble of 2)"
    panel.showKind("similarity")
    assert not ui.addFeatureNetCheckBox.visible
    panel.onLoadShippedButton()  # 'add' applies to feature nets only: here it replaces, checked or not
    assert widget.logic.networks["similarity"].endswith("ctmr_similarity.pt")
    assert ui.currentNetworkLabel.text == "ctmr_similarity.pt"
    # Train: the checked 'Velocity field' reaches a registration net's training, and no other kind's.
    jobs = []
    monkeypatch.setattr(widget.logic, "training_job", lambda kind, out, **kw: jobs.append((kind, kw)) or "job")
    widget.cancelJobFrom = lambda button: False
    widget.runJob = lambda job, button, on_success: None
    ui.trainVolumesSelector.checkedNodes = lambda: []
    ui.trainOutputPathLineEdit = Any(currentPath="")
    widget._parameterNode = types.SimpleNamespace(
        epochs=1, pairs=10, bits=8, trainCtVolume=None, trainMrVolume=None, trainImageVolume=None,
        trainLabelVolume=None, registrationLoss="mse", trainVolume3D=False, addFeatureNet=False, trainVelocity=True)
    for kind in ("registration", "hashing"):
        panel.showKind(kind)
        panel.onTrainButton()
    assert [(kind, kw["velocity"]) for kind, kw in jobs] == [("registration", True), ("hashing", False)]
