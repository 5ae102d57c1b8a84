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

# The panels' code lives beside this script (Qt-free logic mixins, the job runner, the dependency check).
from DeepSimilarityDependencies import ensure_dependencies  # noqa: E402
from DeepSimilarityHeatmap import PRECISIONS, HeatmapLogicMixin  # noqa: E402
from DeepSimilarityNetworks import NetworksLogicMixin  # noqa: E402
from DeepSimilarityPanels import NetworksPanel  # noqa: E402
from DeepSimilarityRegistration import RegistrationLogicMixin  # noqa: E402
from DeepSimilarityRetrieval import RetrievalLogicMixin  # noqa: E402


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

    # Networks (training options as named by the deepsim train commands)
    modelKind: Annotated[str, Choice(["similarity", "deepsim", "registration", "siamese", "hashing"])] = "similarity"
    trainCtVolume: vtkMRMLScalarVolumeNode
    trainMrVolume: vtkMRMLScalarVolumeNode
    trainImageVolume: vtkMRMLScalarVolumeNode
    trainLabelVolume: vtkMRMLLabelMapVolumeNode
    trainVolume3D: bool = False  # deepsim: a 3D feature net on the whole volume (--dims 3)
    addFeatureNet: bool = False  # deepsim: a loaded or trained feature net joins the current ones (an ensemble)
    trainVelocity: bool = False  # registration: the net integrates a stationary velocity field (--velocity)
    epochs: Annotated[int, WithinRange(1, 1000)] = 10
    pairs: Annotated[int, WithinRange(10, 100000)] = 2000
    bits: Annotated[int, WithinRange(8, 256)] = 64

    # Similarity heat map (patch and neighbourhood edges are odd, in voxels)
    ctVolume: vtkMRMLScalarVolumeNode
    mrVolume: vtkMRMLScalarVolumeNode
    point: vtkMRMLMarkupsFiducialNode
    metric: Annotated[str, Choice(["learned", "nmi", "lcc", "mind", "learned+nmi"])] = "nmi"
    heatmapPrecision: Annotated[str, Choice(list(PRECISIONS))] = "auto"  # the learned network's arithmetic
    neighbourhood: Annotated[int, WithinRange(3, 513)] = 81
    patchSize: Annotated[int, WithinRange(3, 65)] = 17
    autoUpdate: bool = False

    # Registration
    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    # deepsim has a shipped network; ncc and mse need one trained in the Networks panel.
    registrationLoss: Annotated[str, Choice(["deepsim", "ncc", "mse"])] = "deepsim"
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
        self._job = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepSimilarity.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # The .ui forwards the scene to every node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = DeepSimilarityLogic()
        self.networksPanel = NetworksPanel(self)

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
        self.ui.resultsTableWidget.connect("cellDoubleClicked(int,int)", self.onResultDoubleClicked)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)

        self._heatmapNode = None
        self._bestPointNode = None
        self._resultsTableNode = None
        self._observedPoint = None

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:  # no orphan process when the module is reloaded or Slicer quits
            self._job.cancel()
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
        """Follow the model kind (Networks panel) and the selected markups point (auto update)."""
        if self._parameterNode:
            self.networksPanel.showKind(self._parameterNode.modelKind)
        point = self._parameterNode.point if self._parameterNode else None
        if point is self._observedPoint:
            return
        if self._observedPoint is not None:
            self.removeObserver(self._observedPoint, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onPointModified)
        self._observedPoint = point
        if point is not None:
            self.addObserver(point, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onPointModified)

    def onPointModified(self, caller=None, event=None) -> None:
        if not (self._parameterNode and self._parameterNode.autoUpdate) or self._job is not None:
            return
        # Dragging sends many events: compute once the point has rested for a moment.
        import qt

        if not hasattr(self, "_heatmapTimer"):
            self._heatmapTimer = qt.QTimer()
            self._heatmapTimer.setSingleShot(True)
            self._heatmapTimer.setInterval(300)
            self._heatmapTimer.connect("timeout()", self.onHeatmapButton)
        self._heatmapTimer.start()

    # -- background jobs: one at a time; its Apply button turns into Cancel

    def runJob(self, job, button, onSuccess) -> None:
        """Start ``job`` and poll it from a timer; ``onSuccess(job.result)`` runs when it succeeds."""
        import qt

        self._job, self._jobButton, self._jobButtonText, self._jobOnSuccess = job, button, button.text, onSuccess
        button.text = "Cancel"
        self.ui.cancelButton.enabled = True
        self.ui.progressBar.setRange(0, 0)  # busy until the process reports a fraction
        self.ui.statusLabel.text = f"Running {job.description}..."
        if not hasattr(self, "_jobTimer"):
            self._jobTimer = qt.QTimer()
            self._jobTimer.setInterval(100)
            self._jobTimer.connect("timeout()", self.onJobTimer)
        job.start()
        self._jobTimer.start()
        self.onJobTimer()

    def cancelJobFrom(self, button) -> bool:
        """Cancel the running job if ``button`` is its Cancel button; refuse a second job. True if cancelled."""
        if self._job is None:
            return False
        if button is not self._jobButton:
            raise ValueError(f"busy: {self._job.description} is running; cancel it or wait")
        self.onCancelButton()
        return True

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.onJobTimer()

    def onJobTimer(self) -> None:
        job = self._job
        if job is None:
            return
        if job.poll():
            if job.progress is not None:
                self.ui.progressBar.setRange(0, 100)
                self.ui.progressBar.value = int(round(100 * job.progress))
            self.ui.statusLabel.text = f"Running {job.description}... {job.stage}"
            return
        self._jobTimer.stop()
        self._job = None
        self._jobButton.text = self._jobButtonText
        self._jobButton = None
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.value = 100 if job.state == "succeeded" else 0
        if job.state == "succeeded":
            self.ui.statusLabel.text = f"Finished {job.description}."
            with slicer.util.tryWithErrorDisplay(f"Could not show the result of {job.description}."):
                self._jobOnSuccess(job.result)
        elif job.state == "failed":
            self.ui.statusLabel.text = f"Failed: {job.error}"
            slicer.util.errorDisplay(f"{job.description[0].upper()}{job.description[1:]} failed: {job.error}")
        else:
            self.ui.statusLabel.text = f"Cancelled {job.description}; the scene is unchanged."

    # -- actions: each shows one error message and leaves the scene as it was

    def onHeatmapButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to compute the similarity heat map.", waitCursor=True):
            if self.cancelJobFrom(self.ui.heatmapButton):
                return
            ensure_dependencies()
            p = self._parameterNode
            if p.point is None or p.point.GetNumberOfControlPoints() < 1:
                raise ValueError("point: place one markups point on the CT")
            pointRAS = [0.0, 0.0, 0.0]
            p.point.GetNthControlPointPositionWorld(0, pointRAS)
            args = (p.ctVolume, p.mrVolume, pointRAS, p.metric, p.neighbourhood, p.patchSize)
            options = dict(outputNode=self._heatmapNode, precision=p.heatmapPrecision)
            if self.logic.heatmap_in_background(p.ctVolume, p.neighbourhood):
                job = self.logic.heatmap_job(*args, **options)
                self.runJob(job, self.ui.heatmapButton, self._showHeatmap)
            else:
                self._showHeatmap(self.logic.compute_heatmap(*args, **options))

    def _showHeatmap(self, result) -> None:
        heat, best = result
        self._heatmapNode = heat
        slicer.util.setSliceViewerLayers(background=self._parameterNode.mrVolume, foreground=heat,
                                         foregroundOpacity=0.5)
        colors = getattr(slicer.modules, "colors", None)
        if colors is not None:
            legend = colors.logic().AddDefaultColorLegendDisplayNode(heat)
            if legend is not None:
                legend.SetTitleText("similarity")
        node = self._bestPointNode
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "best match")
            node.SetLocked(True)
            self._bestPointNode = node
        node.RemoveAllControlPoints()
        node.AddControlPoint(list(best), "best")
        self.ui.statusLabel.text = f"Best match at RAS ({best[0]:.1f}, {best[1]:.1f}, {best[2]:.1f})"

    def onRegisterButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Registration failed.", waitCursor=True):
            if self.cancelJobFrom(self.ui.registerButton):
                return
            ensure_dependencies()
            p = self._parameterNode
            net = self.logic.networks.get("registration")
            if not net:
                if p.registrationLoss != "deepsim":
                    raise ValueError(f"network: no shipped network was trained with the {p.registrationLoss} loss; "
                                     "train one or load its weights file in the Networks panel")
                net = self.logic.network_for("registration", "registration_deepsim_seg_2d.pt")
            job = self.logic.registration_job(p.fixedVolume, p.movingVolume, net, p.outputTransform, p.outputVolume,
                                              fixedLabelNode=p.fixedLabel, movingLabelNode=p.movingLabel)
            self.runJob(job, self.ui.registerButton, self._showRegistration)

    def _showRegistration(self, transform) -> None:
        self._parameterNode.outputTransform = transform
        info = self.logic.lastRegistrationInfo
        text = f"Folding {100 * info['folding']:.2f}% of voxels, {info['seconds']['total']:.1f} s"
        if self.logic.lastDice is not None:
            mean, per_label = self.logic.lastDice
            self.ui.diceLabel.text = f"{mean:.3f} (mean of {len(per_label)} labels)"
            text += "; Dice per label: " + ", ".join(f"{k}: {v:.2f}" for k, v in sorted(per_label.items()))
        else:
            self.ui.diceLabel.text = "- (no label maps)"
        self.ui.statusLabel.text = text

    def _databasePath(self) -> str:
        path = self.ui.databasePathLineEdit.currentPath
        if not path:
            raise ValueError("database: choose a case database file")
        return path

    def onCreateDatabaseButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not create the case database.", waitCursor=True):
            ensure_dependencies()
            model = self.logic.networks.get("hashing") or self.logic.networks.get("siamese") or "thumbnail-sign"
            self.logic.create_database(self._databasePath(), model)
            self.ui.statusLabel.text = f"Created {self._databasePath()} for {os.path.basename(model)}"

    def onAddVolumeButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add the volume.", waitCursor=True):
            ensure_dependencies()
            report = self.logic.add_to_database(self._databasePath(), [self._parameterNode.queryVolume])
            self.ui.statusLabel.text = str(report)

    def onAddFolderButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add the folder."):
            if self.cancelJobFrom(self.ui.addFolderButton):
                return
            ensure_dependencies()
            job = self.logic.add_folder_job(self._databasePath(), self.ui.folderPathLineEdit.currentPath,
                                            self.ui.folderLabelsPathLineEdit.currentPath or None)
            self.runJob(job, self.ui.addFolderButton, lambda report: setattr(self.ui.statusLabel, "text", report))

    def onQueryButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Query failed.", waitCursor=True):
            import qt

            ensure_dependencies()
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

    def onResultDoubleClicked(self, row, column) -> None:
        with slicer.util.tryWithErrorDisplay("Could not load the case.", waitCursor=True):
            node = self.logic.load_case(self._resultsTableNode, row)
            slicer.util.setSliceViewerLayers(background=node, foreground=None)
            self.ui.statusLabel.text = f"Loaded case {node.GetName()}"


#
# DeepSimilarityLogic
#


class DeepSimilarityLogic(ScriptedLoadableModuleLogic, NetworksLogicMixin, HeatmapLogicMixin,
                          RegistrationLogicMixin, RetrievalLogicMixin):
    """Computations of the module, usable from Python without the GUI.

    The methods come per panel from the mixins (DeepSimilarityNetworks,
    DeepSimilarityHeatmap, DeepSimilarityRegistration, DeepSimilarityRetrieval);
    each is a thin layer over DeepSimilarityLib: MRML nodes are converted to
    library volumes by ``DeepSimilarityNodes`` (the one bridge), the library
    computes, in this process or as a background ``deepsim`` job (the ``*_job``
    methods, see DeepSimilarityJobs), and the results go back into nodes. No GUI
    code; bad input raises ValueError naming the node or parameter, before any
    node is changed. Heavy libraries are imported on first use.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastDice = None

    def getParameterNode(self):
        return DeepSimilarityParameterNode(super().getParameterNode())

    @staticmethod
    def _newNode(className, name):
        return slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GenerateUniqueName(name))


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
        self.setUp()
        self.test_background_heatmap()

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

    def _phantomNodes(self):
        """The 2D head phantom's CT and MR as scene nodes, and a RAS point near the skull."""
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.phantom import make_head_phantom

        phantom = make_head_phantom((64, 64), seed=1)
        scene = slicer.mrmlScene
        ctNode = nodes.update_node_from_volume(phantom.ct, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT"))
        mrNode = nodes.update_node_from_volume(phantom.mr, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR"))
        return ctNode, mrNode, nodes.ras_from_index(ctNode, (30, 34))

    def test_heatmap_logic(self):
        """A heat map of the 2D phantom: the CT against itself peaks at the point."""
        self.delayDisplay("Starting the heat map test")
        ctNode, mrNode, pointRAS = self._phantomNodes()
        logic = DeepSimilarityLogic()
        heat, best = logic.compute_heatmap(ctNode, mrNode, pointRAS, "nmi", neighbourhood=9, patch_size=7)
        self.assertEqual(slicer.util.arrayFromVolume(heat).shape, (1, 9, 9))
        _, best = logic.compute_heatmap(ctNode, ctNode, pointRAS, "lcc", neighbourhood=9, patch_size=7)
        for got, expected in zip(best, pointRAS):
            self.assertAlmostEqual(got, expected, places=3)
        with self.assertRaises(ValueError):
            logic.compute_heatmap(ctNode, None, pointRAS)
        self.delayDisplay("Heat map test passed")

    def test_background_heatmap(self):
        """The heat map as a background deepsim process (Slicer's Python) equals the in-process one."""
        self.delayDisplay("Starting the background job test")
        import time

        ctNode, mrNode, pointRAS = self._phantomNodes()
        logic = DeepSimilarityLogic()
        expected, _ = logic.compute_heatmap(ctNode, mrNode, pointRAS, "nmi", neighbourhood=9, patch_size=7)
        job = logic.heatmap_job(ctNode, mrNode, pointRAS, "nmi", neighbourhood=9, patch_size=7).start()
        deadline = time.time() + 300
        while job.poll():
            self.assertLess(time.time(), deadline)
            time.sleep(0.1)
        self.assertEqual(job.state, "succeeded", job.error)
        heat, _ = job.result
        self.assertLess(abs(slicer.util.arrayFromVolume(heat) - slicer.util.arrayFromVolume(expected)).max(), 1e-5)
        self.delayDisplay("Background job test passed")
