"""DeepSimilarityLib: learned similarity of medical images, free of Slicer and Qt.

Modules are imported on use (torch and MONAI are heavy); see README.md for the
map of the library.
"""

__version__ = "0.1.0"
