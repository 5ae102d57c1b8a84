"""Networks panel logic: shipped weights, their manifest, loading a file, training in the background.

Mixed into DeepSimilarityLogic. The module keeps one *current* network per
kind (``self.networks``); the other panels use it (learned heat map metric,
registration network, retrieval encoder). DeepSim feature nets may be several
(``add=True``): a registration net trained here then averages its DeepSim loss
over them, as ``deepsim train registration --features a.pt b.pt`` does. No GUI
code; bad input raises ValueError naming the parameter before anything changes.
"""

import datetime
import json
import os
import tempfile

# The model kinds of the Networks panel -> the "kind" of their weights/manifest.json entries.
MANIFEST_KINDS = {
    "similarity": "ctmr-similarity",
    "deepsim": "deepsim-features",
    "registration": "deepsim-registration",
    "siamese": "retrieval-siamese",
    "hashing": "retrieval-hashing",
}
KIND_TITLES = {
    "similarity": "CT/MR patch similarity",
    "deepsim": "DeepSim feature net",
    "registration": "registration net",
    "siamese": "Siamese retrieval",
    "hashing": "hashing retrieval",
}


def _check_kind(kind):
    if kind not in MANIFEST_KINDS:
        raise ValueError(f"model kind: {kind!r} is not one of {', '.join(MANIFEST_KINDS)}")


def _check_add(kind, add) -> None:
    if add and kind != "deepsim":
        raise ValueError(f"add: only DeepSim feature nets form an ensemble, not {KIND_TITLES[kind]} networks")


def _load_as(kind, path):
    """Load ``path`` with the loader of ``kind``; what is loaded tells whether the file is that kind."""
    if kind == "similarity":
        from DeepSimilarityLib.ctmr import load_net

        load_net(path)
    elif kind == "deepsim":
        from DeepSimilarityLib.registration.feature_net import load_feature_net

        load_feature_net(path)
    elif kind == "registration":
        from DeepSimilarityLib.registration.network import load_registration_net

        load_registration_net(path)
    else:
        from DeepSimilarityLib.retrieval.models_io import load_model

        net = load_model(path)[0]
        if net.config.get("kind") != kind:
            raise ValueError(f"it holds a {net.config.get('kind')} model")


def _check_feature_ensemble(paths) -> None:
    """ValueError unless the DeepSim feature nets at ``paths`` can be averaged (the library's
    ``ensemble_key``: same depth, dimension and mode), naming the first file that cannot."""
    from DeepSimilarityLib.registration.feature_net import ensemble_key, load_feature_net

    def describe(key):
        levels, dims, mode = key
        return f"{dims}D, {mode}, {levels} levels"

    keys = [ensemble_key(load_feature_net(p)) for p in paths]
    for path, key in zip(paths[1:], keys[1:]):
        if key != keys[0]:
            raise ValueError(f"DeepSim feature net: {os.path.basename(str(path))} ({describe(key)}) cannot join "
                             f"{os.path.basename(str(paths[0]))} ({describe(keys[0])}) in one ensemble; uncheck "
                             "'Add to the current feature nets' to replace them")


class NetworksLogicMixin:
    """Methods of DeepSimilarityLogic for the Networks panel."""

    @property
    def networks(self) -> dict:
        """Current weights file per model kind (absent: the shipped default, where there is one); for
        ``deepsim``, a list of files when several feature nets form an ensemble."""
        if not hasattr(self, "_networks"):
            self._networks = {}
        return self._networks

    @staticmethod
    def manifest_entries(kind=None) -> list:
        """Entries of the shipped ``weights/manifest.json``, those of one panel kind if given."""
        from DeepSimilarityLib.paths import weights_dir

        if kind is not None:
            _check_kind(kind)
        try:
            manifest = json.loads((weights_dir() / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [e for e in manifest.get("models", []) if kind is None or e.get("kind") == MANIFEST_KINDS[kind]]

    def shipped_networks(self, kind) -> list:
        """File names of the shipped weights of ``kind``."""
        return [e["file"] for e in self.manifest_entries(kind)]

    def manifest_text(self, file_name) -> str:
        """Human-readable manifest entry of a shipped weights file: data, date, hyper-parameters, evaluation."""
        entry = next((e for e in self.manifest_entries() if e.get("file") == file_name), None)
        if entry is None:
            raise ValueError(f"weights: {file_name!r} has no entry in weights/manifest.json")
        data = entry.get("training_data", "-")
        if isinstance(data, dict):  # written by `deepsim train all`: folder, description, counts
            data = "; ".join([str(data.get("description", ""))] +
                             [f"{k.replace('_', ' ')} {v}" for k, v in data.items() if k != "description"])
        lines = [f"{entry['file']}  ({entry.get('kind', '?')}, {entry.get('date', 'no date')})",
                 f"Training data: {data}"]
        for title, key in (("Hyper-parameters", "hyper_parameters"), ("Held-out scores", "held_out_scores"),
                           ("Evaluation", "evaluation"), ("Architecture", "architecture")):
            if entry.get(key):
                lines.append(f"{title}: " + json.dumps(entry[key], indent=1, default=str))
        if entry.get("command"):
            lines.append(f"Trained with: {entry['command']}")
        lines.append(f"sha256: {entry.get('sha256', '-')}")
        return "\n".join(lines)

    def load_shipped_network(self, kind, file_name, add=False):
        """Make a shipped weights file the current ``kind`` network, after its sha256 check; returns its path.

        ``add``: see :meth:`make_current`."""
        from DeepSimilarityLib.errors import InputError
        from DeepSimilarityLib.paths import shipped_weights

        _check_kind(kind)
        if file_name not in self.shipped_networks(kind):
            raise ValueError(f"weights: {file_name!r} is not a shipped {KIND_TITLES[kind]} network")
        try:
            path = shipped_weights(file_name)
        except InputError as exc:
            raise ValueError(f"weights: {exc}") from None
        return self.make_current(kind, str(path), add)

    def load_network_file(self, kind, path, add=False):
        """Make a weights file the current ``kind`` network after loading it as one; returns the path.

        ``add``: see :meth:`make_current`."""
        _check_kind(kind)
        _check_add(kind, add)
        if not path or not os.path.isfile(str(path)):
            raise ValueError(f"weights: file '{path}' not found")
        try:
            _load_as(kind, str(path))
        except Exception as exc:  # any loader error means: not a usable network of this kind
            raise ValueError(f"weights: {path} is not a {KIND_TITLES[kind]} network ({exc})") from None
        return self.make_current(kind, os.path.abspath(str(path)), add)

    def make_current(self, kind, path, add=False) -> str:
        """``path`` becomes the current ``kind`` network; returns it.

        ``add`` (DeepSim feature nets only): it joins the current feature nets instead of replacing them, if
        all have the same depth, dimension and mode; with none current it is the first.
        """
        _check_add(kind, add)
        current = self.current_networks(kind) if add else []
        if path in current:
            return path
        if current:
            _check_feature_ensemble(current + [path])
        self.networks[kind] = current + [path] if current else path
        return path

    def current_networks(self, kind) -> list:
        """The current ``kind`` network's file as a one-item list, or the files of a feature-net ensemble;
        [] when none is current."""
        current = self.networks.get(kind)
        return [] if not current else list(current) if isinstance(current, list) else [current]

    def network_for(self, kind, default_file=None):
        """Current ``kind`` network (a list for a feature-net ensemble), else the shipped ``default_file``
        (sha256-checked), else None."""
        if self.networks.get(kind):
            return self.networks[kind]
        if default_file:
            return self.load_shipped_network(kind, default_file)
        return None

    # -- training ------------------------------------------------------------

    def training_job(self, kind, out_path=None, epochs=10, pairs=2000, bits=64, ctNode=None, mrNode=None,
                     imageNode=None, labelNode=None, images_folder=None, labels_csv=None, loss="deepsim",
                     threads=0, launcher=None, volume3D=False, trainingVolumes=None, add=False, velocity=False):
        """A background :class:`Job` training a ``kind`` network; on success it becomes the current one.

        Inputs per kind: ``similarity`` a registered CT/MR pair of scene volumes (``pairs``);
        ``deepsim`` an image and its label map (``epochs``), trained on its slices, or as a whole
        volume when ``volume3D`` (a 3D feature net; the label map may have another grid);
        ``registration`` with ``loss`` (``epochs``) on two or more ``trainingVolumes`` of one modality
        (2D or 3D), or on the shared brain MR data when none are given; ``siamese`` and ``hashing`` an
        image folder with a labels CSV (``epochs``, ``bits``). ``out_path``: the weights file (default:
        ~/DeepSimilarity/networks/). ``add`` (``deepsim``): the trained net joins the current feature
        nets (:meth:`make_current`) instead of replacing them, trained with seed = their number. ``velocity``
        (``registration``): the net integrates a stationary velocity field (``--velocity``).
        """
        import DeepSimilarityJobs as jobs
        import DeepSimilarityNodes as nodes
        from DeepSimilarityLib.image_io import write_image

        _check_kind(kind)
        _check_add(kind, add)
        if velocity and kind != "registration":
            raise ValueError(f"velocity: only registration networks integrate a field, not {KIND_TITLES[kind]} "
                             "networks")
        if int(epochs) < 1:
            raise ValueError(f"epochs: must be at least 1, got {epochs}")
        out_path = str(out_path or self.default_network_path(kind))
        if not os.path.isdir(os.path.dirname(os.path.abspath(out_path))):
            raise ValueError(f"output file: folder {os.path.dirname(os.path.abspath(out_path))} does not exist")
        volumes, args = {}, []
        if kind == "similarity":
            if int(pairs) < 10:
                raise ValueError(f"pairs: needs at least 10, got {pairs}")
            volumes = {"ct": nodes.volume_from_node(ctNode, "training CT volume"),
                       "mr": nodes.volume_from_node(mrNode, "training MR volume")}
            args = ["similarity", "train", "--ct-image", "{ct}", "--mr-image", "{mr}", "--pairs", int(pairs)]
        elif kind == "deepsim":
            volumes = {"image": nodes.volume_from_node(imageNode, "training image"),
                       "labels": nodes.volume_from_node(labelNode, "training label map")}
            if volume3D:
                for title, node, volume in (("training image", imageNode, volumes["image"]),
                                            ("training label map", labelNode, volumes["labels"])):
                    if volume.ndim != 3:
                        raise ValueError(f"{title}: a whole-volume (3D) feature net needs a 3D volume; "
                                         f"{node.GetName()!r} is one slice")
            elif volumes["image"].array.shape != volumes["labels"].array.shape:
                raise ValueError("training label map: must have the training image's grid")
            args = ["train", "features", "--mode", "seg", "--image", "{image}", "--labels", "{labels}",
                    "--epochs", int(epochs)] + (["--dims", 3] if volume3D else [])
            if add:  # refuse now what make_current would refuse after the training
                self._check_joins_ensemble(3 if volume3D else 2)
                # A net trained on the same image with the same seed would repeat one already there.
                args += ["--seed", len(self.current_networks(kind))]
        elif kind == "registration":
            loss_name = "deepsim-seg" if loss == "deepsim" else loss
            args = ["train", "registration", "--loss", loss_name, "--epochs", int(epochs)]
            args += ["--velocity"] if velocity else []
            volumes = self._registration_training_volumes(trainingVolumes)
            if volumes:
                args += ["--images"] + ["{%s}" % name for name in volumes]
            else:
                from DeepSimilarityLib.paths import has_shared_data

                if not has_shared_data("brain-mr"):
                    raise ValueError("training volumes: check two or more scene volumes, or provide the shared "
                                     "brain MR data (set DEEPSIM_DATA)")
            if loss_name == "deepsim-seg":
                self.network_for("deepsim", "deepsim_features_seg_2d.pt")  # the shipped one if none is current
                features = self.current_networks("deepsim")
                for path in features:
                    self._check_feature_net_dims(path, next(iter(volumes.values())).ndim if volumes else 2)
                args += ["--features"] + features
        else:
            if not images_folder or not os.path.isdir(str(images_folder)):
                raise ValueError(f"image folder: '{images_folder}' is not a folder")
            if not labels_csv or not os.path.isfile(str(labels_csv)):
                raise ValueError(f"labels CSV: '{labels_csv}' not found (one row per image: image, labels)")
            args = ["train", kind, "--images", images_folder, "--csv", labels_csv, "--epochs", int(epochs)]
            if kind == "hashing":
                if int(bits) < 8 or int(bits) % 8:
                    raise ValueError(f"bits: must be a positive multiple of 8, got {bits}")
                args += ["--bits", int(bits)]
        if threads:
            args += ["--threads", int(threads)]
        folder = tempfile.mkdtemp(prefix="DeepSimilarity-")
        files = {}
        for name, volume in volumes.items():
            files[name] = os.path.join(folder, f"{name}.nii.gz")
            write_image(volume, files[name])
        args = [str(a).format(**files) for a in args] + ["--out", out_path]

        def on_success(job):
            return self.make_current(kind, out_path, add)

        return self.background_job(jobs.deepsim_command(*args), f"training the {KIND_TITLES[kind]}", on_success,
                                   folder, launcher)

    @staticmethod
    def _registration_training_volumes(volumeNodes) -> dict:
        """``{"image0": Volume, ...}`` of the checked training volumes: none, or two or more of one dimension."""
        import DeepSimilarityNodes as nodes

        volumeNodes = [n for n in (volumeNodes or []) if n is not None]
        if len(volumeNodes) == 1:
            raise ValueError(f"training volumes: only {volumeNodes[0].GetName()!r} is checked; a registration net "
                             "needs two or more (or none, for the shared brain MR data)")
        volumes = {f"image{i}": nodes.volume_from_node(n, f"training volume {n.GetName()!r}")
                   for i, n in enumerate(volumeNodes)}
        dims = {v.ndim for v in volumes.values()}
        if len(dims) > 1:
            names = ", ".join(f"{n.GetName()!r} ({v.ndim}D)" for n, v in zip(volumeNodes, volumes.values()))
            raise ValueError(f"training volumes: mix 2D slices and 3D volumes ({names}); check one kind")
        return volumes

    @staticmethod
    def _check_feature_net_dims(path, dims) -> None:
        """ValueError unless the DeepSim feature net at ``path`` is for ``dims``-D images."""
        from DeepSimilarityLib.registration.feature_net import load_feature_net

        try:
            net_dims = load_feature_net(path).dims
        except Exception as exc:  # any loader error: not a usable feature net
            raise ValueError(f"DeepSim feature net: {path} cannot be loaded ({exc})") from None
        if net_dims != dims:
            how = "check 'Whole volume (3D)'" if dims == 3 else "leave 'Whole volume (3D)' unchecked"
            raise ValueError(f"DeepSim feature net: the current one ({os.path.basename(str(path))}) is for {net_dims}D "
                             f"images and the training volumes are {dims}D; train a DeepSim feature net with "
                             f"{how} first, or load one")

    def _check_joins_ensemble(self, dims) -> None:
        """ValueError unless a new ``dims``-D segmentation feature net can join the current feature nets."""
        from DeepSimilarityLib.registration.feature_net import load_feature_net

        for path in self.current_networks("deepsim"):
            net = load_feature_net(path)
            if (net.dims, net.mode) != (dims, "seg"):
                how = "" if net.dims == dims else f"{'check' if net.dims == 3 else 'uncheck'} 'Whole volume (3D)', or "
                raise ValueError(f"add: the current feature net {os.path.basename(str(path))} is a {net.dims}D "
                                 f"{net.mode} net and this training makes a {dims}D seg net; {how}uncheck 'Add to "
                                 "the current feature nets' to replace them")

    @staticmethod
    def default_network_path(kind) -> str:
        folder = os.path.join(os.path.expanduser("~"), "DeepSimilarity", "networks")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"{kind}-{datetime.datetime.now():%Y%m%d-%H%M%S}.pt")

    @staticmethod
    def background_job(args, description, on_success, folder=None, launcher=None):
        """A :class:`Job` whose temporary ``folder`` is removed when it ends, however it ends."""
        import shutil

        import DeepSimilarityJobs as jobs

        cleanup = (lambda: shutil.rmtree(folder, ignore_errors=True)) if folder else None
        return jobs.Job(args, description, on_success=on_success, cleanup=cleanup, launcher=launcher,
                        env=jobs.child_environment())
