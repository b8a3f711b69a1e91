"""The Series Selector operator: metadata and series images in, selected-images.json out."""

from __future__ import annotations

from pathlib import Path

from shared.dicom.metadata import (
    METADATA_FILE,
    SELECTED_IMAGES_FILE,
    SERIES_IMAGES_FILE,
    load_metadata,
    load_series_images,
)
from shared.errors import InvalidInputError
from shared.operator.outputs import write_json_atomic
from shared.selection import SelectionRules, select


def run_selector_operator(
    input_dir: Path, output_dir: Path, rules: SelectionRules
) -> dict[str, dict[str, str]]:
    """Read the parser's outputs from ``input_dir``, write the selection to ``output_dir``."""
    if not input_dir.is_dir():
        raise InvalidInputError(f"input folder {input_dir} does not exist or is not a folder")
    metadata = load_metadata(input_dir / METADATA_FILE)
    series_images = load_series_images(input_dir / SERIES_IMAGES_FILE)
    selections = select(rules, metadata, series_images)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / SELECTED_IMAGES_FILE, selections)
    return selections
