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
from contextlib import closing

from typing import TYPE_CHECKING

from . import __version__, extract
from . import format as fmt
from .errors import IndexCorruptError, SourceUnreadableError, UsageError, counted, show_path, show_text
from .process import (OneLineParser, Progress, encryption_arguments, log_to_stderr, recipients_of, run_main,
                      size_argument)

if TYPE_CHECKING:
    from .plan import PlanOptions
    from .tape import EncryptedTape, Recording, Tape

# The commands that read recordings import what they need when they run: `extract`,
# which reads an archive, then starts without the recording, index and read-path code.

_CHUNK = 1 << 20


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_to_stderr("tartape")
    code = run_main("tartape", lambda: args.run(args))
    sys.stderr.flush()
    return code


class _Version(argparse.Action):
    """``--version``: the C extension is loaded only to say whether it runs (not at start-up)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from . import native

        print(f"tartape {__version__}; per-member loops: {native.ACTIVE}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tartape", description="A folder as a TAR archive that is never written.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and which per-member loops run")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def command(name: str, run, help: str, several: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if several:
            p.add_argument("src", metavar="SRC", nargs="+", help="the source folder(s), one index each")
        else:
            p.add_argument("src", metavar="SRC", help="the source folder")
        p.add_argument("--index", metavar="PATH", help="index file, with one SRC (default: SRC/.tartape/index.db)")
        p.set_defaults(run=run)
        return p

    def plan_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--shard-size", metavar="SIZE", type=size_argument("--shard-size"),
                       help="cut into WebDataset shards of at most SIZE (10G, 512MiB)")
        p.add_argument("--shard-members", metavar="N", type=_positive("--shard-members"),
                       help="cut into shards of at most N members")
        p.add_argument("--index-member", action="store_true",
                       help="end each archive with its index member, STEM.tarindex.csv (for tartape extract)")
        p.add_argument("--ratarmount-index", action="store_true",
                       help="make ratarmount's index of each archive at record time: NAME.index.sqlite beside it")

    p = command("record", _record, "walk SRC once and write its index")
    p.add_argument("--prefix", metavar="NAME", help="what member names start with (default: the folder's name; '' for none)")
    p.add_argument("--keep-owner", action="store_true", help="keep real uid/gid and owner names")
    p.add_argument("--exclude", metavar="GLOB", action="append", default=[], help="leave out matching paths (repeatable)")
    plan_options(p)
    encryption_arguments(p, "serve")

    p = command("stream", _stream, "write the archive(s) (to stdout, -o FILE or -o DIR/); records first if needed")
    p.add_argument("--start-offset", metavar="N", type=int, default=0, help="start at byte N (resume)")
    p.add_argument("-o", "--output", metavar="FILE|DIR/",
                   help="write to FILE, or every archive into DIR/ (each atomically) instead of stdout")
    p.add_argument("--name", help="the archive's name with -o DIR/ (default: dataset.tar)")
    p.add_argument("--archive", metavar="NAME", help="only the archive (shard, volume) named NAME")
    p.add_argument("--split", metavar="SIZE", type=size_argument("--split"),
                   help="volumes of SIZE bytes: NAME.001, NAME.002...")
    plan_options(p)
    encryption_arguments(p, "write")

    command("ls", _ls, "list members: archive, offset, size, name")
    p = command("locate", _locate, "the archive and byte ranges of a member's header and body", several=False)
    p.add_argument("member", metavar="MEMBER", help="member name as in the archive")
    command("verify", _verify, "list members whose source changed since recording (exit 1 if any)")
    command("info", _info, "size, members, fingerprint and index of each recording and its archives")

    help = "members out of an archive (a file or an http(s) URL), found through its index"
    p = sub.add_parser("extract", help=help, description=help)
    extract.add_arguments(p)
    p.set_defaults(run=extract.run)
    return parser


def _positive(option: str):
    def convert(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: not a whole number of at least 1")
        return int(text)

    return convert


def _sources(args) -> list[str]:
    from .record import check_sources

    srcs = args.src if isinstance(args.src, list) else [args.src]
    if args.index and len(srcs) > 1:
        raise UsageError("--index: one index per folder; give --index with one SRC only")
    check_sources(srcs)
    return srcs


def _plan(args) -> PlanOptions | None:
    """The plan options given, or None when none was (a recording is then used as planned)."""
    from .plan import PlanOptions

    if args.shard_size is None and args.shard_members is None and not args.index_member \
            and not args.ratarmount_index:
        return None
    return PlanOptions(args.shard_size, args.shard_members, args.index_member, args.ratarmount_index)


def _open(args) -> list[Recording]:
    from .tape import Recording

    recordings: list[Recording] = []
    try:
        for src in _sources(args):
            if args.index:
                recordings.append(Recording.open(args.index).check_source(src))
            else:
                recordings.append(Recording.discover(src))
    except BaseException:
        for r in recordings:
            r.close()
        raise
    return recordings


class _Opened:
    """The recordings of a command, closed when it ends."""

    def __init__(self, recordings: list[Recording]) -> None:
        self.recordings = recordings

    def __enter__(self) -> list[Recording]:
        return self.recordings

    def __exit__(self, *exc) -> None:
        for r in self.recordings:
            r.close()


def _record(args) -> int:
    from .plan import PlanOptions
    from .record import TapeRecorder

    srcs = _sources(args)
    recipients = recipients_of(args)
    for src in srcs:
        progress = Progress("tartape: scanned")
        recorder = TapeRecorder(
            src,
            exclude=args.exclude,
            anonymize=not args.keep_owner,
            index_path=args.index,
            prefix=args.prefix,
            progress=progress,
            plan=_plan(args) or PlanOptions(),
            recipients=recipients,
        )
        fingerprint = recorder.commit()
        progress.done()
        count = sum(t.member_count for t in recorder.tapes)
        size = sum(t.total_size for t in recorder.tapes)
        shards = f" in {len(recorder.tapes)} shards" if recorder.plan.sharded else ""
        encrypted = f", encrypted (age, {counted(len(recipients), 'recipient')})" if recipients else ""
        print(f"recorded {counted(count, 'member')}, {counted(size, 'byte')}{shards}, fingerprint {fingerprint}"
              f"{encrypted}")
        print(f"index: {recorder.index_path}")
    return 0


def _stream(args) -> int:
    if not args.output and sys.stdout.isatty():
        raise UsageError("stream: refusing to write the archive to a terminal (use -o FILE, or redirect stdout)")
    from .reader import tune_malloc
    from .tape import GeneratedSidecar, archives, record_or_reuse

    tune_malloc()
    srcs = _sources(args)
    plan = _plan(args)
    recipients = recipients_of(args)
    if plan and plan.sharded and args.name:
        raise UsageError("--name: shards are named after their folder (NAME-000000.tar); drop --name")
    to_dir = bool(args.output) and (args.output.endswith("/") or os.path.isdir(args.output))
    if not to_dir and args.archive is None and (len(srcs) > 1 or (plan and plan.sharded) or args.split):
        raise UsageError("several archives: write them with -o DIR/, or pick one with --archive NAME")
    recordings = []
    try:
        for src in srcs:
            progress = Progress("tartape: scanned")
            recordings.append(record_or_reuse(src, args.index, progress=progress, plan=plan, recipients=recipients))
            progress.done()
        with _Opened(recordings):
            files = archives(recordings, args.name, args.split)
            if args.archive is not None:
                files = [f for f in files if f.name == args.archive]
                if not files:
                    raise UsageError(f"--archive {args.archive}: no such archive (see tartape ls)")
            elif not to_dir:  # one archive to one output: a ratarmount index beside it is left out
                files = [f for f in files if not isinstance(f, GeneratedSidecar)]
            if to_dir:
                if args.start_offset:
                    raise UsageError("--start-offset: with -o DIR/ every archive is written whole")
                _stream_to_dir(files, args.output)
                return 0
            if len(files) != 1:
                raise UsageError(f"{len(files)} archives: write them with -o DIR/, or pick one with --archive NAME")
            return _stream_one(files[0], args.start_offset, args.output)
    finally:
        for r in recordings:
            r.close()


def _stream_one(item, start: int, output: str | None) -> int:
    if not 0 <= start <= item.total_size:
        raise UsageError(f"--start-offset {start}: outside the tape (0 to {item.total_size} bytes)")
    if output:
        _stream_to_file(item, start, output)
        return 0
    out = sys.stdout.buffer
    _widen_pipe(out.fileno())
    with closing(item.reader()) as reader:  # a reader gone early (| head): run_main ends us quietly
        _copy(reader, start, item.total_size, out.write, item.name)
    out.flush()
    return 0


def _stream_to_dir(files: list, folder: str) -> None:
    """Every archive (and sidecar) into ``folder``, each as NAME.part renamed when complete."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{folder}: cannot create the output folder ({err.strerror})") from None
    for item in files:
        _stream_to_file(item, 0, os.path.join(folder, item.name))


def _widen_pipe(fd: int) -> None:
    """Give a pipe on stdout room for a whole 1 MiB chunk: with the default 64 KiB
    every chunk costs 16 round trips with the reader (1.6 -> ~2 GB/s into cat)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _CHUNK)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: the default works too


def _stream_to_file(item, start: int, path: str) -> None:
    """Write to ``path.part`` and rename on success, so no half archive has the final name."""
    partial = path + ".part"
    try:
        with closing(item.reader()) as reader, open(partial, "wb") as out:
            _copy(reader, start, item.total_size, out.write, item.name)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise


def _copy(reader, start: int, total: int, write: Callable[[bytes], object], name: str) -> None:
    """Write the archive ``name`` from ``start``; every chunk is checked to be whole before
    it is written, so a stream never ends short with exit 0."""
    for offset in range(start, total, _CHUNK):
        data = reader.read(offset, _CHUNK)
        if len(data) != min(_CHUNK, total - offset):
            raise IndexCorruptError(f"{name}: {len(data)} bytes read at offset {offset}, "
                                    f"{min(_CHUNK, total - offset)} expected (damaged index)")
        write(data)


def _served(recordings: list[Recording]) -> dict[tuple[str, int], Tape | EncryptedTape]:
    """(index path, tape number) -> the archive as stream and the mount give it (its name)."""
    from .tape import EncryptedTape, Tape, archives

    return {(f.index_path, f.number): f for f in archives(recordings) if isinstance(f, (Tape, EncryptedTape))}


def _names(recordings: list[Recording]) -> dict[tuple[str, int], str]:
    """(index path, tape number) -> the name of the tar that member offsets are counted in:
    the archive's, or for an age file the tar it holds (``dataset.tar`` of ``dataset.tar.age``)."""
    from .tape import EncryptedTape

    return {key: f.tape.name if isinstance(f, EncryptedTape) else f.name for key, f in _served(recordings).items()}


def _ls(args) -> int:
    with _Opened(_open(args)) as recordings:
        names = _names(recordings)
        write = sys.stdout.write
        for r in recordings:
            for tape in r.tapes():
                name = names[(r.index_path, tape.number)]
                for m in tape.members():
                    write(f"{name}\t{m.offset}\t{m.size}\t{m.display_name}\n")
    return 0


def _locate(args) -> int:
    with _Opened(_open(args)) as recordings:
        names = _names(recordings)
        for tape, m in recordings[0].locate(args.member):
            (h0, h1), (b0, b1) = m.header_range, m.body_range
            print(f"archive\t{names[(tape.index_path, tape.number)]}")
            if tape.encryption is not None:  # served as NAME.age: the ranges are of the tar it holds
                print(f"encrypted\t{names[(tape.index_path, tape.number)]}.age")
            print(f"member\t{m.display_name}")
            print(f"kind\t{m.kind}")
            print(f"header\t{h0}-{h1 - 1}\t({h1 - h0} bytes)")
            if b1 > b0:
                print(f"body\t{b0}-{b1 - 1}\t({b1 - b0} bytes)")
                print(f"range\tRange: bytes={b0}-{b1 - 1}")
            else:
                print("body\t-\t(0 bytes)")
    return 0


def _verify(args) -> int:
    """One line per member that differs from its source, tagged with what a read does:
    ``changed`` (a file: reads of it fail), ``differs`` (a folder, symlink or hard link:
    served as recorded, from the index), ``unreadable`` (a file this user may not read)."""
    found = {"changed": 0, "differs": 0, "unreadable": 0}
    with _Opened(_open(args)) as recordings:
        total = 0
        for r in recordings:
            seen: set[bytes] = set()  # a folder that shards repeat is checked once
            with r.tapes()[0].reader() as reader:
                for m in r.members():
                    if m.source in seen:
                        continue
                    if m.kind == "dir":
                        seen.add(m.source)
                    total += 1
                    problem = reader.problem(m)
                    if problem is None:
                        continue
                    if isinstance(problem, SourceUnreadableError):
                        tag = "unreadable"
                    else:
                        tag = "changed" if m.kind == fmt.FILE else "differs"
                    found[tag] += 1
                    print(f"{tag}\t{m.display_name}\t{problem.reason}")
        if not any(found.values()):
            print(f"ok: {counted(total, 'member')}, all as recorded")
            return 0
        said = []
        if found["changed"]:
            again = " ".join(args.src)
            said.append(f"{counted(found['changed'], 'file')} changed since recording, reads of them fail: "
                        f"record again (tartape record {again})")
        if found["differs"] == 1:
            said.append("1 folder, symlink or link differs from the source but is served as recorded")
        elif found["differs"]:
            said.append(f"{found['differs']} folders, symlinks or links differ from the source but are "
                        "served as recorded")
        if found["unreadable"]:
            said.append(f"{counted(found['unreadable'], 'file')} cannot be read by this user")
        print(f"tartape: {show_text('; '.join(said))}", file=sys.stderr)
    return 1


def _info(args) -> int:
    from .tape import EncryptedTape

    with _Opened(_open(args)) as recordings:
        served = _served(recordings)
        for r in recordings:
            tapes = r.tapes()
            items = [served[(r.index_path, t.number)] for t in tapes]
            print(f"size\t{sum(f.total_size for f in items)}")
            print(f"members\t{r.member_count}")
            print(f"fingerprint\t{r.fingerprint}")
            print(f"mtime\t{_utc(max(t.mtime for t in tapes))}")
            print(f"source\t{r.source_root}")
            print(f"prefix\t{show_path(r.prefix)}")
            print(f"plan\t{r.plan.describe()}")
            print(f"index\t{r.index_path}")
            for recipient in r.recipients or ():
                print(f"recipient\t{recipient}")
            for t, f in zip(tapes, items):
                print(f"archive\t{f.name}\t{f.total_size}\t{t.member_count}\t{f.fingerprint}")
                if isinstance(f, EncryptedTape):
                    print(f"encrypted\t{f.name}\theader {f.header_size} bytes\tplaintext "
                          f"{f.tape.name} {f.plaintext_size} bytes")
    return 0


def _utc(seconds: int) -> str:
    """``2026-11-29 20:46:29 UTC (1795898789)``: the date, and the raw epoch seconds."""
    import datetime

    try:
        when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):  # past year 9999
        return str(seconds)
    return f"{when:%Y-%m-%d %H:%M:%S} UTC ({seconds})"


if __name__ == "__main__":
    sys.exit(main())
