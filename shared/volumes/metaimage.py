"""MetaImage (``.mhd`` header and ``.raw`` voxels) written as ITK's MetaImageIO writes it.

The header is text, in the order and with the number formatting (17 significant digits)
ITK writes: the geometry is LPS as it is, ``TransformMatrix`` lists the direction of each
image axis in turn, and a 3-D image gets the ``AnatomicalOrientation`` code ITK derives
from its direction (for a 4-D image ITK writes ``????``, after ``DimSize``). Voxels are
stored uncompressed, little-endian, components interleaved (as in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.volumes.geometry import Geometry

_ELEMENT_TYPES = {
    "uint8": "MET_UCHAR",
    "int8": "MET_CHAR",
    "uint16": "MET_USHORT",
    "int16": "MET_SHORT",
    "uint32": "MET_UINT",
    "int32": "MET_INT",
    "float32": "MET_FLOAT",
    "float64": "MET_DOUBLE",
}
_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
"""Per LPS axis: the letter ITK writes for an image axis along it, positive or negative."""


def _number(value: float) -> str:
    return format(float(value), ".17g")


def _numbers(values: Sequence[float]) -> str:
    return " ".join(_number(v) for v in values)


def anatomical_orientation(direction: Sequence[float]) -> str:
    """ITK's three-letter code of a 3x3 direction (row-major): for each image axis, the
    patient axis it runs along, the largest cosines assigned first."""
    candidates = [(abs(direction[3 * r + c]), r, c) for r in range(3) for c in range(3)]
    letters = ["?", "?", "?"]
    for _ in range(3):
        # Largest magnitude first; among equal ones, the last in row-major order.
        best = max(range(len(candidates)), key=lambda k: (candidates[k][0], k))
        _, row, column = candidates[best]
        positive = direction[3 * row + column] > 0
        letters[column] = _LETTERS[row][0 if positive else 1]
        candidates = [c for c in candidates if c[1] != row and c[2] != column]
    return "".join(letters)


def metaimage_header(
    size: Sequence[int],
    dtype: np.dtype[Any],
    components: int,
    geometry: Geometry,
    data_file: str,
) -> str:
    """The ``.mhd`` text of an image of ``size`` (x, y, z[, t]) stored in ``data_file``."""
    try:
        element_type = _ELEMENT_TYPES[dtype.name]
    except KeyError:
        raise ValueError(f"no MetaImage element type for {dtype.name}") from None
    ndim = len(size)
    d = geometry.direction
    if ndim == 3:
        matrix = [d[3 * r + c] for c in range(3) for r in range(3)]
        origin: list[float] = list(geometry.origin)
        spacing: list[float] = list(geometry.spacing)
    elif ndim == 4:
        full = [
            [d[0], d[1], d[2], 0.0],
            [d[3], d[4], d[5], 0.0],
            [d[6], d[7], d[8], 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
        matrix = [full[r][c] for c in range(4) for r in range(4)]
        origin = [*geometry.origin, 0.0]
        spacing = [*geometry.spacing, geometry.time_spacing]
    else:
        raise ValueError(f"a volume has 3 or 4 dimensions, not {ndim}")
    lines = [
        "ObjectType = Image",
        f"NDims = {ndim}",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        "CompressedData = False",
        f"TransformMatrix = {_numbers(matrix)}",
        f"Offset = {_numbers(origin)}",
        f"CenterOfRotation = {' '.join('0' for _ in range(ndim))}",
    ]
    if ndim == 3:
        lines.append(f"AnatomicalOrientation = {anatomical_orientation(d)}")
    lines.append(f"ElementSpacing = {_numbers(spacing)}")
    lines.append(f"DimSize = {' '.join(str(int(v)) for v in size)}")
    if ndim == 4:
        lines.append("AnatomicalOrientation = ????")
    if components > 1:
        lines.append(f"ElementNumberOfChannels = {components}")
    lines.append(f"ElementType = {element_type}")
    lines.append(f"ElementDataFile = {data_file}")
    return "\n".join(lines) + "\n"
