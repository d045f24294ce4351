"""tartape 3.x's exception names, placed in tartapefs' error tree.

Where tartape's error means what one of tartapefs' means, the name is that
class (``TarIntegrityError`` is :class:`~tartapefs.SourceChangedError`); the
others derive from :class:`~tartapefs.errors.UsageError` and from the built-in
exception tartape's derived from, so both kinds of ``except`` still catch them.
"""

from __future__ import annotations

from ..errors import (
    IndexCorruptError,
    IndexMissingError,
    MemberNotFoundError,
    SourceChangedError,
    TartapeError,
    UsageError,
)
from ._common import CatalogExistsError as CatalogExistsError  # noqa: F401 (defined with the recording)
from ._common import InvalidArgumentError as InvalidArgumentError  # noqa: F401 (one class for both layers)

TarTapeError = TartapeError
TarIntegrityError = SourceChangedError
TapeNotFoundError = IndexMissingError
TapeCorruptedError = IndexCorruptError


class InvalidOffsetError(UsageError, ValueError):
    """An offset or byte range outside the tape."""


class VolumeStateError(UsageError, IOError):
    """Reading, seeking or telling on a closed (or not yet opened) volume or stream."""


class LayoutNotFoundError(UsageError, KeyError):
    """No layout has that tag, and it is not a size either."""


class AmbiguousLayoutError(UsageError, ValueError):
    """Several layouts are registered and none is the default."""


class VolumeNotFoundError(UsageError, KeyError):
    """No volume of that number in the layout."""


class ArcPathNotFoundError(MemberNotFoundError, KeyError):
    """No member of that name (tartape raised a plain ``KeyError``)."""


class SourceNotFoundError(UsageError, FileNotFoundError):
    """The source folder is needed and is not there."""


class ReadOnlyCatalogError(UsageError, PermissionError):
    """A change asked of a catalog opened with ``read_only=True``."""


class PathConstraintError(UsageError, ValueError):
    """Kept for imports: tartapefs has no path length limit and never raises it."""


class PathConstraintReportError(UsageError, ValueError):
    """Kept for imports: tartapefs has no path length limit and never raises it."""


class TapeVerificationError(TartapeError):
    """Verification itself could not run (``verify(raise_exception=True)``)."""


class VolumeChecksumMismatchError(TartapeError):
    """Kept for imports: volume checksums are not stored, so never compared."""
