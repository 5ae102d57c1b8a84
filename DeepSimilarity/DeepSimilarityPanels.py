"""Widget code of the Networks panel (kept out of DeepSimilarity.py so that it stays short).

Needs the Slicer application (Qt widgets of the module's .ui); the logic it
calls is in DeepSimilarityNetworks.
"""

import os

import slicer

from DeepSimilarityDependencies import ensure_dependencies

# 'deepsim train features --dims 3' default (FEATURE_EPOCHS[3] of the library's command line, which this
# module does not import at load time): one epoch is one step on the whole volume.
VOLUME_3D_EPOCHS = 120

# Inputs shown only for some model kinds: (label widget, input widget) -> the kinds that use them.
KIND_ROWS = {
    ("addFeatureNetLabel", "addFeatureNetCheckBox"): ("deepsim",),
    ("trainCtVolumeLabel", "trainCtVolumeSelector"): ("similarity",),
    ("trainMrVolumeLabel", "trainMrVolumeSelector"): ("similarity",),
    ("pairsLabel", "pairsSpinBox"): ("similarity",),
    ("trainImageVolumeLabel", "trainImageVolumeSelector"): ("deepsim",),
    ("trainLabelVolumeLabel", "trainLabelVolumeSelector"): ("deepsim",),
    ("trainVolume3DLabel", "trainVolume3DCheckBox"): ("deepsim",),
    ("trainVolumesLabel", "trainVolumesSelector"): ("registration",),
    ("trainVelocityLabel", "trainVelocityCheckBox"): ("registration",),
    ("trainImagesPathLabel", "trainImagesPathLineEdit"): ("siamese", "hashing"),
    ("trainCsvPathLabel", "trainCsvPathLineEdit"): ("siamese", "hashing"),
    ("bitsLabel", "bitsSpinBox"): ("hashing",),
    ("epochsLabel", "epochsSpinBox"): ("deepsim", "registration", "siamese", "hashing"),
}


class NetworksPanel:
    """Shipped weights list, manifest text, loading a file, training; the widget's ``ui`` holds the widgets."""

    def __init__(self, widget):
        self.widget = widget
        self.ui = widget.ui
        self.logic = widget.logic
        self._kind = None
        self.ui.shippedWeightsComboBox.connect("currentIndexChanged(int)", self.onShippedChanged)
        self.ui.loadShippedButton.connect("clicked(bool)", self.onLoadShippedButton)
        self.ui.loadWeightsButton.connect("clicked(bool)", self.onLoadWeightsButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.trainVolume3DCheckBox.connect("toggled(bool)", self.onVolume3DToggled)
        self.ui.manifestTextBrowser.setReadOnly(True)

    def showKind(self, kind) -> None:
        """List the shipped weights of ``kind`` and show only the training inputs it uses."""
        if kind == self._kind:
            return
        self._kind = kind
        combo = self.ui.shippedWeightsComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for name in self.logic.shipped_networks(kind):
            combo.addItem(name)
        combo.blockSignals(wasBlocked)
        for names, kinds in KIND_ROWS.items():
            for name in names:
                getattr(self.ui, name).setVisible(kind in kinds)
        self.ui.loadShippedButton.enabled = combo.count > 0
        self.onShippedChanged()
        self.showCurrent()

    def showCurrent(self) -> None:
        names = [os.path.basename(path) for path in self.logic.current_networks(self._kind)]
        text = " + ".join(names) or "shipped default (if any)"
        self.ui.currentNetworkLabel.text = text + (f" (ensemble of {len(names)})" if len(names) > 1 else "")

    def _add(self) -> bool:
        """'Add to the current feature nets' is checked and applies (DeepSim feature nets only)."""
        p = self.widget._parameterNode
        return self._kind == "deepsim" and p is not None and p.addFeatureNet

    def onShippedChanged(self, index=None) -> None:
        name = self.ui.shippedWeightsComboBox.currentText
        self.ui.manifestTextBrowser.setPlainText(self.logic.manifest_text(name) if name else
                                                 "No shipped weights of this kind: train or load a file.")

    def onLoadShippedButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not load the shipped weights.", waitCursor=True):
            ensure_dependencies()
            self.logic.load_shipped_network(self._kind, self.ui.shippedWeightsComboBox.currentText, add=self._add())
            self.showCurrent()

    def onLoadWeightsButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not load the weights file.", waitCursor=True):
            ensure_dependencies()
            path = self.logic.load_network_file(self._kind, self.ui.weightsPathLineEdit.currentPath, add=self._add())
            self.ui.manifestTextBrowser.setPlainText(f"{path}\n(your own file: no manifest entry)")
            self.showCurrent()

    def onVolume3DToggled(self, checked) -> None:
        """A 3D feature net's epoch is one step on the volume: raise a slice-sized epoch count to the
        command line's 3D default, which a user would otherwise have to know."""
        p = self.widget._parameterNode
        if checked and p is not None and p.epochs < VOLUME_3D_EPOCHS:
            p.epochs = VOLUME_3D_EPOCHS

    def onTrainButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start the training."):
            if self.widget.cancelJobFrom(self.ui.trainButton):
                return
            ensure_dependencies()
            p = self.widget._parameterNode
            job = self.logic.training_job(
                self._kind, self.ui.trainOutputPathLineEdit.currentPath or None, epochs=p.epochs, pairs=p.pairs,
                bits=p.bits, ctNode=p.trainCtVolume, mrNode=p.trainMrVolume, imageNode=p.trainImageVolume,
                labelNode=p.trainLabelVolume, images_folder=self.ui.trainImagesPathLineEdit.currentPath,
                labels_csv=self.ui.trainCsvPathLineEdit.currentPath, loss=p.registrationLoss,
                volume3D=p.trainVolume3D, trainingVolumes=self.ui.trainVolumesSelector.checkedNodes(), add=self._add(),
                velocity=self._kind == "registration" and p.trainVelocity)
            self.widget.runJob(job, self.ui.trainButton, self.onTrained)

    def onTrained(self, path) -> None:
        self.ui.manifestTextBrowser.setPlainText(f"Trained here: {path}\nIt is now the current network.")
        self.showCurrent()
