"""What an image is, beyond its geometry: its kind, polarity, timing and scale factors.

These are the rules that keep different images at the same slice positions apart, and
that give a volume its 4th-axis spacing and its values. They read standard attributes
first and vendor fields where the standard has nothing (docs/conversion.md lists them):

* **Kind** (:func:`image_kind`): magnitude, phase, real, imaginary, field map, trace,
  ADC and the like. Frames of different kinds never share a volume.
* **Phase-encoding polarity** (:func:`ge_reversed_timepoints`): GE ``epi_pepolar``
  stores volumes acquired with reversed polarity upside down; they are flipped back and
  written apart from the others.
* **Timing** (:func:`time_spacing`): RepetitionTime, from the enhanced functional groups
  when there, plus GE's delay after a slice group.
* **Scale factors** (:func:`display_scale`, :func:`precise_scale`): RescaleSlope and
  Intercept, else the Real World Value mapping; or Philips' precise floating-point values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.dataset import Dataset

ScalingMode = Literal["display", "precise"]
SCALING_MODES: tuple[ScalingMode, ...] = ("display", "precise")

GE_VAS_COLLAPSE_FLAG = (0x0043, 0x1030)
"""GE private: 2 on the magnitude images of a B0 field-map series, 0 on the field map (read
for the B0-map pulse sequences only; other sequences use it otherwise)."""
GE_IMAGE_TYPE = (0x0043, 0x102F)
"""GE private image type: 0 magnitude, 1 phase, 2 real, 3 imaginary."""
GE_PULSE_SEQUENCE = (0x0019, 0x109C)
GE_USER_DATA_12 = (0x0019, 0x10B3)
"""GE private user CV 12: the ``epi_pepolar`` polarity scheme (see ge_reversed_timepoints)."""
GE_GROUP_DELAY = (0x0043, 0x107C)
"""GE private 'delay after slice group', in seconds, added to RepetitionTime."""
PHILIPS_DIFFUSION_DIRECTION = (0x2001, 0x1004)
PHILIPS_SCALE_SLOPE = (0x2005, 0x100E)
PHILIPS_B_VALUE_INDEX = (0x2005, 0x1412)
PHILIPS_GRADIENT_INDEX = (0x2005, 0x1413)
PHILIPS_PER_FRAME_PRIVATE = (0x2005, 0x140F)

_MANUFACTURER = 0x00080070
_VENDOR_ALIASES = {"GEHC": "GE", "GEMS": "GE", "GE-MEDICAL": "GE"}
_GE_IMAGE_TYPES = {0: "MAGNITUDE", 1: "PHASE", 2: "REAL", 3: "IMAGINARY"}
_GE_FIELD_MAP_SEQUENCES = ("b0map", "3db0map", "b0rf")
_COMPONENTS = {
    "MAGNITUDE": "MAGNITUDE",
    "PHASE": "PHASE",
    "REAL": "REAL",
    "IMAGINARY": "IMAGINARY",
}
# ImageType / FrameType values that say what an image is, in the order they are looked
# for: first the specific ones (before ComplexImageComponent), then the generic ones.
_SPECIFIC_WORDS: tuple[tuple[str, str], ...] = (
    ("TRACEW", "TRACE"),
    ("TRACE", "TRACE"),
    ("ISOTROPIC", "TRACE"),
    ("ADC", "ADC"),
    ("EADC", "ADC"),
    ("FA", "FA"),
    ("FIELD_MAP", "FIELD_MAP"),
    ("B0 MAP", "FIELD_MAP"),
    ("B0_MAP", "FIELD_MAP"),
)
_TYPE_WORDS: tuple[tuple[str, str], ...] = (
    *_SPECIFIC_WORDS,
    ("PHASE", "PHASE"),
    ("P", "PHASE"),
    ("REAL", "REAL"),
    ("R", "REAL"),
    ("IMAGINARY", "IMAGINARY"),
    ("I", "IMAGINARY"),
    ("MAGNITUDE", "MAGNITUDE"),
    ("M", "MAGNITUDE"),
)


def vendor(ds: Dataset) -> str:
    """The first word of Manufacturer, upper case: GE, PHILIPS, SIEMENS, … ("" if absent)."""
    name = ds.get(_MANUFACTURER)
    if name is None or not name.value:
        return ""
    first = str(name.value).upper().replace("_", " ").split(" ", 1)[0]
    return _VENDOR_ALIASES.get(first, first)


def private_value(ds: Dataset | None, tag: tuple[int, int]) -> Any:
    """The value of a private element, or None (never raises on a broken element)."""
    if ds is None:
        return None
    try:
        element = ds.get(tag)
        return None if element is None else element.value
    except Exception:  # a malformed private element is as good as absent
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore").strip("\x00 ")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "ignore").strip("\x00 ")
    return "" if value is None else str(value).strip()


# --------------------------------------------------------------------------------------
# Kind
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What sets a frame apart from others at the same position."""

    label: str  # MAGNITUDE, PHASE, REAL, IMAGINARY, FIELD_MAP_HZ, TRACE, ADC, … or ""
    key: tuple[tuple[str, Any], ...]  # vendor fields that must not be mixed in one volume


def image_kind(
    ds: Dataset,
    types: tuple[str, ...],
    component: str = "",
    directionality: str = "",
    b_value: float | None = None,
    maker: str | None = None,
) -> Kind:
    """The kind of a frame.

    ``types`` is the ImageType (classic) or FrameType (enhanced); ``component`` the
    enhanced ComplexImageComponent; ``directionality`` DiffusionDirectionality and
    ``b_value`` DiffusionBValue, from the enhanced MR Diffusion group or the classic file;
    ``maker`` the file's :func:`vendor`, when the caller has it already.
    """
    key: list[tuple[str, Any]] = []
    label = ""
    maker = vendor(ds) if maker is None else maker
    directionality = directionality.upper()
    # Philips classic DWI: (2001,1004) 'I' on the b=0 image and on the derived isotropic
    # (trace) image; only the latter has b > 0.
    if (
        maker == "PHILIPS"
        and not directionality
        and _text(private_value(ds, PHILIPS_DIFFUSION_DIRECTION)).upper() == "I"
    ):
        directionality = "ISOTROPIC"
    if directionality == "ISOTROPIC" and (b_value or 0.0) > 0.0:
        label = "TRACE"
        key.append(("DiffusionDirectionality", "ISOTROPIC"))
    if maker == "GE":
        ge_type = _number(private_value(ds, GE_IMAGE_TYPE))
        if ge_type is not None:
            key.append(("GEImageType", int(ge_type)))
        # (0043,1030) is read only where its meaning is known: the B0-map sequences.
        sequence = _text(private_value(ds, GE_PULSE_SEQUENCE)).lower()
        flag = (
            _number(private_value(ds, GE_VAS_COLLAPSE_FLAG))
            if sequence in _GE_FIELD_MAP_SEQUENCES
            else None
        )
        if flag is not None:
            key.append(("GEVasCollapseFlag", int(flag)))
        if not label and flag is not None:
            label = "MAGNITUDE" if int(flag) == 2 else "FIELD_MAP_HZ"
        elif not label and ge_type is not None and int(ge_type) in (1, 2, 3):
            label = _GE_IMAGE_TYPES[int(ge_type)]
    if not label:
        label = _label_from_types(types, _SPECIFIC_WORDS)
    if not label and component.upper() in _COMPONENTS:
        label = _COMPONENTS[component.upper()]
    if not label:
        label = _label_from_types(types, _TYPE_WORDS)
    return Kind(label, tuple(key))


def _label_from_types(types: tuple[str, ...], words: tuple[tuple[str, str], ...]) -> str:
    # Values 3 and later of ImageType are where vendors say what the image is.
    if len(types) > 2:
        present = set(types[2:])
        for word, label in words:
            if word in present:
                return label
    if words is _TYPE_WORDS and types and types[0] == "DERIVED":
        return "DERIVED"
    return ""


# --------------------------------------------------------------------------------------
# Phase-encoding polarity
# --------------------------------------------------------------------------------------


def ge_reversed_timepoints(ds: Dataset, count: int) -> list[bool] | None:
    """Which timepoints of a GE ``epi_pepolar`` series have reversed polarity, or None.

    The research sequence ``epi_pepolar`` records its polarity scheme in user CV 12
    (0019,10B3): 0 every volume normal, 1 every volume reversed, 2 reversed volumes
    first and alternating (1st, 3rd, …), 3 normal first and alternating (2nd, 4th, …
    reversed). Reversed volumes are stored upside down along the phase-encoding
    (column) direction. None for any other series.
    """
    if vendor(ds) != "GE":
        return None
    sequence = _text(private_value(ds, GE_PULSE_SEQUENCE)).lower()
    if "epi_pepolar" not in sequence:
        return None
    scheme = _number(private_value(ds, GE_USER_DATA_12))
    if scheme is None or int(scheme) not in (0, 1, 2, 3) or scheme != int(scheme):
        return None
    mode = int(scheme)
    return [
        mode == 1 or (mode == 2 and t % 2 == 0) or (mode == 3 and t % 2 == 1) for t in range(count)
    ]


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    seconds: float
    source: str


def time_spacing(ds: Dataset, repetition_time_ms: float | None, source: str) -> Timing | None:
    """The time between the volumes of a 4-D series, or None when nothing says it.

    ``repetition_time_ms`` is the frame's RepetitionTime (from the enhanced MR Timing and
    Related Parameters group, else the file's). For GE, the delay after a slice group
    (0043,107C, seconds) is added: the scanner waits that long after each volume.
    """
    if repetition_time_ms is None or repetition_time_ms <= 0:
        return None
    seconds = repetition_time_ms / 1000.0
    if vendor(ds) == "GE":
        delay = _number(private_value(ds, GE_GROUP_DELAY))
        if delay is not None and delay > 0:
            return Timing(seconds + delay, f"{source} + GE delay after slice group (0043,107C)")
    return Timing(seconds, source)


# --------------------------------------------------------------------------------------
# Scale factors
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """The display scale of one frame, and Philips' private scale slope if any."""

    slope: float
    intercept: float
    source: str  # "RescaleSlope", "RealWorldValueMapping" or "" (none: stored values)
    philips_scale_slope: float | None = None


def display_scale(
    rescale: tuple[float | None, float | None],
    real_world: Dataset | None,
    philips_scale_slope: float | None,
) -> Scale:
    """RescaleSlope/Intercept; where RescaleSlope is absent, the Real World Value mapping."""
    slope, intercept = rescale
    if slope is not None:
        return Scale(slope, intercept or 0.0, "RescaleSlope", philips_scale_slope)
    if real_world is not None:
        rw_slope = _number(real_world.get("RealWorldValueSlope"))
        if rw_slope is not None:
            rw_intercept = _number(real_world.get("RealWorldValueIntercept")) or 0.0
            return Scale(rw_slope, rw_intercept, "RealWorldValueMapping", philips_scale_slope)
    return Scale(1.0, intercept or 0.0, "", philips_scale_slope)


def philips_diffusion_order(ds: Dataset, vendor_name: str) -> tuple[int, int]:
    """Where a Philips classic DWI image falls among the volumes: its b-value index
    (2005,1412), then its gradient-direction number (2005,1413); (0, 0) for others.

    These order a Philips DWI's volumes whatever its InstanceNumbers, as dcm2niix does.
    """
    if vendor_name != "PHILIPS":
        return (0, 0)
    b_index = _number(private_value(ds, PHILIPS_B_VALUE_INDEX))
    gradient = _number(private_value(ds, PHILIPS_GRADIENT_INDEX))
    return (int(b_index or 0), int(gradient or 0))


def philips_scale_slope(ds: Dataset | None, vendor_name: str) -> float | None:
    """Philips' private scale slope (2005,100E) of a file or of a per-frame private item."""
    if vendor_name != "PHILIPS":
        return None
    value = _number(private_value(ds, PHILIPS_SCALE_SLOPE))
    return value if value is not None and value != 0.0 else None


def precise_scale(scale: Scale) -> tuple[float, float] | None:
    """Philips' floating-point value FP = (SV * RS + RI) / (RS * SS) as a slope and intercept.

    RS and RI are the display slope and intercept, SS the private scale slope. None when
    the frame has no private scale slope (then display values are the precise ones).
    """
    ss = scale.philips_scale_slope
    if ss is None or scale.slope == 0.0:
        return None
    divisor = scale.slope * ss
    return 1.0 / ss, scale.intercept / divisor
