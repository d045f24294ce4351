"""The optional C extension ``tartapefs._native`` (the per-member hot loops).

Everything else about the package is in pyproject.toml. The extension is built
when a C compiler and the Python headers are there; when they are not, the
build says so in one line and the package installs without it, running the
pure-Python path (the reference the compiled one is tested against).
``TARTAPEFS_NO_NATIVE=1`` at build time skips it on purpose.
"""

import hashlib
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["csrc/helper.c", "csrc/insert.c", "csrc/md5.c", "csrc/members.c", "csrc/module.c", "csrc/play.c",
           "csrc/rows.c", "csrc/serve.c", "csrc/ustar.c", "csrc/walk.c"]


def source_hash(folder: Path) -> str:
    """SHA-256 over the C sources' names and bytes: built into the module as SOURCE_HASH,
    so a test can tell an in-place build made from older sources (tests/test_native.py)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class OptionalBuildExt(build_ext):
    """Build the extension if possible; otherwise one line and no failure."""

    def run(self):
        if os.environ.get("TARTAPEFS_NO_NATIVE", "") not in ("", "0"):
            self._skip("TARTAPEFS_NO_NATIVE is set")
            return
        try:
            super().run()
        except Exception as err:  # no compiler at all: setuptools fails before compiling
            self._skip(err)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as err:  # compiler or headers missing, or the compiler failed
            if ext.name == "tartapefs._native":
                self._skip(err)
            elif not getattr(self, "_said", False):  # the pure path, said already, covers it
                print(f"tartapefs: the sealing thread not built ({self._reason(err)}); encrypted "
                      "archives are sealed in the serving thread", file=sys.stderr)

    def _skip(self, err):
        self._said = True
        print(f"tartapefs: C extension not built ({self._reason(err)}); the pure-Python path will be used",
              file=sys.stderr)

    @staticmethod
    def _reason(err):
        if isinstance(err, str):
            return err
        if isinstance(getattr(err, "cmd", None), list):  # the compiler ran and failed
            return f"{err.cmd[0]} exited with status {err.returncode}"
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


setup(
    ext_modules=[
        Extension(
            "tartapefs._native",
            sources=SOURCES,
            include_dirs=["csrc"],
            libraries=["sqlite3"],  # the read loop reads the index itself (csrc/rows.c)
            define_macros=[("TT_SOURCE_HASH", '"%s"' % source_hash(Path(__file__).parent / "csrc"))],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-fvisibility=hidden"],
        ),
        Extension(
            "tartapefs._seal",  # age chunks sealed on a thread without the GIL (csrc/seal.c)
            sources=["csrc/seal.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-fvisibility=hidden"],
        ),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
