"""NIfTI-1 single files (``.nii``, ``.nii.gz``) written with numpy, as ITK writes them.

The header is the one ITK's ``NiftiImageIO`` (ITK 5.4) writes for an image in DICOM's
patient coordinates (LPS), field for field and bit for bit:

* ``dim``: 3 or 4 dimensions; an image of several components per voxel is a NIfTI
  vector (``dim[0]`` 5, the components in ``dim[5]``, ``intent_code`` 1007
  ``NIFTI_INTENT_VECTOR``) whose components are stored as the slowest axis;
* ``pixdim``: ``qfac``, then the spacing as float32 (and the time spacing, in seconds, of a
  4-D image); ``xyzt_units`` millimetres and seconds; ``vox_offset`` 352;
  ``scl_slope`` 1 and ``scl_inter`` 0 (the voxels hold the values themselves);
* qform and sform, both ``NIFTI_XFORM_SCANNER_ANAT``: the direction cosines turned from
  LPS to RAS (x and y negated), orthogonalised by nifti's polar decomposition, the
  quaternion from that matrix, and the sform as that matrix times the spacing. These are
  computed with nifti1_io's own arithmetic (float32 matrices, double and x87 long-double
  intermediates), so the floats written are the ones ITK writes.

The voxels follow the 352-byte header (and its empty extension flag) in one write;
``.nii.gz`` is the same byte stream, gzip-compressed on two threads (:func:`gzip_stream`).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import numpy as np

from shared.volumes.geometry import Geometry

Array = np.ndarray[Any, np.dtype[Any]]

HEADER_SIZE = 348
VOX_OFFSET = 352
"""The header and the 4-byte extension flag (no extensions)."""
NIFTI_INTENT_VECTOR = 1007
NIFTI_XFORM_SCANNER_ANAT = 1
NIFTI_UNITS_MM_SEC = 2 | 8
GZIP_LEVEL = 3
"""About ITK's compression (its zlib-ng files are 0.4 % smaller on a CT) in about its CPU
time; zlib's default, 6, took three times as long."""
GZIP_CHUNK = 8 * 1024 * 1024
GZIP_THREADS = 2

_DATATYPES = {
    "uint8": 2,
    "int8": 256,
    "uint16": 512,
    "int16": 4,
    "uint32": 768,
    "int32": 8,
    "float32": 16,
    "float64": 64,
}
_HEADER = struct.Struct("<i10s18sihcc8h3f4h8f3fhcc4f2i80s24s2h6f4f4f4f16s4s")

_F32 = np.float32
_LD = np.longdouble
Mat33 = list[list[np.float32]]


def datatype_code(dtype: np.dtype[Any]) -> int:
    """The NIfTI datatype of a component type; ValueError for others."""
    try:
        return _DATATYPES[dtype.name]
    except KeyError:
        raise ValueError(f"no NIfTI datatype for {dtype.name}") from None


# --------------------------------------------------------------------------------------
# nifti1_io's matrix arithmetic, operation for operation
# --------------------------------------------------------------------------------------


def _ld_to_double(value: Any) -> float:
    """A long-double result assigned to a C double."""
    return float(value)


def _determinant(r: Sequence[Sequence[float]]) -> float:
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = r
    return (
        r11 * r22 * r33
        - r11 * r32 * r23
        - r21 * r12 * r33
        + r21 * r32 * r13
        + r31 * r12 * r23
        - r31 * r22 * r13
    )


def _as_double(m: Mat33) -> list[list[float]]:
    return [[float(v) for v in row] for row in m]


def _mat33_inverse(m: Mat33) -> Mat33:
    r = _as_double(m)
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = r
    deti = _determinant(r)
    if deti != 0.0:
        deti = _ld_to_double(_LD(1) / _LD(deti))
    return [
        [
            _F32(deti * (r22 * r33 - r32 * r23)),
            _F32(deti * (-r12 * r33 + r32 * r13)),
            _F32(deti * (r12 * r23 - r22 * r13)),
        ],
        [
            _F32(deti * (-r21 * r33 + r31 * r23)),
            _F32(deti * (r11 * r33 - r31 * r13)),
            _F32(deti * (-r11 * r23 + r21 * r13)),
        ],
        [
            _F32(deti * (r21 * r32 - r31 * r22)),
            _F32(deti * (-r11 * r32 + r31 * r12)),
            _F32(deti * (r11 * r22 - r21 * r12)),
        ],
    ]


def _rownorm(m: Mat33) -> np.float32:
    return _max_norm([_F32(abs(float(a)) + abs(float(b)) + abs(float(c))) for a, b, c in m])


def _colnorm(m: Mat33) -> np.float32:
    return _rownorm([[m[0][j], m[1][j], m[2][j]] for j in range(3)])


def _max_norm(norms: Sequence[np.float32]) -> np.float32:
    best = norms[0]
    for value in norms[1:]:
        if best < value:
            best = value
    return best


def _mat33_polar(a: Mat33) -> Mat33:
    """nifti_mat33_polar: the orthogonal matrix closest to ``a`` (Higham's iteration)."""
    x = [row[:] for row in a]
    gam = _F32(_determinant(_as_double(x)))
    while gam == 0.0:  # perturb a singular matrix
        gam = _F32(0.00001 * (0.001 + float(_rownorm(x))))
        for i in range(3):
            x[i][i] = x[i][i] + gam
        gam = _F32(_determinant(_as_double(x)))
    dif = _F32(1.0)
    k = 0
    while True:
        y = _mat33_inverse(x)
        if float(dif) > 0.3:
            alp = _F32(math.sqrt(float(_rownorm(x) * _colnorm(x))))
            bet = _F32(math.sqrt(float(_rownorm(y) * _colnorm(y))))
            gam = _F32(math.sqrt(float(bet / alp)))
            gmi = _F32(1.0 / float(gam))
        else:
            gam = gmi = _F32(1.0)
        z = [[_F32(0.5 * float(gam * x[i][j] + gmi * y[j][i])) for j in range(3)] for i in range(3)]
        total = 0.0
        for i in range(3):
            for j in range(3):
                total += abs(float(z[i][j] - x[i][j]))
        dif = _F32(total)
        k += 1
        if k > 100 or float(dif) < 3.0e-6:
            return z
        x = z


def _make_orthog(rows: Sequence[Sequence[float]]) -> Mat33:
    """nifti_make_orthog_mat44's 3x3 part: rows normalised, then orthogonalised."""
    q: Mat33 = [[_F32(v) for v in row] for row in rows]
    defaults = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    for i in range(3):
        val = float(q[i][0] * q[i][0] + q[i][1] * q[i][1] + q[i][2] * q[i][2])
        if val > 0.0:
            scale = _F32(_ld_to_double(_LD(1) / _LD(math.sqrt(val))))
            q[i] = [q[i][j] * scale for j in range(3)]
        elif i < 2:
            q[i] = [_F32(v) for v in defaults[i]]
        else:  # the cross product of the first two rows
            q[2] = [
                q[0][1] * q[1][2] - q[0][2] * q[1][1],
                q[0][2] * q[1][0] - q[0][0] * q[1][2],
                q[0][0] * q[1][1] - q[0][1] * q[1][0],
            ]
    return _mat33_polar(q)


def _quaternion(r44: Sequence[Sequence[np.float32]]) -> tuple[float, float, float, float]:
    """nifti_mat44_to_quatern: (b, c, d, qfac) of the 3x3 part of a float matrix."""
    r = [[float(r44[i][j]) for j in range(3)] for i in range(3)]
    lengths = [
        math.sqrt(r[0][j] * r[0][j] + r[1][j] * r[1][j] + r[2][j] * r[2][j]) for j in range(3)
    ]
    for j in range(3):
        if lengths[j] == 0.0:
            for i in range(3):
                r[i][j] = 1.0 if i == j else 0.0
            lengths[j] = 1.0
    for j in range(3):
        for i in range(3):
            r[i][j] /= lengths[j]
    p = _as_double(_mat33_polar([[_F32(v) for v in row] for row in r]))
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = p
    if _determinant(p) > 0:
        qfac = 1.0
    else:
        qfac = -1.0
        r13, r23, r33 = -r13, -r23, -r33
    quarter = _LD(0.25)
    a = _ld_to_double(_LD(r11 + r22 + r33) + _LD(1))
    if a > 0.5:
        a = _ld_to_double(_LD(0.5) * _LD(math.sqrt(a)))
        b = _ld_to_double(quarter * _LD(r32 - r23) / _LD(a))
        c = _ld_to_double(quarter * _LD(r13 - r31) / _LD(a))
        d = _ld_to_double(quarter * _LD(r21 - r12) / _LD(a))
    else:
        xd = 1.0 + r11 - (r22 + r33)
        yd = 1.0 + r22 - (r11 + r33)
        zd = 1.0 + r33 - (r11 + r22)
        if xd > 1.0:
            b = _ld_to_double(_LD(0.5) * _LD(math.sqrt(xd)))
            c = _ld_to_double(quarter * _LD(r12 + r21) / _LD(b))
            d = _ld_to_double(quarter * _LD(r13 + r31) / _LD(b))
            a = _ld_to_double(quarter * _LD(r32 - r23) / _LD(b))
        elif yd > 1.0:
            c = _ld_to_double(_LD(0.5) * _LD(math.sqrt(yd)))
            b = _ld_to_double(quarter * _LD(r12 + r21) / _LD(c))
            d = _ld_to_double(quarter * _LD(r23 + r32) / _LD(c))
            a = _ld_to_double(quarter * _LD(r13 - r31) / _LD(c))
        else:
            d = _ld_to_double(_LD(0.5) * _LD(math.sqrt(zd)))
            b = _ld_to_double(quarter * _LD(r13 + r31) / _LD(d))
            c = _ld_to_double(quarter * _LD(r23 + r32) / _LD(d))
            a = _ld_to_double(quarter * _LD(r21 - r12) / _LD(d))
        if a < 0.0:
            b, c, d = -b, -c, -d
    return b, c, d, qfac


def _ras_matrix(origin: Sequence[float], direction: Sequence[float]) -> list[list[np.float32]]:
    """The 3x4 qform matrix ITK builds from LPS geometry (``direction`` row-major 3x3)."""
    # Each image axis' direction (a column of the direction matrix), LPS to RAS.
    d = direction
    axes = [[-d[j], -d[3 + j], d[6 + j]] for j in range(3)]
    rows = [[float(_F32(v)) for v in axis] for axis in axes]
    orthog = _make_orthog(rows)
    matrix = [[orthog[j][i] for j in range(3)] for i in range(3)]  # transposed
    offsets = (_F32(-origin[0]), _F32(-origin[1]), _F32(origin[2]))
    return [[*matrix[i], offsets[i]] for i in range(3)]


def nifti_header(
    size: Sequence[int], dtype: np.dtype[Any], components: int, geometry: Geometry
) -> bytes:
    """The 352 bytes before the voxels: header and extension flag.

    ``size`` is (x, y, z) or (x, y, z, t); a 4-D image's 4th-axis spacing is
    ``geometry.time_spacing``."""
    origin, spacing = geometry.origin, geometry.spacing
    ndim = len(size)
    if ndim not in (3, 4):
        raise ValueError(f"a volume has 3 or 4 dimensions, not {ndim}")
    dims = [ndim, *size] + [1] * (7 - ndim)
    pixdim = [0.0] * 8
    for i in range(3):
        pixdim[i + 1] = float(_F32(spacing[i]))
    if ndim == 4:
        pixdim[4] = float(_F32(geometry.time_spacing))
    intent = 0
    if components > 1:
        dims[0] = 5
        dims[5] = components
        intent = NIFTI_INTENT_VECTOR
    matrix = _ras_matrix(origin, geometry.direction)
    b, c, d, qfac = _quaternion(matrix)
    pixdim[0] = qfac
    srows = []
    for i in range(3):
        row = [float(_F32(spacing[j]) * matrix[i][j]) for j in range(3)]
        srows.append([*row, float(matrix[i][3])])
    header = _HEADER.pack(
        HEADER_SIZE,
        b"",
        b"",
        0,
        0,
        b"r",
        b"\0",
        *dims,
        0.0,
        0.0,
        0.0,
        intent,
        datatype_code(dtype),
        dtype.itemsize * 8,
        0,
        *pixdim,
        float(VOX_OFFSET),
        1.0,
        0.0,
        0,
        b"\0",
        bytes([NIFTI_UNITS_MM_SEC]),
        0.0,
        0.0,
        0.0,
        0.0,
        0,
        0,
        b"",
        b"",
        NIFTI_XFORM_SCANNER_ANAT,
        NIFTI_XFORM_SCANNER_ANAT,
        float(_F32(b)),
        float(_F32(c)),
        float(_F32(d)),
        float(matrix[0][3]),
        float(matrix[1][3]),
        float(matrix[2][3]),
        *srows[0],
        *srows[1],
        *srows[2],
        b"",
        b"n+1\0",
    )
    return header + b"\0\0\0\0"


def nifti_voxels(voxels: Array) -> Array:
    """The voxels in NIfTI's order: x fastest, then y, z, t, and components slowest.

    ``voxels`` is ``(t, z, y, x)`` or ``(t, z, y, x, c)``; a scalar C-contiguous array is
    returned as it is (no copy), a vector one with its components moved to the front."""
    if voxels.ndim == 5:
        return np.ascontiguousarray(np.moveaxis(voxels, -1, 0))
    return np.ascontiguousarray(voxels)


def write_nifti(fp: BinaryIO, header: bytes, voxels: Array, compress: bool) -> None:
    """Write header and voxels (already in NIfTI order) to an open binary file."""
    data = voxels.data.cast("B") if voxels.size else memoryview(b"")
    if not compress:
        fp.write(header)
        fp.write(data)
        return
    for piece in gzip_stream(header, data):
        fp.write(piece)


def gzip_stream(*parts: bytes | memoryview, level: int = GZIP_LEVEL) -> Iterator[bytes]:
    """A gzip member (RFC 1952, no name, no time) of the concatenated ``parts``.

    The data is compressed in GZIP_CHUNK pieces on GZIP_THREADS threads (zlib releases the
    GIL), each piece a run of deflate blocks of its own ending on a byte boundary (a sync
    flush), the last one final: together one deflate stream, as pigz writes it."""
    views = [memoryview(part).cast("B") for part in parts]
    pieces = [
        view[start : start + GZIP_CHUNK]
        for view in views
        for start in range(0, len(view), GZIP_CHUNK)
    ]
    if not pieces:
        pieces = [memoryview(b"")]
    last = len(pieces) - 1

    def deflate(number: int) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        mode = zlib.Z_FINISH if number == last else zlib.Z_SYNC_FLUSH
        return compressor.compress(pieces[number]) + compressor.flush(mode)

    yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
    crc = 0
    length = 0
    with ThreadPoolExecutor(max_workers=GZIP_THREADS) as pool:
        for piece, compressed in zip(pieces, pool.map(deflate, range(len(pieces))), strict=True):
            crc = zlib.crc32(piece, crc)
            length += len(piece)
            yield compressed
    yield struct.pack("<II", crc & 0xFFFFFFFF, length & 0xFFFFFFFF)
