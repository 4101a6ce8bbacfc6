"""Input and output: DICOM series, derived-series writer, SUV, sinogram files."""
