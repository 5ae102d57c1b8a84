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
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)


#
# DeepSimilarityLogic
#


class DeepSimilarityLogic(ScriptedLoadableModuleLogic):
    """Computations of the module, usable from Python without the GUI.

    Capabilities arrive panel by panel (networks, similarity heat map,
    registration, retrieval), each a thin layer over DeepSimilarityLib that
    converts MRML nodes to library volumes and back. No GUI code here.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return DeepSimilarityParameterNode(super().getParameterNode())


#
# DeepSimilarityTest
#


class DeepSimilarityTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_module_loads()

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
