"""Renders the example inputs in this folder: procedural objects made by this project (no third-party images).

    python examples/make_examples.py

Each image is one object of `lrm.train.shapes` seen from a slightly raised front camera, 512 px, RGBA with a
transparent background (so background removal is skipped), except `*_on_white.png` which has no alpha channel.
"""

import math
from pathlib import Path

import numpy as np
from PIL import Image

from lrm.train.shapes import Shape, render_rgba, source_view_camera

HERE = Path(__file__).parent
# (file name, seed, primitive or None for a random union)
EXAMPLES = [("cone", 1, "cone"), ("torus", 2, "torus"), ("cylinder", 7, "cylinder"), ("rounded_box", 2001, None),
            ("three_parts", 2002, None), ("cone_and_box", 2003, None)]
ON_WHITE = ("ball_and_disc_on_white", 2007)


def main() -> None:
    _, camera = source_view_camera(2.0, azimuth=math.radians(15), elevation=math.radians(20))
    for name, seed, kind in EXAMPLES:
        rgba = render_rgba(Shape.random(seed, kind), camera, 512)
        Image.fromarray(rgba, "RGBA").save(HERE / f"{name}.png")
    # one without alpha: the app / CLI remove its white background
    rgba = render_rgba(Shape.random(ON_WHITE[1]), camera, 512).astype(np.float32) / 255
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB").save(HERE / f"{ON_WHITE[0]}.png")


if __name__ == "__main__":
    main()
