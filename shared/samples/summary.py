"""A short human-readable summary of DICOM files, one line per series."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom


@dataclass
class _Series:
    number: int
    modality: str
    description: str
    uid: str
    files: int = 0
    shapes: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)


def describe(paths: Iterable[Path]) -> str:
    """One line per series of the given files: number, modality, count, size, description."""
    series: dict[str, _Series] = {}
    studies: dict[str, str] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        studies[str(ds.StudyInstanceUID)] = str(ds.get("StudyDescription", ""))
        uid = str(ds.SeriesInstanceUID)
        entry = series.get(uid)
        if entry is None:
            entry = series[uid] = _Series(
                number=int(ds.get("SeriesNumber", 0) or 0),
                modality=str(ds.get("Modality", "")),
                description=str(ds.get("SeriesDescription", "")),
                uid=uid,
            )
        entry.files += 1
        entry.folders.add(Path(path).parent.name)
        if "Rows" in ds:
            entry.shapes.add(f"{ds.Rows}x{ds.Columns}")
    lines = [f"study {uid}  {desc!r}" for uid, desc in sorted(studies.items())]
    for s in sorted(series.values(), key=lambda s: (s.number, s.uid)):
        shape = ",".join(sorted(s.shapes)) or "-"
        folder = ",".join(sorted(s.folders))
        lines.append(
            f"  {s.number:>3} {s.modality:<3} {s.files:>4} x {shape:<9} "
            f"{s.description!r:<28} {folder}/  {s.uid}"
        )
    return "\n".join(lines)
