"""Converting one series into volumes, or saying why not.

A series' instances without pixel data (structured reports, RT structures, presentation
states, key objects) and localizers are reported, not converted. The image instances are
cut into frames, the frames into stacks (one volume each), and each stack is either
written or refused with its reason (see :mod:`shared.volumes.stacks`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID

from shared.dicom.attributes import attribute
from shared.dicom.files import InstanceFile
from shared.dicom.json_model import JsonAttributes, tag_key
from shared.dicom.metadata import AcquiredGeometry, NotConverted, Resampling, Scaling, Volume
from shared.errors import InvalidInputError
from shared.identifiers import is_valid_uid
from shared.volumes.frames import Frame, frames_of
from shared.volumes.kinds import (
    Scale,
    ScalingMode,
    ge_reversed_timepoints,
    precise_scale,
    time_spacing,
)
from shared.volumes.pixels import Array, load_stack
from shared.volumes.preview import dicom_window, write_preview
from shared.volumes.resample import resample_stack
from shared.volumes.stacks import (
    Refusal,
    StackPlan,
    orientation_label,
    plan_stack,
    split_stacks,
)
from shared.volumes.writer import ImageFormat, VolumeBuffer

Polarity = Literal["NORMAL", "REVERSED"] | None

_LOCALIZER_DESCRIPTION = re.compile(
    r"(?i)(localizer|localiser|scout|survey|surview|topogram|3[- ]?plane|tri-?pilot)"
)


@dataclass(frozen=True)
class ConversionOptions:
    image_format: ImageFormat = "mhd"
    min_slices: int = 2
    resample: bool = True
    """Resample tilted and unevenly spaced stacks (else refuse them)."""
    scaling: ScalingMode = "display"
    """display: RescaleSlope/Intercept (else Real World Value mapping); precise: Philips'
    floating-point values where the private scale slope is present."""
    previews: bool = True
    """Write a PNG of each volume's three middle slices beside it (shared.volumes.preview)."""


def image_stem(series_instance_uid: str) -> str:
    """The file-name stem for a series: its UID, or a UID derived from it if it is invalid.

    An invalid UID never reaches a path as it is: it is replaced by a ``2.25`` UID made from
    its SHA-256 digest, which is stable and recorded in the metadata.
    """
    if is_valid_uid(series_instance_uid):
        return series_instance_uid
    digest = int.from_bytes(hashlib.sha256(series_instance_uid.encode()).digest()[:16], "big")
    return f"2.25.{digest}"


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else f"SOP class {uid}"


def _is_localizer(files: Sequence[InstanceFile]) -> bool:
    for item in files:
        image_type = [str(v).upper() for v in attribute(item.dataset, "ImageType") or []]
        if "LOCALIZER" in image_type:
            return True
    description = str(files[0].dataset.get("SeriesDescription", ""))
    return bool(_LOCALIZER_DESCRIPTION.search(description))


def convert_series(
    series_uid: str, files: Sequence[InstanceFile], output_dir: Path, options: ConversionOptions
) -> tuple[list[Volume], list[NotConverted]]:
    """Convert a series' files (in series order) into volumes written to ``output_dir``."""
    not_converted: list[NotConverted] = []
    images = [i for i, item in enumerate(files) if item.has_pixel_data]
    others = [item for item in files if not item.has_pixel_data]
    if others:
        classes = sorted({_sop_class_name(str(item.dataset.SOPClassUID)) for item in others})
        not_converted.append(
            NotConverted(
                code="not_an_image",
                reason=f"{', '.join(classes)}: no pixel data, nothing to convert",
                instances=[item.sop_instance_uid for item in others],
            )
        )
    if not images:
        return [], not_converted
    image_files = [files[i] for i in images]
    if _is_localizer(image_files):
        not_converted.append(
            NotConverted(
                code="localizer",
                reason="localizer (scout) images are for planning, not a volume",
                instances=[item.sop_instance_uid for item in image_files],
            )
        )
        return [], not_converted
    frames: list[Frame] = []
    for i in images:
        frames.extend(frames_of(files[i], i))
    stacks = split_stacks(frames)
    # Each stack becomes one volume, or several when its timepoints differ in polarity.
    parts: list[tuple[list[Frame], StackPlan | Refusal, Polarity]] = []
    for stack in stacks:
        plan = plan_stack(stack, options.min_slices, options.resample)
        if isinstance(plan, Refusal):
            parts.append((stack, plan, None))
            continue
        for part, polarity in split_polarity(files, plan):
            parts.append((stack, _scaled(part, options.scaling), polarity))
    stem = image_stem(series_uid)
    several = len(parts) > 1
    volumes: list[Volume] = []
    for number, (stack, plan, polarity) in enumerate(parts, start=1):
        key = f"{stem}-{number}" if several else stem
        if isinstance(plan, Refusal):
            instance_uids = list(dict.fromkeys(files[f.instance].sop_instance_uid for f in stack))
            not_converted.append(
                NotConverted(
                    code=plan.code,
                    reason=plan.reason,
                    stack=number if several else None,
                    instances=instance_uids,
                )
            )
            continue
        used = [f for row in plan.frames for f in row]
        instance_uids = list(dict.fromkeys(files[f.instance].sop_instance_uid for f in used))
        image_name = f"{key}.{options.image_format}"
        buffer = VolumeBuffer(output_dir / image_name)
        resampling: Resampling | None = None
        try:
            if plan.resampling is None:
                voxels, notes = load_stack(files, plan.frames, buffer)
            else:
                voxels, notes, resampling = _load_resampled(files, plan, buffer)
        except BaseException as exc:
            buffer.discard()  # the partial file of a buffer mapped to the image file
            if not isinstance(exc, InvalidInputError):
                raise
            not_converted.append(
                NotConverted(
                    code="unreadable_pixel_data",
                    reason=exc.reason,
                    stack=number if several else None,
                    instances=instance_uids,
                )
            )
            continue
        pixel_type = voxels.dtype.name
        components = voxels.shape[4] if voxels.ndim == 5 else 1
        first = plan.frames[0][0]
        timing = (
            time_spacing(files[first.instance].dataset, first.repetition_time, "RepetitionTime")
            if plan.timepoint_count > 1
            else None
        )
        if plan.timepoint_count > 1 and timing is None:
            notes.append("no RepetitionTime: 4th-axis spacing of 1 s written")
        buffer.write(
            plan.origin,
            plan.spacing,
            plan.direction,
            timing.seconds if timing else 1.0,
        )
        scaling = _scaling_record(used, options.scaling)
        preview = f"{key}.png" if options.previews else None
        if preview is not None:
            dataset = files[first.instance].dataset
            window = dicom_window(dataset) if scaling.values != "precise" else None
            write_preview(voxels, plan.spacing, output_dir / preview, window)
        del voxels, buffer
        if polarity == "REVERSED":
            notes.append("reversed phase-encoding polarity: rows flipped back (GE epi_pepolar)")
        shape = list(plan.shape)
        if plan.timepoint_count > 1:
            shape.append(plan.timepoint_count)
        volumes.append(
            Volume(
                key=key,
                image=image_name,
                stack=number,
                shape=shape,
                spacing=list(plan.spacing),
                origin=list(plan.origin),
                direction=list(plan.direction),
                orientation=orientation_label(plan.direction),
                sliceCount=plan.slice_count,
                timepointCount=plan.timepoint_count,
                pixelType=pixel_type,
                components=components,
                attributes=_stack_attributes(first) if several else {},
                instances=instance_uids,
                notes=plan.notes + notes,
                resampling=resampling,
                imageKind=first.kind or None,
                phaseEncodingPolarity=polarity,
                timeSpacing=timing.seconds if timing else None,
                timeSpacingSource=timing.source if timing else None,
                scaling=scaling,
                preview=preview,
            )
        )
    return volumes, not_converted


def split_polarity(
    files: Sequence[InstanceFile], plan: StackPlan
) -> list[tuple[StackPlan, Polarity]]:
    """A plan as one part per phase-encoding polarity, normal first.

    Only series that record a polarity per volume (GE ``epi_pepolar``, see
    :func:`shared.volumes.kinds.ge_reversed_timepoints`) get one; reversed timepoints have
    their rows flipped back on loading, so every part has the orientation of the others.
    """
    first = plan.frames[0][0]
    reversed_at = ge_reversed_timepoints(files[first.instance].dataset, plan.timepoint_count)
    if reversed_at is None:
        return [(plan, None)]
    parts: list[tuple[StackPlan, Polarity]] = []
    polarities: tuple[tuple[bool, Polarity], ...] = ((False, "NORMAL"), (True, "REVERSED"))
    for flag, polarity in polarities:
        rows = [row for row, rev in zip(plan.frames, reversed_at, strict=True) if rev == flag]
        if not rows:
            continue
        if flag:
            rows = [[replace(f, flip_rows=True) for f in row] for row in rows]
        parts.append((replace(plan, frames=rows), polarity))
    return parts


def _scaled(plan: StackPlan, mode: ScalingMode) -> StackPlan:
    """``plan`` with Philips' precise slope and intercept on its frames, in precise mode."""
    if mode != "precise":
        return plan
    rows = []
    changed = False
    for row in plan.frames:
        out = []
        for f in row:
            scale = Scale(f.slope, f.intercept, f.scale_source, f.philips_scale_slope)
            precise = precise_scale(scale)
            if precise is not None:
                f = replace(f, slope=precise[0], intercept=precise[1], scale_source="precise")
                changed = True
            out.append(f)
        rows.append(out)
    return replace(plan, frames=rows) if changed else plan


def _scaling_record(frames: Sequence[Frame], mode: ScalingMode) -> Scaling:
    """What was applied to the stored values of ``frames``, for the metadata."""
    factors = sorted({(f.slope, f.intercept) for f in frames})
    philips = sorted({f.philips_scale_slope for f in frames if f.philips_scale_slope})
    sources = {f.scale_source for f in frames} - {""}
    values: Literal["stored", "display", "precise"] = "display"
    if "precise" in sources:
        values, source = "precise", "Philips scale slope (2005,100E)"
    elif factors == [(1.0, 0.0)]:
        values, source = "stored", "none"
    else:
        source = " and ".join(sorted(sources)) or "RescaleIntercept"
    return Scaling(
        values=values,
        source=source,
        factors=[[slope, intercept] for slope, intercept in factors],
        philipsScaleSlopes=philips,
    )


def _load_resampled(
    files: Sequence[InstanceFile], plan: StackPlan, buffer: VolumeBuffer
) -> tuple[Array, list[str], Resampling]:
    """Load a stack as acquired, resample it into ``buffer``; say what was done."""
    grid = plan.resampling
    assert grid is not None
    acquired, notes = load_stack(files, plan.frames)
    shape = (acquired.shape[0], grid.slices, grid.rows, grid.columns, *acquired.shape[4:])
    voxels = buffer(shape, acquired.dtype)
    fill = resample_stack(acquired, grid, voxels)
    first = plan.frames[0][0]
    assert first.pixel_spacing is not None
    gaps = [b - a for a, b in zip(grid.depths, grid.depths[1:], strict=False)]
    record = Resampling(
        reasons=list(grid.reasons),
        tiltDegrees=grid.tilt_degrees,
        interpolation="linear",
        fillValue=fill,
        acquired=AcquiredGeometry(
            spacing=[first.pixel_spacing[1], first.pixel_spacing[0], sorted(gaps)[len(gaps) // 2]],
            direction=list(plan.direction),
            slicePositions=[list(f.position or ()) for f in plan.frames[0]],
        ),
        description=grid.describe(),
    )
    return voxels, notes, record


def _stack_attributes(frame: Frame) -> JsonAttributes:
    """The attributes that set a stack apart, in the JSON Model."""
    out: JsonAttributes = {}
    for keyword, value in frame.stack_attributes:
        tag = tag_for_keyword(keyword)
        if tag is None or value in (None, "", ()):
            continue
        values: list[Any] = list(value) if isinstance(value, tuple) else [value]
        out[tag_key(tag)] = {"vr": dictionary_VR(tag), "Value": values}
    return dict(sorted(out.items()))
