"""Image kinds, phase-encoding polarity, timing and scale factors (shared/volumes/kinds.py),
and how enhanced multi-frame files feed them (shared/volumes/frames.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from shared.dicom.files import InstanceFile
from shared.volumes.frames import frames_of
from shared.volumes.kinds import (
    GE_GROUP_DELAY,
    GE_PULSE_SEQUENCE,
    GE_USER_DATA_12,
    GE_VAS_COLLAPSE_FLAG,
    PHILIPS_DIFFUSION_DIRECTION,
    Scale,
    display_scale,
    ge_reversed_timepoints,
    image_kind,
    precise_scale,
    time_spacing,
)


def _ds(manufacturer: str, **private: tuple[tuple[int, int], str, object]) -> Dataset:
    ds = Dataset()
    ds.Manufacturer = manufacturer
    for tag, vr, value in private.values():
        ds.add_new(tag, vr, value)
    return ds


def test_philips_isotropic_image_with_b_value_is_a_trace() -> None:
    ds = _ds("Philips Medical Systems", d=(PHILIPS_DIFFUSION_DIRECTION, "CS", "I"))
    types = ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE")
    trace = image_kind(ds, types, b_value=2000.0)
    b0 = image_kind(ds, types, b_value=0.0)
    assert trace.label == "TRACE" and ("DiffusionDirectionality", "ISOTROPIC") in trace.key
    assert b0.label == "MAGNITUDE" and b0.key == ()


def test_enhanced_isotropic_directionality_is_a_trace() -> None:
    types = ("DERIVED", "PRIMARY", "DIFFUSION")
    kind = image_kind(_ds("SIEMENS"), types, "MAGNITUDE", "ISOTROPIC", 1000.0)
    assert kind.label == "TRACE"


def test_ge_field_map_and_magnitude_differ() -> None:
    def ge(flag: int) -> Dataset:
        return _ds(
            "GE MEDICAL SYSTEMS",
            a=(GE_VAS_COLLAPSE_FLAG, "SS", flag),
            b=(GE_PULSE_SEQUENCE, "LO", "B0map"),
        )

    magnitude = image_kind(ge(2), ("ORIGINAL", "PRIMARY", "OTHER"))
    field_map = image_kind(ge(0), ("ORIGINAL", "PRIMARY", "OTHER"))
    assert (magnitude.label, field_map.label) == ("MAGNITUDE", "FIELD_MAP_HZ")
    assert magnitude.key != field_map.key


def test_ge_vas_collapse_flag_is_ignored_outside_b0_maps() -> None:
    def epi(flag: int) -> Dataset:
        return _ds(
            "GE MEDICAL SYSTEMS",
            a=(GE_VAS_COLLAPSE_FLAG, "SS", flag),
            b=(GE_PULSE_SEQUENCE, "LO", "epi2"),
        )

    assert image_kind(epi(14), ()).key == image_kind(epi(16), ()).key == ()


def test_field_map_frame_type_wins_over_complex_component() -> None:
    kind = image_kind(_ds("Philips"), ("ORIGINAL", "PRIMARY", "T1", "FIELD_MAP"), "MAGNITUDE")
    assert kind.label == "FIELD_MAP"


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        (0, [False, False, False, False]),
        (1, [True, True, True, True]),
        (2, [True, False, True, False]),
        (3, [False, True, False, True]),
    ],
)
def test_ge_epi_pepolar_schemes(scheme: int, expected: list[bool]) -> None:
    ds = _ds(
        "GE MEDICAL SYSTEMS",
        a=(GE_PULSE_SEQUENCE, "LO", "research/ABCD/epi_pepolar"),
        b=(GE_USER_DATA_12, "DS", f"{scheme}.000000"),
    )
    assert ge_reversed_timepoints(ds, 4) == expected


def test_polarity_only_for_epi_pepolar() -> None:
    ds = _ds(
        "GE MEDICAL SYSTEMS",
        a=(GE_PULSE_SEQUENCE, "LO", "epiRT"),
        b=(GE_USER_DATA_12, "DS", "2"),
    )
    assert ge_reversed_timepoints(ds, 4) is None
    assert ge_reversed_timepoints(_ds("SIEMENS"), 4) is None


def test_ge_group_delay_is_added_to_the_repetition_time() -> None:
    ds = _ds("GE MEDICAL SYSTEMS", a=(GE_GROUP_DELAY, "FL", 1.5))
    timing = time_spacing(ds, 2000.0, "RepetitionTime")
    assert timing is not None and timing.seconds == pytest.approx(3.5)
    assert "(0043,107C)" in timing.source
    plain = time_spacing(_ds("GE MEDICAL SYSTEMS"), 2000.0, "RepetitionTime")
    assert plain is not None and plain.seconds == 2.0
    assert time_spacing(ds, None, "RepetitionTime") is None


def test_real_world_value_mapping_where_rescale_slope_is_absent() -> None:
    rwv = Dataset()
    rwv.RealWorldValueSlope = 0.25
    rwv.RealWorldValueIntercept = -10.0
    assert display_scale((None, None), rwv, None) == Scale(0.25, -10.0, "RealWorldValueMapping")
    assert display_scale((2.0, 1.0), rwv, None) == Scale(2.0, 1.0, "RescaleSlope")
    assert display_scale((None, None), None, None) == Scale(1.0, 0.0, "")


def test_precise_scale_is_philips_floating_point() -> None:
    stored = 1000
    rs, ri, ss = 1.08205, 3.0, 0.00329864
    slope, intercept = precise_scale(Scale(rs, ri, "RescaleSlope", ss)) or (0.0, 0.0)
    assert stored * slope + intercept == pytest.approx((stored * rs + ri) / (rs * ss))
    assert precise_scale(Scale(rs, ri, "RescaleSlope", None)) is None


def _enhanced(frames: list[dict[str, object]], shared_tr: float | None) -> InstanceFile:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Manufacturer = "Philips"
    ds.Rows = ds.Columns = 4
    ds.NumberOfFrames = len(frames)
    ds.BitsAllocated = 16
    index = Dataset()
    index.DimensionIndexPointer = 0x00209057  # InStackPositionNumber: spatial, not an order
    index2 = Dataset()
    index2.DimensionIndexPointer = 0x00189087  # DiffusionBValue
    index3 = Dataset()
    index3.DimensionIndexPointer = 0x00189089  # gradient direction
    ds.DimensionIndexSequence = Sequence([index, index2, index3])
    shared = Dataset()
    if shared_tr is not None:
        timing = Dataset()
        timing.RepetitionTime = shared_tr
        shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures = Dataset()
    measures.PixelSpacing = [1, 1]
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    items = []
    for spec in frames:
        item = Dataset()
        content = Dataset()
        content.DimensionIndexValues = spec["dims"]
        item.FrameContentSequence = Sequence([content])
        position = Dataset()
        position.ImagePositionPatient = [0, 0, spec["z"]]
        item.PlanePositionSequence = Sequence([position])
        diffusion = Dataset()
        diffusion.DiffusionDirectionality = spec.get("directionality", "DIRECTIONAL")
        diffusion.DiffusionBValue = spec.get("b", 1000.0)
        item.MRDiffusionSequence = Sequence([diffusion])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    return InstanceFile(Path("enhanced.dcm"), "enhanced.dcm", ds)


def test_enhanced_timepoints_follow_dimension_indices_and_trace_is_apart() -> None:
    """Two positions; frames stored slice-major with gradient indices 2, 1 (so frame order
    is not volume order), plus an isotropic trace at each position."""
    spec = []
    for z in (0.0, 3.0):
        spec.append({"z": z, "dims": [int(z / 3) + 1, 2, 2]})
        spec.append({"z": z, "dims": [int(z / 3) + 1, 2, 1]})
        spec.append({"z": z, "dims": [int(z / 3) + 1, 2, 3], "directionality": "ISOTROPIC"})
    frames = frames_of(_enhanced(spec, 4571.0), 0)
    trace = [f for f in frames if f.kind == "TRACE"]
    dwi = [f for f in frames if f.kind != "TRACE"]
    assert len(trace) == 2 and len(dwi) == 4
    assert {f.stack_key for f in trace}.isdisjoint({f.stack_key for f in dwi})
    at_zero = sorted((f for f in dwi if f.position == (0.0, 0.0, 0.0)), key=lambda f: f.order_key)
    assert [f.frame for f in at_zero] == [1, 0]  # gradient index 1 before 2
    assert all(f.repetition_time == 4571.0 for f in frames)


def test_enhanced_repetition_time_falls_back_to_the_file() -> None:
    item = _enhanced([{"z": 0.0, "dims": [1, 1, 1]}], None)
    item.dataset.RepetitionTime = 500
    assert frames_of(item, 0)[0].repetition_time == 500.0


def test_rules_see_what_a_volume_is() -> None:
    """ImageKind, PhaseEncodingPolarity and TimeSpacing are derived attributes of a volume."""
    from shared.dicom.metadata import DicomMetadata, Series, Study, Volume
    from shared.selection.candidates import build_candidates

    def volume(key: str, **what: object) -> Volume:
        return Volume.model_validate(
            {
                "key": key,
                "image": f"{key}.nii",
                "stack": 1,
                "shape": [4, 4, 3, 2],
                "spacing": [1.0, 1.0, 1.0],
                "origin": [0.0, 0.0, 0.0],
                "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                "orientation": "AXIAL",
                "sliceCount": 3,
                "pixelType": "int16",
                "instances": [],
                **what,
            }
        )

    series = Series(
        SeriesInstanceUID="1.2.3",
        volumes=[
            volume("1.2.3-1", imageKind="FIELD_MAP_HZ", timeSpacing=7.4),
            volume("1.2.3-2", phaseEncodingPolarity="REVERSED"),
        ],
        instances=[],
    )
    metadata = DicomMetadata(
        generator="test", studies=[Study(StudyInstanceUID="1.2", series=[series])]
    )
    first, second = build_candidates(metadata, {"1.2.3-1": "a.nii", "1.2.3-2": "b.nii"})
    assert first.view["ImageKind"] == ["FIELD_MAP_HZ"] and first.view["TimeSpacing"] == [7.4]
    assert "PhaseEncodingPolarity" not in first.view
    assert second.view["PhaseEncodingPolarity"] == ["REVERSED"] and "ImageKind" not in second.view


def test_philips_classic_dwi_volumes_follow_b_value_and_gradient_indices() -> None:
    """InstanceNumbers jumbled: the b-value index and gradient number decide the order."""
    items = []
    for n, (b_index, gradient) in enumerate([(2, 2), (1, 16), (2, 1)]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.Manufacturer = "Philips Medical Systems"
        ds.Rows = ds.Columns = 4
        ds.ImagePositionPatient = [0, 0, 0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.InstanceNumber = 10 - n
        ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 005")
        ds.add_new((0x2005, 0x1412), "IS", b_index)
        ds.add_new((0x2005, 0x1413), "IS", gradient)
        items.append(InstanceFile(Path(f"{n}.dcm"), f"{n}.dcm", ds))
    frames = [frames_of(item, n)[0] for n, item in enumerate(items)]
    ordered = sorted(frames, key=lambda f: f.order_key)
    assert [f.instance for f in ordered] == [1, 2, 0]
