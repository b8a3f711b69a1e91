"""A volume's place in space, in DICOM's patient coordinates (LPS), as an image file holds it.

The image writers (:mod:`shared.volumes.nifti`, :mod:`shared.volumes.metaimage`) write what
ITK writes for an ITK image given the same origin, spacing and direction. ITK keeps a new
image's identity direction wherever the value set equals the one held (it compares values,
and ``-0.0 == 0.0``), so a negative zero set off the diagonal of the direction is held as a
positive zero; and the origin it writes is that of index 0, ``origin + M * 0`` with ``M`` the
direction times the spacing, which turns a negative zero into a positive one unless every
term is a negative zero. :meth:`Geometry.of` does the same, so that the signs of zeros
written are ITK's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    """Row-major 3x3; column ``j`` is image axis ``j``'s direction."""
    time_spacing: float = 1.0
    """The 4th axis' spacing (seconds) of a 4-D volume."""

    @classmethod
    def of(
        cls,
        origin: Sequence[float],
        spacing: Sequence[float],
        direction: Sequence[float],
        time_spacing: float = 1.0,
        four_d: bool = False,
    ) -> Geometry:
        """The geometry as ITK writes it for a new 3-D (or, ``four_d``, 4-D) image."""
        if len(origin) != 3 or len(spacing) != 3 or len(direction) != 9:
            raise ValueError("a geometry has a 3-D origin and spacing and a 3x3 direction")
        held_direction = tuple(
            float(v) if v != (1.0 if i % 4 == 0 else 0.0) else (1.0 if i % 4 == 0 else 0.0)
            for i, v in enumerate(direction)
        )
        held_origin = []
        for i, value in enumerate(origin):
            row = held_direction[3 * i : 3 * i + 3]
            # Only -0.0 plus nothing but negative zeros stays -0.0; a 4-D image's direction
            # row has a positive zero in its 4th column.
            negative_zero = (
                value == 0
                and math.copysign(1.0, value) < 0
                and not four_d
                and all(math.copysign(1.0, v) < 0 for v in row)
            )
            held_origin.append(-0.0 if negative_zero else float(value) + 0.0)
        return cls(
            origin=(held_origin[0], held_origin[1], held_origin[2]),
            spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            direction=held_direction,
            time_spacing=float(time_spacing),
        )
