"""DeepSimilarity: learned similarity of medical images in 3D Slicer.

The computations live in the Slicer-free library DeepSimilarityLib; this
module is the user interface and the MRML glue. Heavy dependencies (PyTorch,
MONAI) are imported inside the logic when a panel needs them, never here, so
that Slicer starts quickly and the module loads without them.
"""

import importlib.util
import os
import sys
from typing import Annotated

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLTransformNode,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin


def ensureLibraryImportable():
    """Make ``import DeepSimilarityLib`` work from the source tree as well as once installed.

    Installed, the package sits beside this script in a folder Slicer already
    puts on ``sys.path``. In the source tree it sits one level up, beside the
    module folder.
    """
    if importlib.util.find_spec("DeepSimilarityLib") is None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


ensureLibraryImportable()


#
# DeepSimilarity
#


class DeepSimilarity(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DeepSimilarity"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["DeepSimilarity developers"]
        self.parent.helpText = """
Learned similarity of medical images.
<ul>
<li><b>Networks</b>: load shipped or your own weights, or train a network.</li>
<li><b>Similarity heat map</b>: score a CT patch at a point against every MR patch around it.</li>
<li><b>Registration</b>: register two volumes with a learned (DeepSim) or a classic loss.</li>
<li><b>Retrieval</b>: index cases and find those most similar to a volume.</li>
</ul>
See the <a href="https://github.com/deepsimilarity/SlicerDeepSimilarity">project page</a>.
"""
        self.parent.acknowledgementText = """
The methods follow:
<ul>
<li>X. Cheng, L. Zhang, Y. Zheng. Deep similarity learning for multimodal medical images.
Computer Methods in Biomechanics and Biomedical Engineering: Imaging &amp; Visualization, 2016.</li>
<li>Y.-A. Chung, W.-H. Weng. Learning deep representations of medical images using Siamese CNNs
with application to content-based image retrieval. NIPS 2017 Workshop on Machine Learning for Health.</li>
<li>S. Czolbe, O. Krause, A. Feragen. Semantic similarity metrics for learned image registration.
Medical Imaging with Deep Learning (MIDL), 2021.</li>
<li>Z. Chen et al. Order-sensitive deep hashing for multimorbidity
medical image retrieval. MICCAI 2018.</li>
</ul>
"""


#
# DeepSimilarityParameterNode
#


@parameterNodeWrapper
class DeepSimilarityParameterNode:
    """The module's state, saved with the scene and bound to the widgets named by ``SlicerParameterName``."""

    # Networks
    modelKind: Annotated[str, Choice(["similarity", "deepsim", "siamese", "hashing"])] = "similarity"
    epochs: Annotated[int, WithinRange(1, 1000)] = 10
    learningRate: Annotated[float, WithinRange(1e-6, 1.0)] = 1e-3

    # Similarity heat map (patch and neighbourhood edges are odd, in voxels)
    ctVolume: vtkMRMLScalarVolumeNode
    mrVolume: vtkMRMLScalarVolumeNode
    point: vtkMRMLMarkupsFiducialNode
    metric: Annotated[str, Choice(["learned", "nmi", "lcc", "mind"])] = "nmi"
    neighbourhood: Annotated[int, WithinRange(3, 513)] = 81
    patchSize: Annotated[int, WithinRange(3, 65)] = 17
    autoUpdate: bool = False

    # Registration
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    registrationLoss: Annotated[str, Choice(["deepsim", "ncc", "mse"])] = "ncc"
    outputTransform: vtkMRMLTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    fixedLabel: vtkMRMLLabelMapVolumeNode
    movingLabel: vtkMRMLLabelMapVolumeNode

    # Retrieval
    queryVolume: vtkMRMLScalarVolumeNode
    topK: Annotated[int, WithinRange(1, 100)] = 5


#
# DeepSimilarityWidget
#


class DeepSimilarityWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for scene observations
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepSimilarity.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui forwards the scene to every node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = DeepSimilarityLogic()

        # A closed scene takes its parameter node with it: drop the binding
        # before and make a fresh node after.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.heatmapButton.connect("clicked(bool)", self.onHeatmapButton)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.createDatabaseButton.connect("clicked(bool)", self.onCreateDatabaseButton)
        self.ui.addVolumeButton.connect("clicked(bool)", self.onAddVolumeButton)
        self.ui.addFolderButton.connect("clicked(bool)", self.onAddFolderButton)
        self.ui.queryButton.connect("clicked(bool)", self.onQueryButton)

        self._heatmapNode = None
        self._bestPointNode = None
        self._resultsTableNode = None
        self._observedPoint = None

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # Stop mirroring the parameter node while the module is not shown.
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Follow the selected markups point: recompute when it is dragged (if auto-update is on)."""
        point = self._parameterNode.point if self._parameterNode else None
        if point is self._observedPoint:
            return
        if self._observedPoint is not None:
            self.removeObserver(self._observedPoint, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onPointModified)
        self._observedPoint = point
        if point is not None:
            self.addObserver(point, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onPointModified)

    def onPointModified(self, caller=None, event=None) -> None:
        if not (self._parameterNode and self._parameterNode.autoUpdate):
            return
        # Dragging sends many events: compute once the point has rested for a moment.
        import qt

        if not hasattr(self, "_heatmapTimer"):
            self._heatmapTimer = qt.QTimer()
            self._heatmapTimer.setSingleShot(True)
            self._heatmapTimer.setInterval(300)
            self._heatmapTimer.connect("timeout()", self.onHeatmapButton)
        self._heatmapTimer.start()

    # -- actions: each shows one error message and leaves the scene as it was

    def onHeatmapButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to compute the similarity heat map.", waitCursor=True):
            p = self._parameterNode
            if p.point is None or p.point.GetNumberOfControlPoints() < 1:
                raise ValueError("point: place one markups point on the CT")
            pointRAS = [0.0, 0.0, 0.0]
            p.point.GetNthControlPointPositionWorld(0, pointRAS)
            heat, best = self.logic.compute_heatmap(p.ctVolume, p.mrVolume, pointRAS, p.metric, p.neighbourhood,
                                                    p.patchSize, outputNode=self._heatmapNode)
            self._heatmapNode = heat
            slicer.util.setSliceViewerLayers(background=p.mrVolume, foreground=heat, foregroundOpacity=0.5)
            self._showColorLegend(heat)
            self._showBestPoint(best)
            self.ui.statusLabel.text = f"Best match at RAS ({best[0]:.1f}, {best[1]:.1f}, {best[2]:.1f})"

    @staticmethod
    def _showColorLegend(volumeNode) -> None:
        colors = getattr(slicer.modules, "colors", None)
        if colors is not None:
            legend = slicer.modules.colors.logic().AddDefaultColorLegendDisplayNode(volumeNode)
            if legend is not None:
                legend.SetTitleText("similarity")

    def _showBestPoint(self, pointRAS) -> None:
        node = self._bestPointNode
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "best match")
            node.SetLocked(True)
            self._bestPointNode = node
        node.RemoveAllControlPoints()
        node.AddControlPoint(list(pointRAS), "best")

    def onRegisterButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Registration failed.", waitCursor=True):
            from DeepSimilarityLib.paths import weights_dir

            p = self._parameterNode
            net = self.ui.weightsPathLineEdit.currentPath
            if not net:
                if p.registrationLoss != "deepsim":
                    raise ValueError(f"network: no shipped network was trained with the {p.registrationLoss} loss; "
                                     "give its weights file in the Networks panel")
                net = str(weights_dir() / "registration_deepsim_seg_2d.pt")
            transform = p.outputTransform
            created = transform is None
            if created:
                transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "DeepSimilarity transform")
            try:
                self.logic.register(p.fixedVolume, p.movingVolume, net, transform, p.outputVolume)
            except Exception:
                if created:
                    slicer.mrmlScene.RemoveNode(transform)
                raise
            p.outputTransform = transform
            result = self.logic.lastRegistration
            self.ui.diceLabel.text = (f"Folding {100 * result.folding:.2f}% of voxels, "
                                      f"{result.seconds['total']:.1f} s")

    def _databasePath(self) -> str:
        path = self.ui.databasePathLineEdit.currentPath
        if not path:
            raise ValueError("database: choose a case database file")
        return path

    def onCreateDatabaseButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not create the case database.", waitCursor=True):
            model = self.ui.weightsPathLineEdit.currentPath or "thumbnail-sign"
            self.logic.create_database(self._databasePath(), model)
            self.ui.statusLabel.text = f"Created {self._databasePath()}"

    def onAddVolumeButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add the volume.", waitCursor=True):
            report = self.logic.add_to_database(self._databasePath(), [self._parameterNode.queryVolume])
            self.ui.statusLabel.text = str(report)

    def onAddFolderButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add the folder.", waitCursor=True):
            report = self.logic.add_folder(self._databasePath(), self.ui.folderPathLineEdit.currentPath)
            self.ui.statusLabel.text = str(report)

    def onQueryButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Query failed.", waitCursor=True):
            import qt

            p = self._parameterNode
            if self._resultsTableNode is None or slicer.mrmlScene.GetNodeByID(self._resultsTableNode.GetID()) is None:
                self._resultsTableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "retrieval results")
            table = self.logic.query_database(self._databasePath(), p.queryVolume, p.topK, self._resultsTableNode)
            view = self.ui.resultsTableWidget
            view.setRowCount(table.GetNumberOfRows())
            for row in range(table.GetNumberOfRows()):
                labels = table.GetCellText(row, 3)
                case = table.GetCellText(row, 1) + (f"  [{labels}]" if labels else "")
                for column, text in enumerate((table.GetCellText(row, 0), table.GetCellText(row, 2), case)):
                    view.setItem(row, column, qt.QTableWidgetItem(text))


#
# DeepSimilarityLogic
#


class DeepSimilarityLogic(ScriptedLoadableModuleLogic):
    """Computations of the module, usable from Python without the GUI.

    Each method is a thin layer over DeepSimilarityLib: MRML nodes are
    converted to library volumes by ``DeepSimilarityNodes`` (the one bridge),
    the library computes, and the results go back into nodes. No GUI code
    here; bad input raises ValueError naming the node or parameter, before
    any node is changed. Heavy libraries are imported on first use.
    """

    HEATMAP_COLORS = "DeepSimilarityHeatMapColors"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return DeepSimilarityParameterNode(super().getParameterNode())

    @staticmethod
    def _newNode(className, name):
        return slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GenerateUniqueName(name))

    # -- similarity heat map ------------------------------------------------

    def compute_heatmap(self, ctNode, mrNode, pointRAS, metric="nmi", neighbourhood=81, patch_size=17,
                        outputNode=None, depth=None):
        """Score the CT patch at ``pointRAS`` against the MR patches around it.

        Returns ``(heatmapVolumeNode, best_point_RAS)``: a scalar volume on the
        scored MR positions (CT grid, which the MR is resampled onto when the
        grids differ), shown with a colour table and a window spanning the
        scores, ready to be the foreground over the MR; and the RAS position of
        the best score. 2D maps for one-slice volumes, ``depth`` slices in 3D.
        """
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.heatmap import similarity_heatmap
        from DeepSimilarityLib.patch_metrics import get_metric

        ct = nodes.volume_from_node(ctNode, "CT volume")
        mr = nodes.volume_from_node(mrNode, "MR volume")
        if pointRAS is None or len(pointRAS) != 3:
            raise ValueError(f"point: expected a RAS position (3 values), got {pointRAS!r}")
        for name, value in (("neighbourhood", neighbourhood), ("patch size", patch_size)):
            if int(value) < 1 or int(value) % 2 == 0:
                raise ValueError(f"{name}: must be a positive odd number of voxels, got {value}")
        index = nodes.index_from_ras(ctNode, pointRAS)[: ct.ndim]
        result = similarity_heatmap(ct, mr, index=index, metric=get_metric(metric), patch_size=int(patch_size),
                                    neighbourhood=int(neighbourhood), depth=depth)
        if outputNode is None:
            outputNode = self._newNode("vtkMRMLScalarVolumeNode", f"{metric} heat map")
        nodes.update_node_from_volume(result.scores, outputNode, reference=ctNode)
        self._showAsHeatMap(outputNode, result.scores.array)
        best_ras = nodes.ras_from_index(ctNode, result.best_index[::-1])
        return outputNode, best_ras

    def _heatMapColorNode(self):
        """A colour table of the scene for heat maps; made once per scene (bare scenes have none)."""
        for nodeId in ("vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow"):
            node = slicer.mrmlScene.GetNodeByID(nodeId)
            if node is not None:
                return node
        node = slicer.mrmlScene.GetFirstNodeByName(self.HEATMAP_COLORS)
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", self.HEATMAP_COLORS)
            node.SetTypeToRainbow()
        return node

    def _showAsHeatMap(self, volumeNode, scores):
        if volumeNode.GetDisplayNode() is None:
            volumeNode.CreateDefaultDisplayNodes()
        display = volumeNode.GetDisplayNode()
        display.SetAndObserveColorNodeID(self._heatMapColorNode().GetID())
        lo, hi = float(scores.min()), float(scores.max())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(lo, hi if hi > lo else lo + 1e-6)
        display.SetInterpolate(False)  # one score per voxel: show the cells as computed

    # -- registration --------------------------------------------------------

    def register(self, fixedNode, movingNode, net_path, transformNode, warpedNode=None, affine="affine"):
        """Register ``movingNode`` to ``fixedNode`` with a registration network; returns ``transformNode``.

        ``net_path``: the network's weights file. ``transformNode`` (a
        vtkMRMLGridTransformNode) receives the displacement field and the
        moving node is placed under it, so it shows aligned at once;
        ``warpedNode`` (optional) receives the moving image resampled onto the
        fixed grid. ``affine``: pre-alignment kind, or None.
        """
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.registration.apply import register_deformable

        if transformNode is None or not transformNode.IsA("vtkMRMLGridTransformNode"):
            raise ValueError("output transform: select a grid transform node")
        if not net_path or not os.path.isfile(str(net_path)):
            raise ValueError(f"network: weights file '{net_path}' not found")
        fixed = nodes.volume_from_node(fixedNode, "fixed volume")
        moving = nodes.volume_from_node(movingNode, "moving volume")
        if fixedNode is movingNode:
            raise ValueError("moving volume: must differ from the fixed volume")
        result = register_deformable(fixed, moving, str(net_path), affine=affine)
        nodes.grid_transform_from_field(result.displacement, transformNode, reference=fixedNode)
        movingNode.SetAndObserveTransformNodeID(transformNode.GetID())
        if warpedNode is not None:
            nodes.update_node_from_volume(result.warped, warpedNode, reference=fixedNode)
        self.lastRegistration = result
        return transformNode

    # -- retrieval -----------------------------------------------------------

    @staticmethod
    def _queryImage(volume):
        """The 2D image a volume queries with: itself, or its middle slice."""
        return volume.array if volume.ndim == 2 else volume.array[volume.array.shape[0] // 2]

    def query_database(self, db_path, volumeNode, k, tableNode, model=None):
        """Fill ``tableNode`` with the ``k`` cases of the database most similar to the volume.

        Columns: rank, source, distance (bits for hash codes), labels (joined
        by "|"). ``model``: the encoder (a file or a built-in name); default:
        the one the database was created with. Returns ``tableNode``.
        """
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.retrieval.databases import database_exists, open_database
        from DeepSimilarityLib.retrieval.encoders import load_encoder

        if tableNode is None:
            raise ValueError("results table: no table node given")
        if int(k) < 1:
            raise ValueError(f"k: must be at least 1, got {k}")
        if not db_path or not database_exists(db_path):
            raise ValueError(f"database: '{db_path}' not found")
        image = self._queryImage(nodes.volume_from_node(volumeNode, "query volume"))
        with open_database(db_path) as db:
            model = model or db.model
            if not model:
                raise ValueError(f"model: the database {db_path} names no model; give one")
            matches = db.query_images([image], load_encoder(model), k=int(k))[0]
        self._fillTable(tableNode, matches)
        return tableNode

    @staticmethod
    def _fillTable(tableNode, matches):
        import vtk

        columns = {"rank": vtk.vtkIntArray(), "source": vtk.vtkStringArray(),
                   "distance": vtk.vtkDoubleArray(), "labels": vtk.vtkStringArray()}
        for name, column in columns.items():
            column.SetName(name)
        for rank, match in enumerate(matches, 1):
            columns["rank"].InsertNextValue(rank)
            columns["source"].InsertNextValue(str(match.source))
            columns["distance"].InsertNextValue(float(match.distance))
            columns["labels"].InsertNextValue("|".join(match.labels))
        wasModifying = tableNode.StartModify()
        tableNode.RemoveAllColumns()
        for column in columns.values():
            tableNode.AddColumn(column)
        tableNode.EndModify(wasModifying)

    def create_database(self, db_path, model="thumbnail-sign"):
        """Create an empty case database for ``model``'s codes (a model file or a built-in encoder)."""
        from DeepSimilarityLib.retrieval.databases import create_database, database_exists
        from DeepSimilarityLib.retrieval.encoders import load_encoder

        if not db_path:
            raise ValueError("database: no file given")
        if database_exists(db_path):
            raise ValueError(f"database: {db_path} exists already")
        encoder = load_encoder(model)
        reference = str(os.path.abspath(model)) if os.path.exists(str(model)) else str(model)
        create_database(db_path, encoder.model_id, encoder.kind, encoder.size, model=reference).close()

    def add_folder(self, db_path, folder, labels_csv=None):
        """Add every image of ``folder`` (labelled from ``labels_csv`` if given) to an existing database."""
        from DeepSimilarityLib.retrieval.databases import database_exists, open_database
        from DeepSimilarityLib.retrieval.encoders import load_encoder

        if not db_path or not database_exists(db_path):
            raise ValueError(f"database: '{db_path}' not found; create it first")
        if not folder or not os.path.isdir(str(folder)):
            raise ValueError(f"folder: '{folder}' is not a folder")
        with open_database(db_path) as db:
            if not db.model:
                raise ValueError(f"model: the database {db_path} names no model")
            return db.add_folder(folder, load_encoder(db.model), labels_csv, progress=False)

    def add_to_database(self, db_path, volumeNodes, model="thumbnail-sign", labels=None):
        """Add volumes (their 2D image or middle slice) to a case database, created if missing.

        Sources are the node names. ``labels``: one list of labels per node.
        Returns the library's AddReport.
        """
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.retrieval.case_store import NewCase
        from DeepSimilarityLib.retrieval.databases import database_exists, open_database
        from DeepSimilarityLib.retrieval.encoders import load_encoder

        if not db_path:
            raise ValueError("database: no file given")
        images = [self._queryImage(nodes.volume_from_node(n, "volume to add")) for n in volumeNodes]
        labels = labels or [()] * len(images)
        cases = [NewCase(n.GetName(), image=im, labels=list(lab)) for n, im, lab in zip(volumeNodes, images, labels)]
        if not database_exists(db_path):
            self.create_database(db_path, model)
        with open_database(db_path) as db:
            return db.add(cases, load_encoder(db.model or model), progress=False)


#
# DeepSimilarityTest
#


class DeepSimilarityTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_module_loads()
        self.setUp()
        self.test_heatmap_logic()

    def test_module_loads(self):
        self.delayDisplay("Starting the module loading test")

        import DeepSimilarityLib

        self.assertTrue(DeepSimilarityLib.__version__)

        logic = DeepSimilarityLogic()
        self.assertIsNotNone(logic)

        parameterNode = logic.getParameterNode()
        self.assertEqual(parameterNode.neighbourhood, 81)
        self.assertEqual(parameterNode.patchSize, 17)
        self.assertIsNone(parameterNode.ctVolume)

        self.delayDisplay("Module loading test passed")

    def test_heatmap_logic(self):
        """A heat map of the 2D phantom: the CT against itself peaks at the point."""
        self.delayDisplay("Starting the heat map test")
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.phantom import make_head_phantom

        phantom = make_head_phantom((64, 64), seed=1)
        scene = slicer.mrmlScene
        ctNode = nodes.update_node_from_volume(phantom.ct, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT"))
        mrNode = nodes.update_node_from_volume(phantom.mr, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR"))
        pointRAS = nodes.ras_from_index(ctNode, (30, 34))
        logic = DeepSimilarityLogic()
        heat, best = logic.compute_heatmap(ctNode, mrNode, pointRAS, "nmi", neighbourhood=9, patch_size=7)
        self.assertEqual(slicer.util.arrayFromVolume(heat).shape, (1, 9, 9))
        _, best = logic.compute_heatmap(ctNode, ctNode, pointRAS, "lcc", neighbourhood=9, patch_size=7)
        for got, expected in zip(best, pointRAS):
            self.assertAlmostEqual(got, expected, places=3)
        with self.assertRaises(ValueError):
            logic.compute_heatmap(ctNode, None, pointRAS)
        self.delayDisplay("Heat map test passed")
