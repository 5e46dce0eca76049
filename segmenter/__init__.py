"""Images and models only: volumes, the structure catalogue, segmentation engines.

This package never imports ``dicom_node`` so it can be used and tested alone.
"""

__version__ = "0.1.0"
