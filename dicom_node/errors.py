"""Error hierarchy of the dicom_node package; third-party errors are wrapped with ``raise ... from``."""


class DicomNodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(DicomNodeError):
    """The configuration is invalid; the message names the key and what is wrong."""


class StorageError(DicomNodeError):
    """An instance could not be stored durably (disk full, permissions)."""


class IndexError_(DicomNodeError):
    """The database index could not be read or written."""


class SeriesError(DicomNodeError):
    """A series cannot be turned into a volume; the message is the reason stored on the job."""


class OutputError(DicomNodeError):
    """A DICOM output object (SEG, RTSTRUCT) cannot be built from the given input."""


class SendError(DicomNodeError):
    """A destination refused an object or could not be reached."""


class ReviewError(DicomNodeError):
    """A review decision cannot be made: no such job, or its outputs cannot be read back or rebuilt."""


class NotInReview(ReviewError):
    """The job is not (or no longer) waiting for a decision: decided already, superseded, never held."""


class UnknownJob(ReviewError):
    """No job of that id."""
