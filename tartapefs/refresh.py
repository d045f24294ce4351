"""Keeping a mount current: new generations recorded in the background, switched at once.

Theory of operation
-------------------
A *generation* is what the mount serves at one time: the recordings of its
folders and the items (archives, volumes, sidecar files) planned from them.
A refresh records every folder again, with the options its recording was made
with, in a child process (:mod:`tartapefs.worker`) while the daemon answers
reads; each index is written to a temporary file and renamed over the old one,
whose open connection keeps reading the file it opened. Only when every folder
is recorded and its index opened are the new items planned (in a thread) and
switched in, in one step (:meth:`TapeFS.switch`), and the kernel told which
names to look up again (:func:`invalidate`, in a thread: it blocks until
requests in flight on the folder are answered). It only expires those lookups
where it can (:mod:`tartapefs.notify`): cheap, and enough for every later open
to find the new archive; right after, the old entries are dropped
(:func:`drop_entries`) so that the kernel forgets the old inodes. Any failure
before the switch leaves the generation that serves as it was.

A name whose bytes did not change keeps its inode (and the kernel's pages);
new opens read it through the new recording. An encrypted recording is the
exception: a new recording has new keys, so its archives are new bytes even
when nothing in the folder changed; when its plain archives are the same, the
recording that serves is kept (and the new one closed) rather than turning
every archive into a new file for every client. A replaced item serves the
handles opened on it until they are released and the kernel forgets its
inode; then the file system drops it (``on_drop``), and once every item of an
older generation is dropped, its recordings no newer generation shares are
closed.

One refresh runs at a time: asking for another while one runs is refused in
one line. Triggers: ``tartape-mount --refresh`` (the control channel), SIGHUP,
and ``--refresh-every``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from . import worker
from .errors import TartapeError, counted
from .fusefs import TapeFS, drop_entries, invalidate
from .index import remove_stale_temporaries
from .process import give_back_memory
from .served import Planned
from .tape import Recording, archives

log = logging.getLogger("tartapefs.mount")

# A line of the recorder longer than this is not one of ours.
_LINE_MAX = 1 << 16


@dataclass(eq=False)
class Generation:
    """The recordings a mount serves at one time and the items planned from them.
    ``live``: items the file system still holds (served, or read by a handle)."""

    number: int
    recordings: list[Recording]
    items: list[Any]
    live: int = 0

    @property
    def recorded_at(self) -> float:
        """When its oldest recording was written (s since the epoch)."""
        return min(r.recorded_at for r in self.recordings)


@dataclass(eq=False)
class Running:
    """A refresh under way, and once ``finished`` is set, its outcome."""

    why: str
    started: float = field(default_factory=time.time)
    folder: str = ""
    entries: int = 0
    finished: trio.Event = field(default_factory=trio.Event)
    ok: bool = False
    switched: bool = False
    summary: str = ""  # what the switch changed, by name
    message: str = ""  # the outcome in one line
    ended: float = 0.0
    planned_ms: float = 0.0  # planning the new items and entries, before the switch


class Refresher:
    """The generations of one mount. ``first(recordings, items)`` registers what the
    mount starts with; :meth:`attach` gives it the file system; :meth:`run` is the
    task that owns refreshes; :meth:`start` asks for one."""

    def __init__(self, mountpoint: str, name: str | None, split: int | None) -> None:
        self.mountpoint = mountpoint
        self._name = name
        self._split = split
        self._fs: TapeFS | None = None
        # id(item) -> the generations serving it, oldest first (one, unless a recording
        # was kept from one generation to the next).
        self._owner: dict[int, list[Generation]] = {}
        self._open: list[Generation] = []  # every generation not closed yet
        self.current: Generation | None = None
        self.running: Running | None = None
        self.last: Running | None = None
        self.refreshes = 0
        self._nursery: trio.Nursery | None = None

    def first(self, recordings: list[Recording], items: list[Any]) -> Generation:
        self.current = self._register(Generation(1, recordings, items))
        return self.current

    def attach(self, fs: TapeFS) -> None:
        self._fs = fs

    def _register(self, gen: Generation) -> Generation:
        gen.live = len(gen.items)
        for item in gen.items:
            self._owner.setdefault(id(item), []).append(gen)
        self._open.append(gen)
        return gen

    def dropped(self, item: Any) -> None:
        """The file system serves ``item`` no more (TapeFS's ``on_drop``)."""
        owners = self._owner.get(id(item))
        if not owners:
            return
        gen = owners.pop(0)
        if not owners:
            del self._owner[id(item)]
        gen.live -= 1
        self._close_if_done(gen)

    def _close_if_done(self, gen: Generation) -> None:
        if gen.live <= 0 and gen is not self.current and gen in self._open:
            self._open.remove(gen)
            self._close_recordings(gen.recordings)
            give_back_memory()  # what the generation held, once per generation
            log.debug("generation %d closed: nothing reads it any more", gen.number)

    def _close_recordings(self, recordings: list[Recording]) -> None:
        """Close those of ``recordings`` that no open generation serves."""
        for r in recordings:
            if not any(r in g.recordings for g in self._open):
                r.close()

    def close(self) -> None:
        """Close every generation still open (the daemon is leaving)."""
        recordings = {id(r): r for g in self._open for r in g.recordings}
        self._open.clear()
        for r in recordings.values():
            r.close()

    # -- running refreshes -------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the refreshes until cancelled (a cancelled refresh kills its recorder)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, why: str) -> Running | None:
        """Start a refresh (``why`` names the trigger in logs); None when one is already running."""
        if self.running is not None or self._nursery is None:
            return None
        self.running = Running(why)
        self._nursery.start_soon(self._refresh, self.running)
        return self.running

    def busy_message(self) -> str:
        """Why :meth:`start` gave None, in one line."""
        r = self.running
        if r is None:
            return "the mount is not serving yet; nothing started"
        return f"a refresh is already running ({counted(r.entries, 'entry', 'entries')} recorded so far); " \
               "nothing started"

    async def every(self, seconds: float) -> None:
        """Refresh every ``seconds`` (a new generation only when something changed)."""
        while True:
            await trio.sleep(seconds)
            if self.start("--refresh-every") is None:
                log.info("--refresh-every: %s (this turn is skipped)", self.busy_message())

    async def on_sighup(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """SIGHUP asks for a refresh, as nginx reloads (it no longer stops the daemon)."""
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async for _ in signals:
                if self.start("SIGHUP") is None:
                    log.warning("SIGHUP: %s", self.busy_message())

    async def _refresh(self, running: Running) -> None:
        t0 = time.monotonic()
        try:
            recordings = await self._record_all(running)
            try:
                switch_ms = await self._switch(recordings, running)
            except BaseException:
                self._close_recordings(recordings)
                raise
        except Exception as err:  # TartapeError, or an OSError starting the recorder
            if not isinstance(err, TartapeError):
                log.debug("refresh failed", exc_info=True)
            reason = str(err) if isinstance(err, TartapeError) else f"{type(err).__name__}: {err}"
            running.message = f"refresh failed: {reason}; generation {self.current.number} keeps serving"
            log.error("refresh (%s) failed: %s; generation %d keeps serving", running.why, reason,
                      self.current.number)
        else:
            running.ok = True
            recorded = f"recorded {counted(running.entries, 'entry', 'entries')} in {time.monotonic() - t0:.1f} s"
            if running.switched:
                running.message = f"generation {self.current.number} serving ({running.summary})"
                log.info("refresh (%s): %s; %s, planned in %.1f ms, switched in %.1f ms", running.why,
                         running.message, recorded, running.planned_ms, switch_ms)
            else:
                running.message = f"unchanged; generation {self.current.number} keeps serving"
                log.info("refresh (%s): %s (%s)", running.why, running.message, recorded)
        finally:
            # The new index's check and plan, in worker threads' arenas, and whatever the old
            # generation held: free now, given back rather than kept for as long as we serve.
            give_back_memory()
            running.ended = time.time()
            self.refreshes += 1
            self.last, self.running = running, None
            running.finished.set()

    async def _record_all(self, running: Running) -> list[Recording]:
        """Every folder recorded again and its new index opened (or, encrypted and with the
        same plain archives, the serving recording kept); TartapeError, nothing kept, else."""
        done: list[Recording] = []
        try:
            for old in self.current.recordings:
                running.folder = old.source_root
                fingerprint = await self._record(old, running)
                # The damage check reads the whole index: off the loop.
                new = await trio.to_thread.run_sync(Recording.open, old.index_path)
                done.append(new)
                if new.fingerprint != fingerprint:
                    raise TartapeError(f"{old.index_path}: replaced by another recording while this one "
                                       "was written; try again")
                if old.encrypted and new.encrypted and new.fingerprint == old.fingerprint:
                    done[-1] = old  # new keys alone would make every archive a new file
                    new.close()
            return done
        except BaseException:
            self._close_recordings(done)
            raise

    async def _record(self, old: Recording, running: Running) -> str:
        """Record ``old``'s folder again in a child process; its fingerprint, or TartapeError."""
        said: dict[str, str] = {}
        try:
            async with trio.open_nursery() as nursery:
                proc = await nursery.start(partial(
                    trio.run_process, worker.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    check=False, deliver_cancel=_kill))
                await proc.stdin.send_all(worker.request(old.options, old.previous()))
                await self._listen(proc, old.source_root, running, said)
            await proc.stdin.aclose()
        finally:
            if "done" not in said:
                # A recorder stopped halfway leaves its temporary index: remove it now.
                remove_stale_temporaries(old.index_path)
        if "error" in said:
            raise TartapeError(said["error"])
        if "done" not in said or proc.returncode != 0:
            raise TartapeError(f"{old.source_root}: the recorder stopped before the end "
                               f"({_status(proc.returncode)}); nothing was recorded")
        return said["done"]

    async def _listen(self, proc: Any, folder: str, running: Running, said: dict[str, str]) -> None:
        """Read the recorder's lines (see :mod:`tartapefs.worker`) until it ends."""
        buffer = b""
        async for chunk in proc.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                word, _, rest = line.decode(errors="replace").partition(" ")
                if word == "entries" and rest.isdigit():
                    running.entries = int(rest)
                elif word == "log":
                    level, _, message = rest.partition(" ")
                    number = logging.getLevelName(level)
                    log.log(number if isinstance(number, int) else logging.INFO, "refresh of %s: %s",
                            folder, message)
                elif word in ("done", "error"):
                    said[word] = rest
            if len(buffer) > _LINE_MAX:
                said["error"] = f"{folder}: the recorder wrote a line longer than any of its own; stopped"
                proc.kill()
                return

    async def _switch(self, recordings: list[Recording], running: Running) -> float:
        """Serve ``recordings``' items from now on; the switch's duration in ms.

        The items and their entries (names checked, inodes derived) are planned first, in a
        thread, while the loop serves; the switch proper (measured) swaps the folder's
        tables on the loop and tells the kernel which names to look up again, so that it
        ends when a new open finds the new archive."""
        t0 = time.perf_counter()
        # TartapeError: two archives of one name, a bad name, two names on one inode.
        items, planned = await trio.to_thread.run_sync(self._plan, recordings)
        t1 = time.perf_counter()
        old = self.current
        gen = self._register(Generation(old.number + 1, recordings, items))
        try:
            switch = self._fs.switch(planned)
        except ValueError as err:
            self._unregister(gen)
            raise TartapeError(str(err)) from None
        if not switch.switched:
            gen.number = old.number
        self.current = gen
        self._close_if_done(old)
        try:
            await trio.to_thread.run_sync(partial(invalidate, switch, expire_only=True))
        except OSError as err:
            log.error("the kernel could not be told of the new generation (%s): it may show the old "
                      "one's names until its cache expires", err)
        else:
            if switch.stale:
                self._nursery.start_soon(self._drop_old_entries, switch.stale)
        running.switched = switch.switched
        running.summary = switch.describe()
        running.planned_ms = (t1 - t0) * 1e3
        return (time.perf_counter() - t1) * 1e3

    async def _drop_old_entries(self, names: list[bytes]) -> None:
        """After a switch: make the kernel drop the entries it may still hold for the old
        inodes of ``names`` (only expired by the switch), so that an old generation nobody
        looks up or reads any more is let go. A name looked up since the switch leads to
        its new inode already and is left alone."""
        names = self._fs.not_looked_up(names)
        try:
            await trio.to_thread.run_sync(drop_entries, names)
        except OSError as err:
            log.warning("the kernel could not be told to drop the old generation's names (%s): it "
                        "keeps them until it needs the memory", err)

    def _plan(self, recordings: list[Recording]) -> tuple[list[Any], Planned]:
        items = archives(recordings, self._name, self._split)
        try:
            return items, TapeFS.plan({item.name: item for item in items})
        except ValueError as err:
            raise TartapeError(str(err)) from None

    def _unregister(self, gen: Generation) -> None:
        for item in gen.items:
            owners = self._owner.get(id(item), [])
            if gen in owners:
                owners.remove(gen)
            if not owners:
                self._owner.pop(id(item), None)
        self._open.remove(gen)

    # -- status --------------------------------------------------------------

    def status(self) -> dict:
        """What ``tartape-mount --status`` shows (plain data)."""
        gen = self.current
        out: dict[str, Any] = {
            "mountpoint": self.mountpoint, "generation": gen.number, "recorded_at": gen.recorded_at,
            "archives": len(gen.items), "bytes": sum(i.total_size for i in gen.items), "refreshes": self.refreshes,
            "older_generations_open": len(self._open) - 1, "recording": None, "last": None,
        }
        if self.running is not None:
            r = self.running
            out["recording"] = {"why": r.why, "started": r.started, "folder": r.folder, "entries": r.entries}
        if self.last is not None:
            r = self.last
            out["last"] = {"why": r.why, "started": r.started, "ended": r.ended, "ok": r.ok,
                           "switched": r.switched, "message": r.message}
        return out


async def _kill(proc: Any) -> None:
    # A recording cancelled (the daemon stops) is discarded: no need to let it finish a
    # step, and SIGKILL also ends one that was stopped.
    proc.kill()


def _status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
