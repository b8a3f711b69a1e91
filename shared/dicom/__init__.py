"""The DICOM model: reading Part-10 files, the DICOM JSON Model and the study hierarchy."""
