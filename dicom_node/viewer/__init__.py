"""The review page's slice viewer: a job's CT and label map as PNG slices (axial, coronal, sagittal).

:mod:`render` draws one slice (pure functions of arrays); :mod:`volumes` loads a job's CT series and
kept label map into display order and keeps the last few in memory.
"""
