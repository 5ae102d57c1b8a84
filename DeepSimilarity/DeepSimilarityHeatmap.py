"""Similarity heat map logic: in-process for small 2D maps, a background job for slow ones.

Mixed into DeepSimilarityLogic. Both ways end in :meth:`show_heatmap`, which
puts the library's score volume into a node on the CT grid.
"""

import json
import os
import tempfile

# Scored positions above which a map is computed in the background (a 2D 31 x 31 map of NMI takes
# well under a second; an 81 x 81 map or any 3D map takes seconds to minutes).
IN_PROCESS_POSITIONS = 31 * 31

# The learned metric's arithmetic (DeepSimilarityLib.ctmr.learned_metric.PRECISIONS, repeated so that
# the module loads before the library's dependencies are installed; a test checks they agree).
PRECISIONS = ("auto", "float32", "bfloat16", "int8")


def _uses_network(metric: str) -> bool:
    """Whether ``metric`` (a name, or names joined by '+') includes the learned network."""
    return "learned" in metric.split("+")


def _precision_for(metric: str, precision: str) -> str:
    """The precision ``metric`` is computed in: ``precision`` for a map with the learned network, "auto"
    for the hand-made metrics, which have one arithmetic (the panel's choice applies to the network only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision if _uses_network(metric) else "auto"


def _heatmap_inputs(ctNode, mrNode, pointRAS, neighbourhood, patch_size):
    """``(ct, mr, index)``: the two volumes and the point's continuous CT voxel index ``(x, y[, z])``.

    Raises ``ValueError`` naming the node or parameter at fault.
    """
    import DeepSimilarityNodes as nodes

    ct = nodes.volume_from_node(ctNode, "CT volume")
    mr = nodes.volume_from_node(mrNode, "MR volume")
    if pointRAS is None or len(pointRAS) != 3:
        raise ValueError(f"point: expected a RAS position (3 values), got {pointRAS!r}")
    for name, value in (("neighbourhood", neighbourhood), ("patch size", patch_size)):
        if int(value) < 1 or int(value) % 2 == 0:
            raise ValueError(f"{name}: must be a positive odd number of voxels, got {value}")
    return ct, mr, nodes.index_from_ras(ctNode, pointRAS)[: ct.ndim]


class HeatmapLogicMixin:
    """Methods of DeepSimilarityLogic for the Similarity heat map panel."""

    HEATMAP_COLORS = "DeepSimilarityHeatMapColors"

    @staticmethod
    def heatmap_in_background(ctNode, neighbourhood, depth=None) -> bool:
        """Whether a map is slow enough for a background job: any 3D map, or a large 2D one."""
        import DeepSimilarityNodes as nodes

        if nodes.volume_from_node(ctNode, "CT volume").ndim == 3:
            return True
        return int(neighbourhood) ** 2 > IN_PROCESS_POSITIONS

    def _metricKey(self, metric, precision="auto"):
        weights = self.networks.get("similarity") if _uses_network(metric) else None
        stamp = os.stat(weights) if weights and os.path.exists(weights) else None
        # a retrained file is a new key
        return metric, weights, _precision_for(metric, precision), stamp and (stamp.st_mtime_ns, stamp.st_size)

    def _metric(self, metric, precision="auto"):
        """The metric object, kept between maps: building the learned one reads its file and, with
        ``precision`` "auto", times its precisions (about 0.5 s), which a point dragged with Auto update
        would otherwise pay per map."""
        from DeepSimilarityLib.patch_metrics import get_metric

        key = self._metricKey(metric, precision)
        cache = self.__dict__.setdefault("_heatmapMetrics", {})
        if key not in cache:
            for old in [k for k in cache if k[:3] == key[:3]]:
                del cache[old]
            cache[key] = get_metric(metric, weights=key[1], precision=key[2])
        return cache[key]

    def _settledPrecision(self, metric, precision="auto"):
        """The arithmetic this session's in-process maps of ``metric`` use: ``precision`` when the panel
        names one, else what "auto" settled on (None before the first in-process map).

        A background map passes it on, so that it equals the in-process map of the same point: left to
        itself, the job would time the precisions again and may settle on another one under load.
        """
        precision = _precision_for(metric, precision)
        if precision != "auto":
            return precision
        kept = self.__dict__.get("_heatmapMetrics", {}).get(self._metricKey(metric))
        learned = [m for m in getattr(kept, "metrics", (kept,)) if hasattr(m, "resolved_precision")]
        return learned[0].resolved_precision() if learned else None

    def compute_heatmap(self, ctNode, mrNode, pointRAS, metric="nmi", neighbourhood=81, patch_size=17,
                        outputNode=None, depth=None, precision="auto"):
        """Score the CT patch at ``pointRAS`` against the MR patches around it, in this process.

        Returns ``(heatmapVolumeNode, best_point_RAS)``: a scalar volume on the
        scored MR positions (CT grid, which the MR is resampled onto when the
        grids differ), shown with a colour table and a window spanning the
        scores, ready to be the foreground over the MR; and the RAS position of
        the best score. 2D maps for one-slice volumes, ``depth`` slices in 3D.
        The learned metric uses the current similarity network (Networks panel), in ``precision``
        (``PRECISIONS``; "auto": the fastest that agrees with float32, chosen once per session).
        """
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.heatmap import similarity_heatmap

        ct, mr, index = _heatmap_inputs(ctNode, mrNode, pointRAS, neighbourhood, patch_size)
        result = similarity_heatmap(ct, mr, index=index, metric=self._metric(metric, precision),
                                    patch_size=int(patch_size), neighbourhood=int(neighbourhood), depth=depth)
        node = self.show_heatmap(result.scores, ctNode, metric, outputNode)
        return node, nodes.ras_from_index(ctNode, result.best_index[::-1])

    def heatmap_job(self, ctNode, mrNode, pointRAS, metric="nmi", neighbourhood=81, patch_size=17,
                    outputNode=None, depth=None, launcher=None, precision="auto"):
        """:meth:`compute_heatmap` as a background :class:`Job` (``deepsim similarity heatmap``).

        ``job.result``: ``(heatmapVolumeNode, best_point_RAS)``, set when it succeeds.
        """
        import DeepSimilarityJobs as jobs
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.image_io import read_image, write_image

        ct, mr, index = _heatmap_inputs(ctNode, mrNode, pointRAS, neighbourhood, patch_size)
        if any(round(i) < 0 or round(i) >= n for i, n in zip(index, ct.array.shape[::-1])):
            raise ValueError("point: lies outside the CT volume")
        precision = self._settledPrecision(metric, precision)
        folder = tempfile.mkdtemp(prefix="DeepSimilarity-")
        path = {name: os.path.join(folder, name) for name in ("ct.nii.gz", "mr.nii.gz", "heat.nii.gz", "best.json")}
        write_image(ct, path["ct.nii.gz"])
        write_image(mr, path["mr.nii.gz"])
        args = ["similarity", "heatmap", "--ct", path["ct.nii.gz"], "--mr", path["mr.nii.gz"],
                "--index", ",".join(f"{i:.6f}" for i in index), "--metric", metric,
                "--patch-size", int(patch_size), "--neighbourhood", int(neighbourhood),
                "--out", path["heat.nii.gz"], "--out-json", path["best.json"]]
        if depth:
            args += ["--depth", int(depth)]
        if _uses_network(metric) and self.networks.get("similarity"):
            args += ["--weights", self.networks["similarity"]]
        if precision:
            args += ["--precision", precision]

        def on_success(job):
            scores = read_image(path["heat.nii.gz"])
            with open(path["best.json"], encoding="utf-8") as f:
                best = json.load(f)
            node = self.show_heatmap(scores, ctNode, metric, outputNode)
            return node, nodes.ras_from_index(ctNode, best["best_index_xyz"])

        return self.background_job(jobs.deepsim_command(*args), "the heat map", on_success, folder, launcher)

    def show_heatmap(self, scores, ctNode, metric, outputNode=None):
        """Put a score Volume into ``outputNode`` (made if None) on ``ctNode``'s slice, shown as a heat map."""
        import DeepSimilarityNodes as nodes

        if outputNode is None:
            outputNode = self._newNode("vtkMRMLScalarVolumeNode", f"{metric} heat map")
        nodes.update_node_from_volume(scores, outputNode, reference=ctNode)
        self._showAsHeatMap(outputNode, scores.array)
        return outputNode

    def _heatMapColorNode(self):
        """A colour table of the scene for heat maps; made once per scene (bare scenes have none)."""
        import slicer

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
