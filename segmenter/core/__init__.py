"""Shared by every engine: the volume type, segmentation results, the structure catalogue, errors and overlap
metrics."""
