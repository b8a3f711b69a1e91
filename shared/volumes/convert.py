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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID

from shared.dicom.files import InstanceFile
from shared.dicom.json_model import JsonAttributes, tag_key
from shared.dicom.metadata import AcquiredGeometry, NotConverted, Resampling, Volume
from shared.errors import InvalidInputError
from shared.identifiers import is_valid_uid
from shared.volumes.frames import Frame, frames_of
from shared.volumes.pixels import Array, load_stack
from shared.volumes.resample import resample_stack
from shared.volumes.stacks import (
    Refusal,
    StackPlan,
    orientation_label,
    plan_stack,
    split_stacks,
)
from shared.volumes.writer import ImageFormat, VolumeBuffer, set_geometry, write_image

_LOCALIZER_DESCRIPTION = re.compile(
    r"(?i)(localizer|localiser|scout|survey|surview|topogram|3[- ]?plane|tri-?pilot)"
)


@dataclass(frozen=True)
class ConversionOptions:
    image_format: ImageFormat = "mhd"
    min_slices: int = 2
    resample: bool = True
    """Resample tilted and unevenly spaced stacks (else refuse them)."""


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
        image_type = [str(v).upper() for v in item.dataset.get("ImageType") or []]
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
    stem = image_stem(series_uid)
    volumes: list[Volume] = []
    for number, stack in enumerate(stacks, start=1):
        key = stem if len(stacks) == 1 else f"{stem}-{number}"
        instance_uids = list(dict.fromkeys(files[f.instance].sop_instance_uid for f in stack))
        plan = plan_stack(stack, options.min_slices, options.resample)
        if isinstance(plan, Refusal):
            not_converted.append(
                NotConverted(
                    code=plan.code,
                    reason=plan.reason,
                    stack=number if len(stacks) > 1 else None,
                    instances=instance_uids,
                )
            )
            continue
        image_name = f"{key}.{options.image_format}"
        buffer = VolumeBuffer()
        resampling: Resampling | None = None
        try:
            if plan.resampling is None:
                voxels, notes = load_stack(files, plan.frames, buffer)
            else:
                voxels, notes, resampling = _load_resampled(files, plan, buffer)
        except InvalidInputError as exc:
            not_converted.append(
                NotConverted(
                    code="unreadable_pixel_data",
                    reason=exc.reason,
                    stack=number if len(stacks) > 1 else None,
                    instances=instance_uids,
                )
            )
            continue
        pixel_type = voxels.dtype.name
        components = voxels.shape[4] if voxels.ndim == 5 else 1
        del voxels  # a view of the image's buffer
        image = buffer.image
        assert image is not None
        repetition = files[stack[0].instance].dataset.get("RepetitionTime")
        time_spacing = float(repetition) / 1000.0 if repetition else 1.0
        set_geometry(image, plan.origin, plan.spacing, plan.direction, time_spacing)
        write_image(image, output_dir / image_name)
        del image, buffer
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
                attributes=_stack_attributes(stack[0]) if len(stacks) > 1 else {},
                instances=instance_uids,
                notes=plan.notes + notes,
                resampling=resampling,
            )
        )
    return volumes, not_converted


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
