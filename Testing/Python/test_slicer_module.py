"""Checks of the Slicer extension that need no Slicer: the .ui file (loaded with
PySide6, Slicer's widgets standing in as their Qt base classes), the shape of
the module script, and the CMake metadata and resources."""

import os

# Before any PySide6 import: no display on CI machines.
os.environ["QT_QPA_PLATFORM"] = "offscreen"

import ast  # noqa: E402
import importlib  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "DeepSimilarity"
SCRIPT = MODULE_DIR / "DeepSimilarity.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "DeepSimilarity.ui"

# objectName -> class written in the .ui (a Qt class or a Slicer/CTK one).
EXPECTED_WIDGETS = {
    # Networks
    "modelKindComboBox": "QComboBox",
    "weightsPathLineEdit": "ctkPathLineEdit",
    "loadWeightsButton": "QPushButton",
    "shippedWeightsComboBox": "QComboBox",
    "loadShippedButton": "QPushButton",
    "currentNetworkLabel": "QLabel",
    "trainCtVolumeSelector": "qMRMLNodeComboBox",
    "trainMrVolumeSelector": "qMRMLNodeComboBox",
    "trainImageVolumeSelector": "qMRMLNodeComboBox",
    "trainLabelVolumeSelector": "qMRMLNodeComboBox",
    "trainVolume3DCheckBox": "QCheckBox",
    "addFeatureNetCheckBox": "QCheckBox",
    "trainVelocityCheckBox": "QCheckBox",
    "trainVolumesSelector": "qMRMLCheckableNodeComboBox",
    "trainImagesPathLineEdit": "ctkPathLineEdit",
    "trainCsvPathLineEdit": "ctkPathLineEdit",
    "trainOutputPathLineEdit": "ctkPathLineEdit",
    "trainButton": "QPushButton",
    "epochsSpinBox": "QSpinBox",
    "pairsSpinBox": "QSpinBox",
    "bitsSpinBox": "QSpinBox",
    "manifestTextBrowser": "QTextBrowser",
    # Similarity heat map
    "ctVolumeSelector": "qMRMLNodeComboBox",
    "mrVolumeSelector": "qMRMLNodeComboBox",
    "pointSelector": "qMRMLNodeComboBox",
    "metricComboBox": "QComboBox",
    "heatmapPrecisionComboBox": "QComboBox",
    "neighbourhoodSpinBox": "QSpinBox",
    "patchSizeSpinBox": "QSpinBox",
    "heatmapButton": "QPushButton",
    "autoUpdateCheckBox": "QCheckBox",
    # Registration
    "fixedVolumeSelector": "qMRMLNodeComboBox",
    "movingVolumeSelector": "qMRMLNodeComboBox",
    "registrationLossComboBox": "QComboBox",
    "outputTransformSelector": "qMRMLNodeComboBox",
    "outputVolumeSelector": "qMRMLNodeComboBox",
    "fixedLabelSelector": "qMRMLNodeComboBox",
    "movingLabelSelector": "qMRMLNodeComboBox",
    "registerButton": "QPushButton",
    "diceLabel": "QLabel",
    # Retrieval
    "databasePathLineEdit": "ctkPathLineEdit",
    "createDatabaseButton": "QPushButton",
    "addVolumeButton": "QPushButton",
    "addFolderButton": "QPushButton",
    "folderPathLineEdit": "ctkPathLineEdit",
    "folderLabelsPathLineEdit": "ctkPathLineEdit",
    "queryVolumeSelector": "qMRMLNodeComboBox",
    "topKSpinBox": "QSpinBox",
    "queryButton": "QPushButton",
    "resultsTableWidget": "QTableWidget",
    # Shared
    "progressBar": "QProgressBar",
    "cancelButton": "QPushButton",
    "statusLabel": "QLabel",
}

# objectName -> parameter of DeepSimilarityParameterNode it must be bound to.
EXPECTED_BINDINGS = {
    "ctVolumeSelector": "ctVolume",
    "mrVolumeSelector": "mrVolume",
    "pointSelector": "point",
    "metricComboBox": "metric",
    "heatmapPrecisionComboBox": "heatmapPrecision",
    "neighbourhoodSpinBox": "neighbourhood",
    "patchSizeSpinBox": "patchSize",
    "fixedVolumeSelector": "fixedVolume",
    "movingVolumeSelector": "movingVolume",
    "registrationLossComboBox": "registrationLoss",
    "topKSpinBox": "topK",
    "modelKindComboBox": "modelKind",
    "epochsSpinBox": "epochs",
    "pairsSpinBox": "pairs",
    "bitsSpinBox": "bits",
    "trainCtVolumeSelector": "trainCtVolume",
    "trainLabelVolumeSelector": "trainLabelVolume",
    "trainVolume3DCheckBox": "trainVolume3D",
    "addFeatureNetCheckBox": "addFeatureNet",
    "trainVelocityCheckBox": "trainVelocity",
}

PANELS = ["Networks", "Similarity heat map", "Registration", "Retrieval"]
MODULE_CLASSES = {
    "DeepSimilarity": "ScriptedLoadableModule",
    "DeepSimilarityWidget": "ScriptedLoadableModuleWidget",
    "DeepSimilarityLogic": "ScriptedLoadableModuleLogic",
    "DeepSimilarityTest": "ScriptedLoadableModuleTest",
}
QT_BINDINGS = {"PyQt4", "PyQt5", "PyQt6", "PySide", "PySide2", "PySide6", "qtpy", "sip", "shiboken2", "shiboken6"}
HEAVY_MODULES = {"torch", "monai", "SimpleITK", "skimage", "scipy", "matplotlib"}


# --------------------------------------------------------------------------- .ui


@pytest.fixture(scope="module")
def ui_tree():
    return ET.parse(UI_FILE).getroot()


def widgets_by_name(root):
    return {w.get("name"): w for w in root.iter("widget")}


def custom_bases(root):
    """Custom class -> the Qt class it finally extends (following chains of custom classes)."""
    extends = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    resolved = {}
    for name in extends:
        base = name
        while base in extends:
            base = extends[base]
        resolved[name] = base
    return resolved


def dynamic_property(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string")
    return None


def qt_loadable_ui(root):
    """The .ui as bytes Qt alone can load: custom classes become their Qt bases.

    Properties typed by a custom class's own enums (ctkPathLineEdit::Files) and
    the connections to custom signals/slots mean nothing to the stand-ins, so
    they go too; every other property is kept (unknown ones become dynamic).
    """
    root = ET.fromstring(ET.tostring(root))
    bases = custom_bases(root)
    for widget in root.iter("widget"):
        custom = widget.get("class")
        if custom in bases:
            widget.set("class", bases[custom])
            for prop in list(widget.findall("property")):
                if prop.find("set") is not None or prop.find("enum") is not None:
                    widget.remove(prop)
    for tag in ("customwidgets", "connections"):
        element = root.find(tag)
        if element is not None:
            root.remove(element)
    return ET.tostring(root, encoding="utf-8")


def test_ui_is_a_qmrmlwidget_with_four_panels(ui_tree):
    assert ui_tree.tag == "ui"
    top = ui_tree.find("widget")
    assert top.get("class") == "qMRMLWidget"
    assert ui_tree.findtext("class") == top.get("name")
    panels = [w for w in top.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    texts = [p.find("property[@name='text']/string").text for p in panels]
    assert texts == PANELS


def test_ui_names_every_widget_with_the_expected_class(ui_tree):
    widgets = widgets_by_name(ui_tree)
    missing = sorted(set(EXPECTED_WIDGETS) - set(widgets))
    assert not missing, f"widgets missing from the .ui: {missing}"
    wrong = {name: widgets[name].get("class") for name, cls in EXPECTED_WIDGETS.items()
             if widgets[name].get("class") != cls}
    assert not wrong, f"widgets of an unexpected class: {wrong}"
    names = [w.get("name") for w in ui_tree.iter("widget")]
    assert len(names) == len(set(names)), "objectNames must be unique"


def test_ui_declares_every_custom_class(ui_tree):
    declared = {c.findtext("class"): c for c in ui_tree.iter("customwidget")}
    used = {w.get("class") for w in ui_tree.iter("widget")} - {None}
    custom = {c for c in used if not c.startswith("Q")}
    assert custom <= set(declared), f"undeclared custom widgets: {sorted(custom - set(declared))}"
    for name, element in declared.items():
        assert element.findtext("header") == f"{name}.h"
        assert custom_bases(ui_tree)[name].startswith("Q")


def test_ui_gives_the_scene_to_every_node_selector(ui_tree):
    top = ui_tree.find("widget").get("name")
    receivers = {c.findtext("receiver") for c in ui_tree.iter("connection")
                 if c.findtext("sender") == top
                 and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {n for n, w in widgets_by_name(ui_tree).items()
                 if w.get("class") in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")}
    assert selectors and selectors <= receivers, f"without a scene: {sorted(selectors - receivers)}"


def test_ui_binds_the_parameters(ui_tree):
    widgets = widgets_by_name(ui_tree)
    for name, parameter in EXPECTED_BINDINGS.items():
        assert dynamic_property(widgets[name], "SlicerParameterName") == parameter, name
    bound = {dynamic_property(w, "SlicerParameterName") for w in widgets.values()} - {None}
    fields = parameter_node_fields()
    assert bound <= set(fields), f"bound to no parameter: {sorted(bound - set(fields))}"
    # The node selectors offer the node type the parameter holds.
    for name, widget in widgets.items():
        parameter = dynamic_property(widget, "SlicerParameterName")
        if widget.get("class") == "qMRMLNodeComboBox" and parameter:
            node_types = [s.text for s in widget.findall("property[@name='nodeTypes']/stringlist/string")]
            assert node_types == [fields[parameter]], name
    assert fields["point"] == "vtkMRMLMarkupsFiducialNode"


@pytest.fixture(scope="module")
def loaded_ui(ui_tree):
    QtCore = pytest.importorskip("PySide6.QtCore")
    QtUiTools = pytest.importorskip("PySide6.QtUiTools")
    QtWidgets = pytest.importorskip("PySide6.QtWidgets")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    messages = []

    def handler(kind, context, message):
        if kind != QtCore.QtMsgType.QtDebugMsg:
            messages.append(message)

    buffer = QtCore.QBuffer()
    buffer.setData(QtCore.QByteArray(qt_loadable_ui(ui_tree)))
    buffer.open(QtCore.QIODevice.OpenModeFlag.ReadOnly)
    previous = QtCore.qInstallMessageHandler(handler)
    try:
        loader = QtUiTools.QUiLoader()
        widget = loader.load(buffer)
    finally:
        QtCore.qInstallMessageHandler(previous)
        buffer.close()
    assert widget is not None, loader.errorString()
    yield widget, messages, QtCore, QtWidgets
    widget.deleteLater()
    app.processEvents()


def test_ui_loads_with_qt_without_warnings(loaded_ui):
    widget, messages, _, _ = loaded_ui
    assert widget.objectName() == "DeepSimilarity"
    assert not messages, messages


def test_loaded_ui_has_every_widget_as_its_qt_class(loaded_ui, ui_tree):
    widget, _, QtCore, QtWidgets = loaded_ui
    bases = custom_bases(ui_tree)
    for name, cls in EXPECTED_WIDGETS.items():
        child = widget.findChild(QtCore.QObject, name)
        assert child is not None, name
        qt_class = getattr(QtWidgets, bases.get(cls, cls))
        assert isinstance(child, qt_class), f"{name} is a {type(child).__name__}, not a {qt_class.__name__}"


def test_loaded_ui_defaults(loaded_ui):
    widget, _, QtCore, QtWidgets = loaded_ui

    def child(name):
        return widget.findChild(QtCore.QObject, name)

    assert child("neighbourhoodSpinBox").value() == 81
    assert child("patchSizeSpinBox").value() == 17
    assert child("cancelButton").isEnabled() is False
    assert child("resultsTableWidget").columnCount() == 3
    assert child("ctVolumeSelector").property("SlicerParameterName") == "ctVolume"
    assert child("pointSelector").property("nodeTypes") == ["vtkMRMLMarkupsFiducialNode"]


# ------------------------------------------------------------------ module script


@pytest.fixture(scope="module")
def script_tree():
    return ast.parse(SCRIPT.read_text(encoding="utf-8"), filename=str(SCRIPT))


def parameter_node_fields():
    """Annotated fields of DeepSimilarityParameterNode -> annotation source text."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DeepSimilarityParameterNode")
    return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}


def parameter_node_defaults():
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DeepSimilarityParameterNode")
    return {s.target.id: ast.literal_eval(s.value) for s in node.body if isinstance(s, ast.AnnAssign) and s.value}


def test_script_compiles():
    compile(SCRIPT.read_text(encoding="utf-8"), str(SCRIPT), "exec")


def test_script_defines_the_module_classes(script_tree):
    classes = {n.name: n for n in script_tree.body if isinstance(n, ast.ClassDef)}
    for name, base in MODULE_CLASSES.items():
        assert name in classes, name
        assert base in [ast.unparse(b) for b in classes[name].bases], f"{name} must derive from {base}"
    wrapper = classes["DeepSimilarityParameterNode"]
    assert "parameterNodeWrapper" in [ast.unparse(d) for d in wrapper.decorator_list]
    test_methods = {n.name for n in classes["DeepSimilarityTest"].body if isinstance(n, ast.FunctionDef)}
    assert {"runTest", "test_module_loads"} <= test_methods


def test_script_module_metadata(script_tree):
    module = next(n for n in script_tree.body if isinstance(n, ast.ClassDef) and n.name == "DeepSimilarity")
    assigned = {ast.unparse(s.targets[0]): s.value for s in ast.walk(module) if isinstance(s, ast.Assign)}
    assert ast.literal_eval(assigned["self.parent.title"]) == "DeepSimilarity"
    assert ast.literal_eval(assigned["self.parent.categories"]) == ["Registration"]
    acknowledgement = ast.literal_eval(assigned["self.parent.acknowledgementText"])
    for cited in ("Cheng", "Chung", "Czolbe", "Chen", "Siamese", "hashing", "registration"):
        assert cited in acknowledgement, cited


def test_script_imports_only_slicer_qt(script_tree):
    imported = set()
    for node in ast.walk(script_tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & QT_BINDINGS, f"Qt bindings Slicer does not provide: {imported & QT_BINDINGS}"
    top_level = set()
    for node in script_tree.body:
        if isinstance(node, ast.Import):
            top_level |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert not top_level & HEAVY_MODULES, f"heavy imports at module level: {top_level & HEAVY_MODULES}"


def test_script_loads_the_ui_and_binds_the_parameter_node():
    source = SCRIPT.read_text(encoding="utf-8")
    assert 'slicer.util.loadUI(self.resourcePath("UI/DeepSimilarity.ui"))' in source
    assert ".setMRMLScene(slicer.mrmlScene)" in source
    assert ".connectGui(self.ui)" in source


def test_parameter_defaults_match_the_ui(ui_tree):
    defaults = parameter_node_defaults()
    assert defaults["neighbourhood"] == 81
    assert defaults["patchSize"] == 17
    widgets = widgets_by_name(ui_tree)
    for widget in widgets.values():
        parameter = dynamic_property(widget, "SlicerParameterName")
        value = widget.find("property[@name='value']/*")
        if parameter and value is not None:
            assert float(value.text) == pytest.approx(defaults[parameter]), parameter


def test_self_ui_names_exist_in_the_ui(ui_tree):
    """Every ``<x>.ui.NAME`` of every script of the module folder, and every widget name listed in strings
    of DeepSimilarityPanels (its rows to show or hide), is a widget of the .ui."""
    used = set()
    for path in sorted(MODULE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used |= {node.attr for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"}
    assert {"heatmapButton", "trainButton", "shippedWeightsComboBox"} <= used  # the scan sees the panel files
    panels = ast.parse((MODULE_DIR / "DeepSimilarityPanels.py").read_text(encoding="utf-8"))
    rows = next(n for n in panels.body if isinstance(n, ast.Assign) and n.targets[0].id == "KIND_ROWS")
    for key in rows.value.keys:  # (label widget, input widget) pairs
        used |= {element.value for element in key.elts}
    missing = sorted(used - set(widgets_by_name(ui_tree)))
    assert not missing, f"ui names absent from the .ui: {missing}"


def test_module_scripts_are_listed_in_cmake():
    """Every script of the module folder is built and installed (MODULE_PYTHON_SCRIPTS)."""
    sets = cmake_sets(cmake_commands(MODULE_DIR / "CMakeLists.txt"))
    listed = {s.replace("${MODULE_NAME}", "DeepSimilarity") for s in sets["MODULE_PYTHON_SCRIPTS"]}
    present = {p.name for p in MODULE_DIR.glob("*.py")}
    assert present <= listed, f"not in MODULE_PYTHON_SCRIPTS: {sorted(present - listed)}"


def test_module_script_stays_short():
    assert len(SCRIPT.read_text(encoding="utf-8").splitlines()) < 600


def test_library_path_function_points_at_the_library(script_tree, monkeypatch):
    """Run the script's sys.path helper alone, as if the library were not importable."""
    function = next(n for n in script_tree.body
                    if isinstance(n, ast.FunctionDef) and n.name == "ensureLibraryImportable")
    namespace = {"__file__": str(SCRIPT), "importlib": importlib, "os": os, "sys": sys}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(SCRIPT), "exec"), namespace)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    namespace["ensureLibraryImportable"]()
    assert Path(sys.path[0]) == ROOT
    assert (Path(sys.path[0]) / "DeepSimilarityLib" / "__init__.py").is_file()


# ------------------------------------------------------------------------- CMake


def cmake_commands(path):
    """(command, [arguments]) of a CMakeLists.txt, comments dropped and quotes removed."""
    text = path.read_text(encoding="utf-8")
    token = re.compile(r'"((?:[^"\\]|\\.)*)"|#[^\n]*|(\()|(\))|([^\s()"#]+)')
    commands, name, args, depth = [], None, [], 0
    previous_word = None
    for match in token.finditer(text):
        quoted, opening, closing, word = match.groups()
        if match.group(0).startswith("#") and quoted is None:
            continue
        if name is None:
            if opening and previous_word:
                name, args, depth = previous_word.lower(), [], 1
            previous_word = word
            continue
        if opening:
            depth += 1
            args.append("(")
        elif closing:
            depth -= 1
            if depth == 0:
                commands.append((name, args))
                name, previous_word = None, None
            else:
                args.append(")")
        else:
            args.append(quoted if quoted is not None else word)
    return commands


def cmake_sets(commands):
    return {args[0]: args[1:] for name, args in commands if name == "set" and args}


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_extension_cmake_metadata():
    commands = cmake_commands(ROOT / "CMakeLists.txt")
    names = [c for c, _ in commands]
    args = dict(commands)
    assert commands[0] == ("cmake_minimum_required", ["VERSION", "3.16.3...3.19.7", "FATAL_ERROR"])
    assert args["project"] == ["DeepSimilarity"]
    sets = cmake_sets(commands)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert key in sets and sets[key] and sets[key][0].strip(), f"{key} is missing or empty"
    assert sets["EXTENSION_HOMEPAGE"] == ["https://github.com/deepsimilarity/SlicerDeepSimilarity"]
    assert sets["EXTENSION_CATEGORY"] == ["Registration"]
    assert sets["EXTENSION_DEPENDS"] == ["NA"]
    icon_url = sets["EXTENSION_ICONURL"][0]
    assert icon_url.startswith("https://raw.githubusercontent.com/deepsimilarity/SlicerDeepSimilarity/")
    assert icon_url.endswith("/Resources/Icons/DeepSimilarity.png")
    assert png_size(ROOT / "Resources" / "Icons" / "DeepSimilarity.png") == (128, 128)
    assert ("find_package", ["Slicer", "REQUIRED"]) in commands
    includes = [a[0] for c, a in commands if c == "include"]
    assert includes == ["${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"]
    assert names.index("add_subdirectory") < len(names) - 2
    for name, arguments in commands:
        if name == "add_subdirectory":
            assert (ROOT / arguments[0] / "CMakeLists.txt").is_file(), arguments[0]


def test_module_cmake_builds_the_scripted_module():
    commands = cmake_commands(MODULE_DIR / "CMakeLists.txt")
    sets = cmake_sets(commands)
    assert sets["MODULE_NAME"] == ["DeepSimilarity"]

    def expand(value):
        return value.replace("${MODULE_NAME}", "DeepSimilarity")

    build = next(a for c, a in commands if c == "slicermacrobuildscriptedmodule")
    assert build[:2] == ["NAME", "${MODULE_NAME}"]
    assert "SCRIPTS" in build and "RESOURCES" in build
    resources = [expand(r) for r in sets["MODULE_PYTHON_RESOURCES"]]
    assert sorted(resources) == ["Resources/Icons/DeepSimilarity.png", "Resources/UI/DeepSimilarity.ui"]
    for resource in resources:
        assert (MODULE_DIR / resource).is_file(), resource
    assert png_size(MODULE_DIR / "Resources" / "Icons" / "DeepSimilarity.png") == (128, 128)
    scripts = [expand(s) for s in sets["MODULE_PYTHON_SCRIPTS"]]
    assert scripts[0] == "DeepSimilarity.py" and (MODULE_DIR / scripts[0]).is_file()
    assert "${MODULE_LIBRARY_SCRIPTS}" in scripts
    # The library and the weights are found one level up.
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "DeepSimilarityLib" in text and "weights" in text
    assert (ROOT / "DeepSimilarityLib" / "__init__.py").is_file()
    assert (ROOT / "weights").is_dir()
    # The module's test case runs as a ctest.
    names = [c for c, _ in commands]
    start = names.index("if")
    assert commands[start][1] == ["BUILD_TESTING"]
    assert ("slicer_add_python_unittest", ["SCRIPT", "${MODULE_NAME}.py"]) in commands[start:]
