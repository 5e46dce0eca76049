"""Error hierarchy of the segmenter package."""


class SegmenterError(Exception):
    """Base class of every error the segmenter raises on purpose."""


class VolumeError(SegmenterError):
    """An image cannot be used as a volume (bad geometry, unreadable file)."""


class CatalogueError(SegmenterError):
    """A structure name or catalogue entry is unknown or invalid."""


class ModelError(SegmenterError):
    """A model cannot be found, loaded or run."""
