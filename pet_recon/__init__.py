"""petrecon: low-dose PET restoration with SUV-consistent DICOM output."""

__version__ = "0.1.0"
