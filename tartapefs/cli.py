"""``tartape``: record, stream, list, locate and verify tapes from the shell.

Every error a user can cause ends as one line on stderr and a non-zero exit:
:func:`~tartapefs.process.run_main` is the one place that translates them.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import stat
import sys
from collections.abc import Callable

from . import __version__, extract, native
from .errors import UsageError, show_path
from .process import OneLineParser, Progress, log_to_stderr, run_main
from .reader import TapeReader, tune_malloc
from .tape import Tape, TapeRecorder, open_or_record

_CHUNK = 1 << 20


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_to_stderr("tartape")
    code = run_main("tartape", lambda: args.run(args))
    sys.stderr.flush()
    return code


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tartape", description="A folder as a TAR archive that is never written.")
    parser.add_argument("--version", action="version",
                        version=f"tartape {__version__}; per-member loops: {native.ACTIVE}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("src", metavar="SRC", help="the source folder")
        p.add_argument("--index", metavar="PATH", help="index file (default: SRC/.tartape/index.db)")
        p.set_defaults(run=run)
        return p

    p = command("record", _record, "walk SRC once and write its index")
    p.add_argument("--prefix", metavar="NAME", help="what member names start with (default: the folder's name; '' for none)")
    p.add_argument("--keep-owner", action="store_true", help="keep real uid/gid and owner names")
    p.add_argument("--exclude", metavar="GLOB", action="append", default=[], help="leave out matching paths (repeatable)")

    p = command("stream", _stream, "write the archive (to stdout, or -o FILE); records first if there is no index")
    p.add_argument("--start-offset", metavar="N", type=int, default=0, help="start at byte N (resume)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (atomically) instead of stdout")

    command("ls", _ls, "list members: offset, size, name")
    p = command("locate", _locate, "byte ranges of a member's header and body")
    p.add_argument("member", metavar="MEMBER", help="member name as in the archive")
    command("verify", _verify, "list members whose source changed since recording (exit 1 if any)")
    command("info", _info, "size, members, fingerprint and index of the tape")

    help = "members out of an archive (a file or an http(s) URL), found through its index"
    p = sub.add_parser("extract", help=help, description=help)
    extract.add_arguments(p)
    p.set_defaults(run=lambda args: extract.run(args, _quote))
    return parser


def _open(args) -> Tape:
    if args.index:
        return Tape.open(args.index).check_source(args.src)
    return Tape.discover(args.src)


def _record(args) -> int:
    recorder = TapeRecorder(
        args.src,
        exclude=args.exclude,
        anonymize=not args.keep_owner,
        index_path=args.index,
        prefix=args.prefix,
        progress=Progress("tartape: scanned"),
    )
    fingerprint = recorder.commit()
    recorder.progress.done()
    with Tape.open(recorder.index_path) as tape:
        print(f"recorded {tape.member_count} members, {tape.total_size} bytes, fingerprint {fingerprint}")
        print(f"index: {tape.index_path}")
    return 0


def _stream(args) -> int:
    tune_malloc()
    progress = Progress("tartape: scanned")
    tape = open_or_record(args.src, args.index, progress=progress)
    progress.done()
    if not 0 <= args.start_offset <= tape.total_size:
        raise UsageError(f"--start-offset {args.start_offset}: outside the tape (0 to {tape.total_size} bytes)")
    if args.output:
        _stream_to_file(tape, args.start_offset, args.output)
        return 0
    out = sys.stdout.buffer
    _widen_pipe(out.fileno())
    try:
        with TapeReader(tape) as reader:
            _copy(reader, args.start_offset, out.write)
        out.flush()
    except BrokenPipeError:
        # The reader went away (| head): not our error; silence the final flush too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


def _widen_pipe(fd: int) -> None:
    """Give a pipe on stdout room for a whole 1 MiB chunk: with the default 64 KiB
    every chunk costs 16 round trips with the reader (1.6 -> ~2 GB/s into cat)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _CHUNK)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: the default works too


def _stream_to_file(tape: Tape, start: int, path: str) -> None:
    """Write to ``path.part`` and rename on success, so no half archive has the final name."""
    partial = path + ".part"
    try:
        with TapeReader(tape) as reader, open(partial, "wb") as out:
            _copy(reader, start, out.write)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise


def _copy(reader: TapeReader, start: int, write: Callable[[bytes], object]) -> None:
    for offset in range(start, reader.total_size, _CHUNK):
        write(reader.read(offset, _CHUNK))


def _ls(args) -> int:
    with _open(args) as tape:
        write = sys.stdout.write
        for m in tape.members():
            write(f"{m.offset}\t{m.size}\t{_quote(m.display_name)}\n")
    return 0


def _locate(args) -> int:
    with _open(args) as tape:
        m = tape.locate(args.member)
        (h0, h1), (b0, b1) = m.header_range, m.body_range
        print(f"member\t{_quote(m.display_name)}")
        print(f"kind\t{m.kind}")
        print(f"header\t{h0}-{h1 - 1}\t({h1 - h0} bytes)")
        if b1 > b0:
            print(f"body\t{b0}-{b1 - 1}\t({b1 - b0} bytes)")
            print(f"range\tRange: bytes={b0}-{b1 - 1}")
        else:
            print("body\t-\t(0 bytes)")
    return 0


def _verify(args) -> int:
    changed = 0
    with _open(args) as tape, TapeReader(tape) as reader:
        for m in tape.members():
            reason = reader.check(m)
            if reason:
                changed += 1
                print(f"changed\t{_quote(m.display_name)}\t{reason}")
        if changed:
            print(f"tartape: {changed} of {tape.member_count} members changed since recording; "
                  f"record again (tartape record {args.src})", file=sys.stderr)
            return 1
        print(f"ok: all {tape.member_count} members match their sources")
    return 0


def _info(args) -> int:
    with _open(args) as tape:
        print(f"size\t{tape.total_size}")
        print(f"members\t{tape.member_count}")
        print(f"fingerprint\t{tape.fingerprint}")
        print(f"mtime\t{tape.mtime}")
        print(f"source\t{tape.source_root}")
        print(f"prefix\t{show_path(tape.prefix)}")
        print(f"index\t{tape.index_path}")
    return 0


def _quote(text: str) -> str:
    """Names may hold newlines and tabs: escape them so one member stays one line."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


if __name__ == "__main__":
    sys.exit(main())
