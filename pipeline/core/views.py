"""The eight symmetries of the square that an image is seen under (TTA views), by name."""

from __future__ import annotations

from typing import Literal

# name -> (transpose, horizontal flip, vertical flip), applied to the image in that order
VIEWS: dict[str, tuple[bool, bool, bool]] = {
    "none": (False, False, False),
    "hflip": (False, True, False),
    "vflip": (False, False, True),
    "hvflip": (False, True, True),  # = rotation by 180 degrees
    "transpose": (True, False, False),
    "rot90": (True, False, True),  # counter-clockwise, as np.rot90
    "rot270": (True, True, False),
    "antitranspose": (True, True, True),
}
View = Literal[tuple(VIEWS)]  # type: ignore[valid-type]  # a view's name, for config fields
