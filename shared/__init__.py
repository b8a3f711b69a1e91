"""Code every seriesflow component uses: DICOM model, conversion, selection, settings."""

__version__ = "0.1.0"
