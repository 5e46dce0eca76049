"""RTSTRUCT writing: label maps traced into contours, decimated, encoded and built into the dataset."""

from dicom_node.outputs.rtstruct.builder import build_rtstruct

__all__ = ["build_rtstruct"]
