"""The module's Logic and node bridge on a real MRML scene (the ``slicer-core`` package, no Qt).

slicer-core has the MRML classes and ``slicer.util`` but not the scripted-module
base classes or the parameter node wrapper, which come with the Slicer
application; minimal stand-ins are installed for those only when absent, so
the Logic class under test is the module's own.
"""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

from DeepSimilarityLib.heatmap import similarity_heatmap  # noqa: E402
from DeepSimilarityLib.image_io import Volume  # noqa: E402
from DeepSimilarityLib.phantom import make_head_phantom  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "DeepSimilarity"
NET = ROOT / "weights" / "registration_deepsim_seg_2d.pt"


def _install_application_stubs():
    if "slicer.ScriptedLoadableModule" not in sys.modules:
        try:
            import slicer.ScriptedLoadableModule  # noqa: F401  (inside Slicer)
        except ImportError:
            stub = types.ModuleType("slicer.ScriptedLoadableModule")
            for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                         "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"):
                setattr(stub, name, type(name, (), {"__init__": lambda self, *a, **k: None}))
            sys.modules[stub.__name__] = stub
    if "slicer.parameterNodeWrapper" not in sys.modules:
        try:
            import slicer.parameterNodeWrapper  # noqa: F401  (inside Slicer)
        except ImportError:
            stub = types.ModuleType("slicer.parameterNodeWrapper")
            stub.parameterNodeWrapper = lambda cls: cls
            stub.Choice = stub.WithinRange = lambda *a, **k: None
            sys.modules[stub.__name__] = stub


@pytest.fixture(scope="module")
def module():
    _install_application_stubs()
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    import DeepSimilarity

    return DeepSimilarity


@pytest.fixture
def scene():
    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(1)


@pytest.fixture
def logic(module, scene):
    return module.DeepSimilarityLogic()


@pytest.fixture(scope="module")
def phantom():
    # Anisotropic, off-origin, rotated grid: any LPS/RAS or axis-order slip shows.
    p = make_head_phantom((96, 96), seed=3)
    direction = np.array([[0.0, -1.0], [1.0, 0.0]])
    place = dict(spacing=(2.5, 2.0), origin=(12.0, -30.0), direction=direction)
    return Volume(p.ct.array, **place), Volume(p.mr.array, **place)


def add_volume(volume, name, reference=None):
    import DeepSimilarityNodes as nodes

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    return nodes.update_node_from_volume(volume, node, reference)


def test_bridge_round_trip_keeps_geometry(module, scene, phantom):
    import DeepSimilarityNodes as nodes

    ct = phantom[0]
    node = add_volume(ct, "ct")
    # Slicer's own view of the node: RAS, spacing (i, j, k).
    assert node.GetSpacing()[:2] == pytest.approx((2.5, 2.0))
    assert node.GetOrigin()[:2] == pytest.approx((-12.0, 30.0))
    back = nodes.volume_from_node(node)
    assert back.ndim == 2 and back.same_grid(ct)
    np.testing.assert_array_equal(back.array, ct.array)
    # Voxel (i, j) = (5, 7) lands where the library puts it, in RAS.
    lps = ct.index_to_physical((5, 7))
    assert nodes.ras_from_index(node, (5, 7)) == pytest.approx([-lps[0], -lps[1], 0.0])
    # 3D volumes keep three axes.
    vol3 = Volume(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0))
    back3 = nodes.volume_from_node(add_volume(vol3, "v3"))
    assert back3.ndim == 3 and back3.same_grid(vol3)


def test_heatmap_node_has_the_library_scores_and_geometry(logic, phantom):
    import DeepSimilarityNodes as nodes

    ct, mr = phantom
    ctNode, mrNode = add_volume(ct, "ct"), add_volume(mr, "mr")
    point_ras = nodes.ras_from_index(ctNode, (40, 50))
    heat, best = logic.compute_heatmap(ctNode, mrNode, point_ras, metric="lcc", neighbourhood=11, patch_size=7)
    expected = similarity_heatmap(ct, mr, index=(40, 50), metric="lcc", patch_size=7, neighbourhood=11)
    got = nodes.volume_from_node(heat)
    assert got.array.shape == (11, 11)
    np.testing.assert_allclose(got.array, expected.scores.array, rtol=1e-5, atol=1e-6)
    assert got.same_grid(expected.scores)
    # The map's first voxel is the MR position 5 voxels before the point on both axes.
    assert nodes.ras_from_index(heat, (0, 0)) == pytest.approx(nodes.ras_from_index(mrNode, (35, 45)))
    assert heat.GetSpacing() == pytest.approx(mrNode.GetSpacing())
    heat_dirs, mr_dirs = np.zeros((3, 3)), np.zeros((3, 3))
    heat.GetIJKToRASDirections(heat_dirs)
    mrNode.GetIJKToRASDirections(mr_dirs)
    np.testing.assert_allclose(heat_dirs, mr_dirs)
    # The best point is the library's best voxel, in RAS.
    assert best == pytest.approx(nodes.ras_from_index(ctNode, expected.best_index[::-1]))
    # The CT against itself: the best match is the point itself.
    _, self_best = logic.compute_heatmap(ctNode, ctNode, point_ras, metric="lcc", neighbourhood=11, patch_size=7)
    assert self_best == pytest.approx(point_ras)
    display = heat.GetDisplayNode()
    assert display is not None and display.GetColorNode() is not None
    assert display.GetWindowLevelMin() == pytest.approx(float(got.array.min()), abs=1e-5)
    # A second call updates the same node.
    again, _ = logic.compute_heatmap(ctNode, mrNode, point_ras, metric="nmi", neighbourhood=5, patch_size=7,
                                     outputNode=heat)
    assert again is heat and nodes.volume_from_node(heat).array.shape == (5, 5)


def test_heatmap_metric_is_kept_between_maps_until_the_network_changes(logic, tmp_path):
    import os
    import shutil

    from DeepSimilarityLib.paths import shipped_weights

    net = tmp_path / "net.pt"
    shutil.copy(shipped_weights("ctmr_similarity.pt"), net)
    logic.networks["similarity"] = str(net)
    learned = logic._metric("learned")
    assert logic._metric("learned") is learned and logic._metric("nmi") is logic._metric("nmi")
    assert logic._metric("learned+nmi").metrics[0] is not learned  # its own object, also kept
    os.utime(net, ns=(1, 1))  # the file was replaced (a retrained network at the same path)
    assert logic._metric("learned") is not learned
    renewed = logic._metric("learned")
    logic.networks["similarity"] = str(shipped_weights("ctmr_similarity.pt"))  # another network chosen
    assert logic._metric("learned") is not renewed


def test_heatmap_rejects_bad_input(logic, phantom):
    ctNode = add_volume(phantom[0], "ct")
    with pytest.raises(ValueError, match="MR volume"):
        logic.compute_heatmap(ctNode, None, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="patch size"):
        logic.compute_heatmap(ctNode, ctNode, (0.0, 0.0, 0.0), patch_size=8)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="empty"):
        logic.compute_heatmap(empty, ctNode, (0.0, 0.0, 0.0))
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="point"):
        logic.compute_heatmap(ctNode, ctNode, (1e4, 1e4, 0.0), neighbourhood=5, patch_size=5)
    assert slicer.mrmlScene.GetNumberOfNodes() == before  # nothing half-made


def test_grid_transform_matches_the_library_field(module, scene, phantom):
    import DeepSimilarityNodes as nodes

    ct = phantom[0]
    fixedNode = add_volume(ct, "fixed")
    rng = np.random.default_rng(1)
    field = ct.with_array(rng.normal(0.0, 2.0, ct.array.shape + (2,)))  # LPS mm, fixed -> moving
    transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    nodes.grid_transform_from_field(field, transformNode, reference=fixedNode)
    grid = transformNode.GetTransformFromParent()
    for i, j in [(0, 0), (10, 20), (37, 81), (95, 95)]:
        p_lps = ct.index_to_physical((i, j))
        u = field.array[j, i]
        p_ras = nodes.ras_from_index(fixedNode, (i, j))
        moved = np.array(grid.TransformPoint(*p_ras))
        assert moved == pytest.approx(p_ras + np.array([-u[0], -u[1], 0.0]), abs=1e-6), (i, j)
        assert p_ras == pytest.approx([-p_lps[0], -p_lps[1], 0.0])
    stored = slicer.util.arrayFromGridTransform(transformNode)
    assert stored.shape == (1, 96, 96, 3)


@pytest.mark.skipif(not NET.is_file(), reason=f"shipped network {NET} missing")
def test_register_fills_the_transform_and_the_warped_volume(logic, phantom):
    import DeepSimilarityNodes as nodes
    from DeepSimilarityLib.registration.apply import register_deformable

    p = make_head_phantom((64, 64), seed=5)
    shifted = make_head_phantom((64, 64), seed=5, misalign=(0.0, (3.0, -2.0)))
    fixedNode, movingNode = add_volume(p.mr, "fixed"), add_volume(shifted.mr, "moving")
    transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    warpedNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    out = logic.register(fixedNode, movingNode, NET, transformNode, warpedNode, affine=None)
    assert out is transformNode
    assert movingNode.GetTransformNodeID() == transformNode.GetID()
    expected = register_deformable(p.mr, shifted.mr, NET, affine=None)
    grid = transformNode.GetTransformFromParent()
    for i, j in [(10, 10), (32, 32), (50, 20)]:
        u = expected.displacement.array[j, i]
        p_ras = nodes.ras_from_index(fixedNode, (i, j))
        assert np.array(grid.TransformPoint(*p_ras)) == pytest.approx(p_ras + [-u[0], -u[1], 0.0], abs=1e-4)
    warped = nodes.volume_from_node(warpedNode)
    assert warped.same_grid(p.mr)
    np.testing.assert_allclose(warped.array, expected.warped.array, atol=1e-4)


def test_register_rejects_bad_input(logic, phantom):
    fixedNode = add_volume(phantom[0], "fixed")
    transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    linear = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    with pytest.raises(ValueError, match="grid transform"):
        logic.register(fixedNode, fixedNode, NET, linear)
    with pytest.raises(ValueError, match="network"):
        logic.register(fixedNode, fixedNode, "/nonexistent.pt", transformNode)
    with pytest.raises(ValueError, match="moving volume"):
        logic.register(fixedNode, None, NET, transformNode)


def _write_pngs(folder, n=6):
    from DeepSimilarityLib.image_io import write_image

    folder.mkdir()
    rng = np.random.default_rng(2)
    images = []
    for i in range(n):
        image = (rng.random((32, 32)) * 255).astype(np.uint8)
        write_image(Volume(image), folder / f"case{i}.png")
        images.append(image)
    return images


def test_query_fills_the_results_table(logic, tmp_path):
    images = _write_pngs(tmp_path / "images")
    db_path = tmp_path / "cases.db"
    logic.create_database(db_path, "thumbnail-sign")
    with pytest.raises(ValueError, match="exists"):
        logic.create_database(db_path, "thumbnail-sign")
    assert len(logic.add_folder(db_path, tmp_path / "images").added) == 6
    queryNode = add_volume(Volume(images[3].astype(np.float32)), "query")
    tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    out = logic.query_database(db_path, queryNode, 3, tableNode)
    assert out is tableNode
    assert tableNode.GetNumberOfRows() == 3
    names = [tableNode.GetColumnName(c) for c in range(tableNode.GetNumberOfColumns())]
    assert names == ["rank", "source", "distance", "labels"]
    assert [tableNode.GetCellText(r, 0) for r in range(3)] == ["1", "2", "3"]
    assert Path(tableNode.GetCellText(0, 1)).name == "case3.png"  # the query image itself
    assert float(tableNode.GetCellText(0, 2)) == 0.0
    distances = [float(tableNode.GetCellText(r, 2)) for r in range(3)]
    assert distances == sorted(distances)
    # Volumes of the scene can be added too, under their node names.
    report = logic.add_to_database(db_path, [queryNode])
    assert len(report.added) == 1
    logic.query_database(db_path, queryNode, 2, tableNode)
    assert {tableNode.GetCellText(r, 1) for r in range(2)} >= {"query"}


def test_query_rejects_bad_input(logic, tmp_path):
    queryNode = add_volume(Volume(np.zeros((8, 8), np.float32)), "query")
    tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    with pytest.raises(ValueError, match="database"):
        logic.query_database(tmp_path / "missing.db", queryNode, 3, tableNode)
    with pytest.raises(ValueError, match="k"):
        logic.query_database(tmp_path / "missing.db", queryNode, 0, tableNode)
    with pytest.raises(ValueError, match="create it first"):
        logic.add_folder(tmp_path / "missing.db", tmp_path)
    logic.create_database(tmp_path / "cases.db")
    with pytest.raises(ValueError, match="folder"):
        logic.add_folder(tmp_path / "cases.db", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="volume to add"):
        logic.add_to_database(tmp_path / "new.db", [None])
    with pytest.raises(ValueError, match="results table"):
        logic.query_database(tmp_path / "missing.db", queryNode, 3, None)
