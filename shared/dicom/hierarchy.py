"""Study / series / instance hierarchy and the placement of attributes in it.

Instances are grouped by StudyInstanceUID and SeriesInstanceUID. Attributes are compared by
their encoded bytes, which is cheap, and each distinct value is turned into the JSON Model
only once: attributes equal in every instance of a series go to the series, Patient and
Study module attributes equal in every series go to the study, and only what varies stays
with the instance.

Grouping and the choice of common tags work on files at rest (see
:class:`~shared.dicom.files.HeaderReader`); only the JSON conversion needs whole datasets,
and it wakes one series at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword

from shared.dicom.files import InstanceFile, SparseSignatures, awake, tags_outside
from shared.dicom.json_model import JsonAttributes, JsonCache, dataset_to_json
from shared.dicom.metadata import Instance, SkippedFile

# Patient, Patient Study and General Study module attributes (PS3.3 C.7.1.1, C.7.2.1-2).
_STUDY_KEYWORDS = [
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "MedicalAlerts",
    "Allergies",
    "Occupation",
    "SmokingStatus",
    "AdditionalPatientHistory",
    "PregnancyStatus",
    "PatientSexNeutered",
]
STUDY_TAGS = frozenset(t for k in _STUDY_KEYWORDS if (t := tag_for_keyword(k)) is not None)
_MISSING = object()


@dataclass
class SeriesInstances:
    """The instances of one series, in a stable order, and its attribute placement."""

    series_instance_uid: str
    files: list[InstanceFile]
    attributes: JsonAttributes = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)
    common_tags: frozenset[int] = frozenset()


@dataclass
class StudyInstances:
    study_instance_uid: str
    series: list[SeriesInstances]
    attributes: JsonAttributes = field(default_factory=dict)


def _common_tags(files: Sequence[InstanceFile]) -> frozenset[int]:
    """Tags whose value is the same in every file (compared by their encoded bytes)."""
    sparse = [s for f in files if isinstance(s := f.signatures, SparseSignatures)]
    first = sparse[0] if sparse else None
    if (
        first is not None
        and len(sparse) == len(files)
        and all(s.reference is first.reference for s in sparse)
    ):
        # One shared reference: only the tags some file differs on need a comparison.
        touched = frozenset().union(*(s.touched for s in sparse))
        common = set(first.reference) - touched
        for tag in touched:
            value = first.get(tag, _MISSING)
            if value is not _MISSING and all(s.get(tag, _MISSING) == value for s in sparse):
                common.add(tag)
        return frozenset(common)
    reference = files[0].signatures
    common = set(reference)
    for other in files[1:]:
        signatures = other.signatures
        common = {t for t in common if signatures.get(t, _MISSING) == reference[t]}
    return frozenset(common)


def _series_sort_key(series: SeriesInstances) -> tuple[int, str]:
    number = series.files[0].dataset.get("SeriesNumber")
    try:
        return (int(number), series.series_instance_uid)
    except (TypeError, ValueError):
        return (2**31, series.series_instance_uid)


def _instance_sort_key(item: InstanceFile) -> tuple[int, str]:
    number = item.dataset.get("InstanceNumber")
    try:
        return (int(number), item.relative_path)
    except (TypeError, ValueError):
        return (2**31, item.relative_path)


def group_instances(
    files: Iterable[InstanceFile], *, place: bool = True
) -> tuple[list[StudyInstances], list[SkippedFile]]:
    """Group instances into studies and series; a repeated SOP Instance UID is skipped.

    With ``place`` the attributes of every level are filled in too; without, the caller
    does it one study and one series at a time (:func:`place_study_attributes`,
    :func:`place_series_attributes`), converting each series while it is awake.

    Of two files with the same SOP Instance UID the first is kept, unless its pixel data
    is cut short and the other's is complete: a damaged stray copy never pushes out an
    intact file.
    """
    chosen: dict[str, InstanceFile] = {}
    skipped: list[SkippedFile] = []
    for item in files:
        uid = item.sop_instance_uid
        kept = chosen.get(uid)
        if kept is None:
            chosen[uid] = item
            continue
        if not kept.pixel_data_complete and item.pixel_data_complete:
            chosen[uid] = item
            item, kept = kept, item
            reason = (
                f"duplicate SOP Instance UID: a copy of {kept.relative_path} whose pixel "
                f"data is cut short; {kept.relative_path} is complete and was used"
            )
        else:
            reason = f"duplicate SOP Instance UID: the same instance as {kept.relative_path}"
        skipped.append(SkippedFile(path=item.relative_path, code="duplicate", reason=reason))
    by_study: dict[str, dict[str, list[InstanceFile]]] = defaultdict(lambda: defaultdict(list))
    for item in chosen.values():
        by_study[item.study_instance_uid][item.series_instance_uid].append(item)
    studies: list[StudyInstances] = []
    for study_uid, series_map in by_study.items():
        series = [
            SeriesInstances(uid, sorted(members, key=_instance_sort_key))
            for uid, members in series_map.items()
        ]
        series.sort(key=_series_sort_key)
        studies.append(StudyInstances(study_uid, series))
    studies.sort(
        key=lambda s: (str(s.series[0].files[0].dataset.get("StudyDate", "")), s.study_instance_uid)
    )
    if place:
        for study in studies:
            place_attributes(study)
    return studies, skipped


def place_attributes(study: StudyInstances) -> None:
    """Fill in the study, series and instance attributes (see the module docstring)."""
    study_tags = place_study_attributes(study)
    for series in study.series:
        with awake(series.files):
            place_series_attributes(series, study_tags)


def place_study_attributes(study: StudyInstances) -> frozenset[int]:
    """Choose every series' common tags and fill in the study's attributes.

    Returns the tags that went to the study, for :func:`place_series_attributes`.
    """
    for series in study.series:
        series.common_tags = _common_tags(series.files)
    first_series = study.series[0]
    study_tags = {t for t in first_series.common_tags if t in STUDY_TAGS}
    reference = first_series.files[0].signatures
    for other in study.series[1:]:
        signatures = other.files[0].signatures
        study_tags = {
            t for t in study_tags if t in other.common_tags and signatures[t] == reference[t]
        }
    with awake(first_series.files[:1]):
        study.attributes = dataset_to_json(first_series.files[0].dataset, study_tags)
    return frozenset(study_tags)


def place_series_attributes(series: SeriesInstances, study_tags: frozenset[int]) -> None:
    """Fill in a series' and its instances' attributes; its files must be awake."""
    series_tags = series.common_tags - study_tags
    series.attributes = dataset_to_json(series.files[0].dataset, series_tags)
    series.instances = []
    cache: JsonCache = {}  # values shared by some of the series' instances, converted once
    common = series.common_tags
    for item, own in zip(series.files, tags_outside(series.files, common), strict=True):
        series.instances.append(
            Instance(
                SOPInstanceUID=item.sop_instance_uid,
                path=item.relative_path,
                attributes=dataset_to_json(item.dataset, own, cache),
            )
        )
