"""Retrieval panel logic: case databases, queries into a table node, loading a retrieved case.

Mixed into DeepSimilarityLogic. Adding a folder, the slow part, can run as a
background job (``deepsim index add``); creating, adding one scene volume and
querying are quick and run in-process.
"""

import os


class RetrievalLogicMixin:
    """Methods of DeepSimilarityLogic for the Retrieval panel."""

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

    def load_case(self, tableNode, row):
        """Load the case of a results-table row into the scene (a scalar volume named after it); returns the node.

        The case's stored source is its image file; a case added from a scene
        volume has the node name as source, and that node is returned when it is
        still in the scene. ValueError when neither exists.
        """
        import slicer

        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.errors import InputError
        from DeepSimilarityLib.image_io import read_image

        if tableNode is None or not 0 <= int(row) < tableNode.GetNumberOfRows():
            raise ValueError(f"row: {row} is not a row of the results table")
        source = tableNode.GetCellText(int(row), 1)
        if not os.path.exists(source):
            node = slicer.mrmlScene.GetFirstNodeByName(source)
            if node is not None and node.IsA("vtkMRMLScalarVolumeNode"):
                return node
            raise ValueError(f"case: its image '{source}' is gone (moved or deleted since it was indexed)")
        try:
            volume = read_image(source)
        except InputError as exc:
            raise ValueError(f"case: cannot read '{source}': {exc}") from None
        name = slicer.mrmlScene.GenerateUniqueName(os.path.basename(source).split(".")[0] or "case")
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        return nodes.update_node_from_volume(volume, node)

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

    @staticmethod
    def _checkFolderInput(db_path, folder, labels_csv):
        from DeepSimilarityLib.retrieval.databases import database_exists

        if not db_path or not database_exists(db_path):
            raise ValueError(f"database: '{db_path}' not found; create it first")
        if not folder or not os.path.isdir(str(folder)):
            raise ValueError(f"folder: '{folder}' is not a folder")
        if labels_csv and not os.path.isfile(str(labels_csv)):
            raise ValueError(f"labels CSV: '{labels_csv}' not found")

    def add_folder(self, db_path, folder, labels_csv=None):
        """Add every image of ``folder`` (labelled from ``labels_csv`` if given) to an existing database."""
        from DeepSimilarityLib.retrieval.databases import open_database
        from DeepSimilarityLib.retrieval.encoders import load_encoder

        self._checkFolderInput(db_path, folder, labels_csv)
        with open_database(db_path) as db:
            if not db.model:
                raise ValueError(f"model: the database {db_path} names no model")
            return db.add_folder(folder, load_encoder(db.model), labels_csv, progress=False)

    def add_folder_job(self, db_path, folder, labels_csv=None, launcher=None):
        """:meth:`add_folder` as a background :class:`Job` (``deepsim index add``); ``job.result``: its report line."""
        import DeepSimilarityJobs as jobs

        self._checkFolderInput(db_path, folder, labels_csv)
        args = ["index", "add", "--db", db_path, "--folder", folder] + (["--labels", labels_csv] if labels_csv else [])

        def on_success(job):
            return job.stdout[-1] if job.stdout else "added"

        return self.background_job(jobs.deepsim_command(*args), "adding the folder", on_success, None, launcher)

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
