"""tartapefs: a folder presented as a TAR archive that is never written.

The archive's bytes are a pure function of a recorded index plus the unchanged
source files, so its size and every offset are known before a byte is read.

The public names below are imported when first used (PEP 562), so a command
that needs few modules (``tartape extract``) starts without loading the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Recipient": "age", "RecipientError": "age",
    "AgeUnavailableError": "encrypt", "EncryptedReader": "encrypt", "EncryptionState": "encrypt",
    "ShortReadError": "encrypt", "load_recipients": "encrypt",
    "ByteSource": "bytesource",
    "ArchiveError": "errors", "IndexCorruptError": "errors", "IndexMissingError": "errors",
    "IndexSourceMismatchError": "errors", "IndexUntrustedError": "errors", "IndexVersionError": "errors",
    "MemberNotFoundError": "errors",
    "SourceBusyError": "errors", "SourceChangedError": "errors", "SourceError": "errors",
    "SourceUnreadableError": "errors", "StreamSizeError": "errors", "TartapeError": "errors",
    "UsageError": "errors",
    "MemoryTape": "memtape",
    "PlanOptions": "plan",
    "write_ratarmount_index": "ratarindex",
    "TapeReader": "reader",
    "TapeRecorder": "record",
    "TapePlayer": "stream",
    "EncryptedTape": "tape", "Recording": "tape", "Tape": "tape", "Volume": "tape",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .age import Recipient, RecipientError
    from .encrypt import AgeUnavailableError, EncryptedReader, EncryptionState, ShortReadError, load_recipients
    from .bytesource import ByteSource
    from .errors import (ArchiveError, IndexCorruptError, IndexMissingError, IndexSourceMismatchError,
                         IndexUntrustedError, IndexVersionError, MemberNotFoundError, SourceBusyError,
                         SourceChangedError, SourceError, SourceUnreadableError, StreamSizeError, TartapeError,
                         UsageError)
    from .memtape import MemoryTape
    from .plan import PlanOptions
    from .ratarindex import write_ratarmount_index
    from .reader import TapeReader
    from .record import TapeRecorder
    from .stream import TapePlayer
    from .tape import EncryptedTape, Recording, Tape, Volume
