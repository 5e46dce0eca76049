"""Malformed DICOM made by code: datasets (``datasets``) and PDUs (``pdus``) the node must refuse."""
