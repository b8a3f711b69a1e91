"""Conversion of DICOM image series into volumes (MetaImage, NIfTI)."""
