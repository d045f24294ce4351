"""tartapefs: a folder presented as a TAR archive that is never written.

The archive's bytes are a pure function of a recorded index plus the unchanged
source files, so its size and every offset are known before a byte is read.
"""

__version__ = "0.1.0"

from .age import Recipient as Recipient  # noqa: E402
from .age import RecipientError as RecipientError  # noqa: E402
from .encrypt import AgeUnavailableError as AgeUnavailableError  # noqa: E402
from .encrypt import EncryptedReader as EncryptedReader  # noqa: E402
from .encrypt import EncryptionState as EncryptionState  # noqa: E402
from .encrypt import ShortReadError as ShortReadError  # noqa: E402
from .encrypt import load_recipients as load_recipients  # noqa: E402
from .bytesource import ByteSource as ByteSource  # noqa: E402
from .errors import ArchiveError as ArchiveError  # noqa: E402
from .errors import IndexCorruptError as IndexCorruptError  # noqa: E402
from .errors import IndexMissingError as IndexMissingError  # noqa: E402
from .errors import IndexSourceMismatchError as IndexSourceMismatchError  # noqa: E402
from .errors import IndexVersionError as IndexVersionError  # noqa: E402
from .errors import MemberNotFoundError as MemberNotFoundError  # noqa: E402
from .errors import SourceBusyError as SourceBusyError  # noqa: E402
from .errors import SourceChangedError as SourceChangedError  # noqa: E402
from .errors import SourceError as SourceError  # noqa: E402
from .errors import SourceUnreadableError as SourceUnreadableError  # noqa: E402
from .errors import StreamSizeError as StreamSizeError  # noqa: E402
from .errors import TartapeError as TartapeError  # noqa: E402
from .errors import UsageError as UsageError  # noqa: E402
from .memtape import MemoryTape as MemoryTape  # noqa: E402
from .plan import PlanOptions as PlanOptions  # noqa: E402
from .ratarindex import write_ratarmount_index as write_ratarmount_index  # noqa: E402
from .reader import TapeReader as TapeReader  # noqa: E402
from .record import TapeRecorder as TapeRecorder  # noqa: E402
from .stream import TapePlayer as TapePlayer  # noqa: E402
from .tape import EncryptedTape as EncryptedTape  # noqa: E402
from .tape import Recording as Recording  # noqa: E402
from .tape import Tape as Tape  # noqa: E402
from .tape import Volume as Volume  # noqa: E402

__all__ = [
    "AgeUnavailableError", "ArchiveError", "ByteSource", "EncryptedReader", "EncryptedTape", "EncryptionState",
    "IndexCorruptError", "IndexMissingError", "IndexSourceMismatchError", "IndexVersionError", "MemberNotFoundError",
    "MemoryTape", "PlanOptions", "Recipient", "RecipientError", "Recording", "ShortReadError", "SourceBusyError",
    "SourceChangedError", "SourceError", "SourceUnreadableError", "StreamSizeError", "Tape", "TapePlayer",
    "TapeReader", "TapeRecorder", "TartapeError", "UsageError", "Volume", "__version__", "load_recipients",
    "write_ratarmount_index",
]
