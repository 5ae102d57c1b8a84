"""Draw the DeepSimilarity icon: a CT-grey and an MR-blue rounded square whose
overlap carries a heat-map gradient (where the two modalities are compared).

Run from anywhere with numpy, matplotlib and Pillow; writes the extension icon
and the module icon (the same 128x128 image):

    python Resources/make_icon.py
"""

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

SIZE = 128
SCALE = 4  # drawn at 4x and shrunk: smooth edges without an antialiasing library
ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = (ROOT / "Resources/Icons/DeepSimilarity.png",
           ROOT / "DeepSimilarity/Resources/Icons/DeepSimilarity.png")


def rounded_square(n, x0, y0, side, radius):
    """Boolean mask of a rounded square with top-left corner (x0, y0), in pixels of an n x n grid."""
    y, x = np.mgrid[0:n, 0:n] + 0.5
    # Distance to the square shrunk by the radius: inside when below the radius.
    cx = np.clip(x, x0 + radius, x0 + side - radius)
    cy = np.clip(y, y0 + radius, y0 + side - radius)
    return (x - cx) ** 2 + (y - cy) ** 2 <= radius ** 2


def draw():
    n = SIZE * SCALE
    side, radius = 0.62 * n, 0.12 * n
    ct = rounded_square(n, 0.05 * n, 0.05 * n, side, radius)
    mr = rounded_square(n, 0.33 * n, 0.33 * n, side, radius)
    rgba = np.zeros((n, n, 4))
    rgba[ct] = (0.72, 0.72, 0.70, 1.0)  # CT grey
    rgba[mr] = (0.16, 0.42, 0.80, 1.0)  # MR blue
    # Heat map over the overlap: hot at its centre, cooling towards its corners.
    both = ct & mr
    y, x = np.mgrid[0:n, 0:n] + 0.5
    centre = (0.33 * n + 0.67 * n) / 2
    distance = np.hypot(x - centre, y - centre) / (0.34 * n * np.sqrt(2) / 2)
    rgba[both] = colormaps["inferno"](np.clip(1.0 - 0.8 * distance[both], 0, 1))
    rgba[both, 3] = 1.0
    # A thin dark outline keeps the squares apart on light and dark toolbars.
    for mask in (ct, mr):
        edge = mask & ~(np.roll(mask, SCALE * 2, 0) & np.roll(mask, -SCALE * 2, 0)
                        & np.roll(mask, SCALE * 2, 1) & np.roll(mask, -SCALE * 2, 1))
        rgba[edge] = (0.12, 0.12, 0.16, 1.0)
    image = Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA")
    return image.resize((SIZE, SIZE), Image.LANCZOS)


if __name__ == "__main__":
    icon = draw()
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path, optimize=True)
        print(path)
