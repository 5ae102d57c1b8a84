"""Registration panel logic: a registration network applied in-process or in a background job, and Dice.

Mixed into DeepSimilarityLogic. Both ways end in :meth:`apply_registration`,
the one place where results enter the scene: the grid transform, the moving
volume placed under it, the warped volume and the Dice of the label maps.
"""

import json
import os
import tempfile


class RegistrationLogicMixin:
    """Methods of DeepSimilarityLogic for the Registration panel."""

    @staticmethod
    def _registration_inputs(fixedNode, movingNode, net_path, transformNode, fixedLabelNode, movingLabelNode):
        """Checked inputs as library Volumes; ValueError naming the node before any change."""
        import DeepSimilarityNodes as nodes

        if transformNode is not None and not transformNode.IsA("vtkMRMLGridTransformNode"):
            raise ValueError("output transform: select a grid transform node")
        if not net_path or not os.path.isfile(str(net_path)):
            raise ValueError(f"network: weights file '{net_path}' not found")
        fixed = nodes.volume_from_node(fixedNode, "fixed volume")
        moving = nodes.volume_from_node(movingNode, "moving volume")
        if fixedNode is movingNode:
            raise ValueError("moving volume: must differ from the fixed volume")
        if (fixedLabelNode is None) != (movingLabelNode is None):
            raise ValueError("labels: give both the fixed and the moving label maps for Dice, or neither")
        labels = None
        if fixedLabelNode is not None:
            labels = (nodes.volume_from_node(fixedLabelNode, "fixed labels"),
                      nodes.volume_from_node(movingLabelNode, "moving labels"))
            for name, lab in zip(("fixed labels", "moving labels"), labels):
                if not lab.array.any():
                    raise ValueError(f"{name}: the label map is empty (only background)")
        return fixed, moving, labels

    def register(self, fixedNode, movingNode, net_path, transformNode, warpedNode=None, affine="affine",
                 fixedLabelNode=None, movingLabelNode=None):
        """Register ``movingNode`` to ``fixedNode`` with a registration network, in this process;
        returns ``transformNode``.

        ``net_path``: the network's weights file. ``transformNode`` (a
        vtkMRMLGridTransformNode) receives the displacement field and the
        moving node is placed under it, so it shows aligned at once;
        ``warpedNode`` (optional) receives the moving image resampled onto the
        fixed grid. ``affine``: pre-alignment kind, or None. With both label
        maps, ``self.lastDice`` holds ``(mean, {label: dice})``.
        """
        from DeepSimilarityLib.registration.apply import register_deformable

        if transformNode is None:
            raise ValueError("output transform: select a grid transform node")
        fixed, moving, labels = self._registration_inputs(fixedNode, movingNode, net_path, transformNode,
                                                          fixedLabelNode, movingLabelNode)
        result = register_deformable(fixed, moving, str(net_path), affine=affine)
        self.lastRegistration = result
        self.apply_registration(result.displacement, result.warped, fixedNode, movingNode, transformNode, warpedNode,
                                labels)
        return transformNode

    def registration_job(self, fixedNode, movingNode, net_path, transformNode=None, warpedNode=None,
                         affine="affine", fixedLabelNode=None, movingLabelNode=None, launcher=None):
        """The same registration as a background :class:`Job` (``deepsim register --method deformable``).

        The scene changes only when the job succeeds; without ``transformNode``
        a grid transform node is created then. ``job.result``: the transform node.
        """
        import DeepSimilarityJobs as jobs
        from DeepSimilarityLib.image_io import read_image, write_image

        fixed, moving, labels = self._registration_inputs(fixedNode, movingNode, net_path, transformNode,
                                                          fixedLabelNode, movingLabelNode)
        folder = tempfile.mkdtemp(prefix="DeepSimilarity-")
        path = {name: os.path.join(folder, name) for name in ("fixed.nii.gz", "moving.nii.gz", "field.nii.gz",
                                                                "warped.nii.gz", "result.json")}
        write_image(fixed, path["fixed.nii.gz"])
        write_image(moving, path["moving.nii.gz"])
        args = jobs.deepsim_command("register", "--method", "deformable", "--net", net_path,
                                    "--pre-align", affine or "none", "--fixed", path["fixed.nii.gz"],
                                    "--moving", path["moving.nii.gz"], "--out-field", path["field.nii.gz"],
                                    "--out-warped", path["warped.nii.gz"], "--out-json", path["result.json"])

        def on_success(job):
            field = read_image(path["field.nii.gz"], color="keep")
            warped = read_image(path["warped.nii.gz"])
            with open(path["result.json"], encoding="utf-8") as f:
                self.lastRegistrationInfo = json.load(f)
            transform = transformNode
            if transform is None:
                import slicer

                transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "DeepSimilarity transform")
            self.apply_registration(field, warped, fixedNode, movingNode, transform, warpedNode, labels)
            return transform

        return self.background_job(args, "registration", on_success, folder, launcher)

    def apply_registration(self, field, warped, fixedNode, movingNode, transformNode, warpedNode=None, labels=None):
        """Put a registration result (library field and warped image) into the scene; Dice if ``labels``."""
        import DeepSimilarityNodes as nodes

        self.lastDice = self.dice(field, *labels) if labels is not None else None
        nodes.grid_transform_from_field(field, transformNode, reference=fixedNode)
        movingNode.SetAndObserveTransformNodeID(transformNode.GetID())
        if warpedNode is not None:
            nodes.update_node_from_volume(warped, warpedNode, reference=fixedNode)
        return transformNode

    @staticmethod
    def dice(field, fixed_labels, moving_labels):
        """``(mean, {label: dice})`` of the fixed labels and the moving labels warped by ``field`` (nearest neighbour).

        ``field``: the library's displacement field (fixed -> moving, LPS) on the fixed grid.
        """
        from DeepSimilarityLib.image_io import resample_to
        from DeepSimilarityLib.registration.apply import to_sitk_transform
        from DeepSimilarityLib.registration.evaluate import dice_scores

        warped = resample_to(moving_labels, fixed_labels, to_sitk_transform(field), interpolation="nearest")
        scores = dice_scores(warped.array.round().astype(int), fixed_labels.array.round().astype(int))
        if not scores:
            raise ValueError("labels: the label maps share no label")
        return sum(scores.values()) / len(scores), scores
