"""The library's Python dependencies: which are missing, and installing them into Slicer's Python.

Slicer ships numpy, SimpleITK and scipy but not PyTorch or MONAI. The module
imports those only on first use; before an action needs them the widget calls
:func:`ensure_dependencies`, which asks once for confirmation and then runs
``slicer.util.pip_install`` with the exact versions of ``pyproject.toml``
(``REQUIREMENTS`` is kept equal to its ``[project] dependencies`` by a test).
"""

import importlib
import importlib.util

# pyproject.toml [project] dependencies, in its order (Testing/Python/test_slicer_panels.py compares them).
REQUIREMENTS = [
    "torch==2.13.0",
    "monai==1.6.1",
    "SimpleITK>=2.3",
    "scipy>=1.10",
    "numpy>=1.24",
    "scikit-image>=0.22",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "faiss-cpu==1.15.1",
    "scikit-learn==1.8.0",
]

# Distribution name -> the module it installs.
IMPORT_NAMES = {"scikit-image": "skimage", "faiss-cpu": "faiss", "scikit-learn": "sklearn"}


def requirement_name(requirement: str) -> str:
    for separator in ("==", ">=", "<=", "~=", "<", ">"):
        requirement = requirement.split(separator)[0]
    return requirement.strip()


def missing_requirements(find_spec=importlib.util.find_spec) -> list:
    """The requirements (as pinned) whose module cannot be imported; nothing is imported to find out."""
    missing = []
    for requirement in REQUIREMENTS:
        name = requirement_name(requirement)
        if find_spec(IMPORT_NAMES.get(name, name)) is None:
            missing.append(requirement)
    return missing


def ensure_dependencies(confirm=None, install=None, find_spec=importlib.util.find_spec) -> None:
    """Install the missing requirements after the user agrees; ValueError if they decline or it fails.

    ``confirm(text) -> bool`` and ``install(requirements_text)`` default to
    ``slicer.util.confirmOkCancelDisplay`` and ``slicer.util.pip_install``.
    """
    missing = missing_requirements(find_spec)
    if not missing:
        return
    if confirm is None or install is None:
        import slicer

        confirm = confirm or slicer.util.confirmOkCancelDisplay
        install = install or slicer.util.pip_install
    packages = " ".join(missing)
    if not confirm(f"DeepSimilarity needs these Python packages, not installed yet:\n\n{packages}\n\n"
                   "Install them now? This downloads several hundred MB and may take a few minutes."):
        raise ValueError(f"dependencies: not installed ({packages}); the module cannot compute without them")
    install(packages)
    importlib.invalidate_caches()
    still = missing_requirements(find_spec)
    if still:
        raise ValueError(f"dependencies: installing {' '.join(still)} failed; see the Python console")
