"""Encrypted archives from the ``tartape`` command and the library: ``record``/``stream
--encrypt-to``, ``info``, shards and volumes encrypted, one state per tape, recording again,
damaged states and bad input. The stock ``age -d`` decrypts every file these tests check; the
plaintext it gives back is compared with the tape's own reader and extracted by GNU tar."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agekit import age_decrypt, keygen
from test_cli import assert_user_error, ok, tartape
from test_shards import build_sample_tree
from tartapefs import EncryptedTape, Recording, SourceChangedError, age
from tartapefs.age import parse_recipient
from tartapefs.errors import IndexCorruptError
from tartapefs.index import seal
from tartapefs.tape import record_or_reuse
from trees import tree_differences

pytestmark = pytest.mark.index


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return [keygen(folder, f"key{i}.txt") for i in range(3)]


def plaintexts(src: Path) -> dict[str, bytes]:
    """Each archive's tar as the recording's own reader gives it, by its served (.age) name."""
    with Recording.discover(str(src)) as recording:
        out = {}
        for tape in recording.tapes():
            with tape.reader() as reader:
                out[tape.name + ".age"] = reader.read(0, tape.total_size)
        return out


def states(src: Path) -> list:
    with Recording.discover(str(src)) as recording:
        return [t.encryption for t in recording.tapes()]


def decrypted(data: bytes, key) -> bytes:
    done = age_decrypt(data, key)
    assert done.returncode == 0, done.stderr
    return done.stdout


def extract(tar: bytes, out: Path) -> None:
    out.mkdir()
    done = subprocess.run(["tar", "-xpf", "-", "-C", str(out)], input=tar, capture_output=True)
    assert done.returncode == 0, done.stderr


# -- what the command writes --------------------------------------------------------------------


def test_stream_encrypt_to_is_what_age_decrypts_to_exactly_the_plaintext_stream(small_tree, keys, tmp_path):
    sealed = ok("stream", small_tree, "--encrypt-to", keys[0].public, "--encrypt-to", keys[1].public)
    [(name, plain)] = plaintexts(small_tree).items()
    [state] = states(small_tree)
    assert name == "data.tar.age"
    assert len(sealed) == age.encrypted_size(len(plain), state.header_size)
    assert sealed.startswith(b"age-encryption.org/v1\n")
    for key in keys[:2]:  # every recipient opens it
        assert decrypted(sealed, key) == plain
    assert age_decrypt(sealed, keys[2]).returncode != 0
    extract(plain, tmp_path / "out")
    assert tree_differences(small_tree, tmp_path / "out" / "data") == []
    # The recording keeps its state: without the option, with the same recipients in another
    # order, into a file, and resumed at any byte: the same bytes.
    assert ok("stream", small_tree) == sealed
    assert ok("stream", small_tree, "--encrypt-to", keys[1].public, "--encrypt-to", keys[0].public) == sealed
    ok("stream", small_tree, "-o", tmp_path / "copy.age")
    assert (tmp_path / "copy.age").read_bytes() == sealed
    for start in (1, state.header_size + 16, len(sealed) // 2, len(sealed) - 1):
        assert ok("stream", small_tree, "--start-offset", str(start)) == sealed[start:]
    assert states(small_tree) == [state]


def test_record_encrypt_to_file_then_info_shows_recipients_and_sizes(small_tree, keys, tmp_path):
    listed = tmp_path / "team.txt"
    listed.write_text(f"# the team\n{keys[0].public}\n\n{keys[1].public}\n{keys[0].public}\n")
    out = ok("record", small_tree, "--encrypt-to-file", listed).decode()
    assert "encrypted (age, 2 recipients)" in out
    lines = [line.split("\t") for line in ok("info", small_tree).decode().splitlines()]
    assert [v for k, *v in lines if k == "recipient"] == [[keys[0].public], [keys[1].public]]
    [state] = states(small_tree)
    [plain] = plaintexts(small_tree).values()
    size = age.encrypted_size(len(plain), state.header_size)
    [archive] = [v for k, *v in lines if k == "archive"]
    with Recording.discover(str(small_tree)) as recording:
        members = recording.member_count
    assert archive[:3] == ["dataset.tar.age", str(size), str(members)]
    assert [v for k, *v in lines if k == "encrypted"] == [
        ["dataset.tar.age", f"header {state.header_size} bytes", f"plaintext dataset.tar {len(plain)} bytes"]]
    assert dict((k, v) for k, *v in lines)["size"] == [str(size)]
    # ls and locate count offsets in the tar that the age file holds
    located = dict(line.split("\t", 1) for line in ok("locate", small_tree, "data/a.txt").decode().splitlines())
    assert located["archive"] == "dataset.tar" and located["encrypted"] == "dataset.tar.age"
    first, last = map(int, located["range"].split("=")[1].split("-"))
    assert plain[first:last + 1] == (small_tree / "a.txt").read_bytes()
    # the index holds the state, privately, and no secret key of anyone
    index = small_tree / ".tartape" / "index.db"
    assert os.stat(index).st_mode & 0o777 == 0o600
    assert os.stat(index.parent).st_mode & 0o777 == 0o700
    raw = index.read_bytes()
    assert state.file_key.hex().encode() in raw
    assert b"AGE-SECRET-KEY" not in raw and all(k.secret.encode() not in raw for k in keys)


def test_each_shard_has_its_own_key_and_decrypts_alone(tmp_path, keys):
    photos = build_sample_tree(tmp_path)
    out = tmp_path / "out"
    ok("stream", photos, "--shard-size", "64KiB", "--encrypt-to", keys[0].public, "-o", f"{out}/")
    plain = plaintexts(photos)
    assert len(plain) > 3
    # no shard list: it would show in plain what the encrypted shards hold
    assert sorted(os.listdir(out)) == sorted(plain) and all(n.endswith(".tar.age") for n in plain)
    found = states(photos)
    for field in ("file_key", "payload_nonce", "header"):
        assert len({getattr(s, field) for s in found}) == len(found), field
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    for name, tar in plain.items():
        assert decrypted((out / name).read_bytes(), keys[0]) == tar
        done = subprocess.run(["tar", "-xpf", "-", "-C", str(extracted)], input=tar, capture_output=True)
        assert done.returncode == 0, done.stderr
    problems = [p for p in tree_differences(photos, extracted / "photos") if not p.startswith("hard links")]
    assert problems == []


def test_split_cuts_the_age_file_into_volumes_that_cat_and_age_read_back(small_tree, keys, tmp_path):
    (small_tree / "big.bin").write_bytes(os.urandom(300_000))
    whole = ok("stream", small_tree, "--encrypt-to", keys[0].public)
    out = tmp_path / "vol"
    ok("stream", small_tree, "--split", "100000", "-o", f"{out}/")
    names = sorted(os.listdir(out))
    assert names == [f"dataset.tar.age.{i:03d}" for i in range(1, 5)]
    assert [os.stat(out / n).st_size for n in names[:-1]] == [100_000] * 3
    joined = subprocess.run(f"cat {out}/dataset.tar.age.0* | age -d -i {keys[0].path}", shell=True,
                            capture_output=True, check=True).stdout
    assert b"".join((out / n).read_bytes() for n in names) == whole
    assert joined == next(iter(plaintexts(small_tree).values()))


# -- one state per recording and tape, never reused ---------------------------------------------


def test_every_recording_gets_new_keys_changed_tree_or_not(small_tree, keys):
    key = keys[0].public
    ok("record", small_tree, "--encrypt-to", key)
    first = states(small_tree)[0]
    ok("record", small_tree, "--encrypt-to", key)
    same_tree = states(small_tree)[0]
    (small_tree / "new.txt").write_text("new")
    ok("record", small_tree, "--encrypt-to", key)
    changed = states(small_tree)[0]
    assert len({first.file_key, same_tree.file_key, changed.file_key}) == 3
    assert len({first.payload_nonce, same_tree.payload_nonce, changed.payload_nonce}) == 3
    with record_or_reuse(str(small_tree), rescan=True) as again:  # --rescan: new states, still encrypted
        assert again.recipients == (parse_recipient(key),)
        assert again.tapes()[0].encryption.file_key not in {first.file_key, same_tree.file_key,
                                                            changed.file_key}


def test_other_recipients_record_again_and_no_option_keeps_what_was_recorded(small_tree, keys):
    k0, k1 = keys[0].public, keys[1].public
    ok("record", small_tree, "--encrypt-to", k0)
    before = states(small_tree)[0]
    sealed = ok("stream", small_tree, "--encrypt-to", k1)  # other recipients: recorded again
    after = states(small_tree)[0]
    assert after.file_key != before.file_key and after.recipients == (parse_recipient(k1),)
    assert age_decrypt(sealed, keys[0]).returncode != 0
    assert decrypted(sealed, keys[1]) == next(iter(plaintexts(small_tree).values()))
    # Other shard options and no recipients: recorded again with the recorded recipients,
    # never in plain; the recorded prefix and excludes are kept too.
    ok("record", small_tree, "--encrypt-to", k1, "--exclude", "b.txt", "--prefix", "top")
    ok("stream", small_tree, "--shard-members", "2", "-o", f"{small_tree.parent}/shards/")
    with Recording.discover(str(small_tree)) as recording:
        assert recording.plan.shard_members == 2 and recording.recipients == (parse_recipient(k1),)
        assert recording.prefix == b"top" and recording.exclude == ["b.txt"]
        assert len(recording.tapes()) > 1
    # tartape record without the option is how to go back to a plain archive
    ok("record", small_tree)
    assert ok("stream", small_tree)[:10] != b"age-encry"
    assert states(small_tree) == [None]


def test_a_changed_source_fails_through_the_encrypted_archive(small_tree, keys):
    ok("record", small_tree, "--encrypt-to", keys[0].public)
    with Recording.discover(str(small_tree)) as recording:
        archive = recording.tapes()[0].encrypted()
        assert isinstance(archive, EncryptedTape)
        (small_tree / "sub" / "c.txt").write_bytes(b"x" * 2000)  # same size, new bytes and times
        with archive.reader() as reader:
            assert reader.read(0, 20) == archive.state.header[:20]  # the header still reads
            with pytest.raises(SourceChangedError, match="c.txt"):
                reader.read(0, archive.total_size)
    proc = tartape("stream", small_tree)
    assert_user_error(proc)
    assert b"c.txt" in proc.stderr and b"changed" in proc.stderr


# -- damaged or forged states -----------------------------------------------------------------


@pytest.mark.parametrize("case,reason", [
    ("shared key", "two archives share a file key"),
    ("a state missing", "not one state per archive"),
    ("not marked encrypted", "states of a recording not encrypted"),
    ("other recipients", "an archive to other recipients"),
    ("marked encrypted, no states", "not one state per archive"),
])
def test_a_damaged_or_forged_state_is_refused_at_open_in_one_line(tmp_path, keys, case, reason):
    photos = build_sample_tree(tmp_path)
    ok("record", photos, "--shard-size", "64KiB", "--encrypt-to", keys[0].public)
    index = photos / ".tartape" / "index.db"
    db = sqlite3.connect(index)
    with db:
        if case == "shared key":
            row = db.execute("SELECT recipients, file_key, payload_nonce, header FROM encryption "
                             "WHERE tape = 0").fetchone()
            db.execute("UPDATE encryption SET recipients = ?, file_key = ?, payload_nonce = ?, header = ? "
                       "WHERE tape = 1", row)
        elif case == "a state missing":
            db.execute("DELETE FROM encryption WHERE tape = 2")
        elif case == "not marked encrypted":
            db.execute("DELETE FROM meta WHERE key = 'encrypt_to'")
        elif case == "other recipients":
            db.execute("UPDATE meta SET value = ? WHERE key = 'encrypt_to'", (keys[1].public,))
        else:
            db.execute("DELETE FROM encryption")
    db.close()
    seal(str(index))  # a consistent file: the damage check passes, the state check must not
    with pytest.raises(IndexCorruptError, match=reason):
        Recording.discover(str(photos))
    proc = tartape("info", photos)
    assert_user_error(proc)
    assert reason.encode() in proc.stderr and str(index).encode() in proc.stderr


# -- bad input: one line, nothing written -------------------------------------------------------

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHaGh0dGVzdGtleWZvcnRhcnRhcGVmcw user@host"
BAD_INPUT = {
    "malformed": (["--encrypt-to", "age1notakeyatall"], "not an age recipient"),
    "ssh key": (["--encrypt-to", SSH_KEY], "an SSH public key"),
    "scrypt": (["--encrypt-to", "scrypt"], "passphrase (scrypt)"),
    "plugin": (["--encrypt-to", "age1yubikey1qwertyqwerty"], "plugin recipient"),
    "empty file": (["--encrypt-to-file", "EMPTY"], "no recipients in the file"),
    "missing file": (["--encrypt-to-file", "MISSING"], "cannot read the recipients file"),
    "no age extra": (["--encrypt-to", "KEY"], "pip install 'tartapefs[age]'"),
}


def run_bad(argv: list[str], module: str, without_crypto: bool) -> subprocess.CompletedProcess:
    """``python -m module ARGV``; ``without_crypto``: as if the [age] extra were not installed."""
    code = ("import sys\n"
            + ("sys.modules['cryptography'] = None  # import cryptography... raises ImportError\n"
               if without_crypto else "")
            + f"from {module} import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                          env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}, timeout=60)


@pytest.mark.parametrize("command", ["record", "stream", "mount"])
@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_recipients_or_no_age_extra_are_one_line_and_write_nothing(small_tree, keys, tmp_path, command,
                                                                        case):
    options, reason = BAD_INPUT[case]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody yet\n\n")
    options = [{"EMPTY": str(empty), "MISSING": str(tmp_path / "missing.txt"), "KEY": keys[0].public}.get(o, o)
               for o in options]
    out, mnt = tmp_path / "out.tar.age", tmp_path / "mnt"
    mnt.mkdir()
    if command == "mount":
        argv, module = [str(small_tree), str(mnt), *options], "tartapefs.mount"
    else:
        argv, module = [command, str(small_tree), *options], "tartapefs.cli"
        if command == "stream":
            argv += ["-o", str(out)]
    proc = run_bad(argv, module, case == "no age extra")
    assert_user_error(proc)
    assert reason in proc.stderr.decode(), proc.stderr
    assert not (small_tree / ".tartape").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty.txt", "mnt"]
    assert os.listdir(mnt) == []


def test_an_encrypted_recording_needs_the_age_extra_to_be_opened(small_tree, keys):
    ok("record", small_tree, "--encrypt-to", keys[0].public)
    for argv in (["info", str(small_tree)], ["stream", str(small_tree)]):
        proc = run_bad(argv, "tartapefs.cli", without_crypto=True)
        assert_user_error(proc)
        assert b"pip install 'tartapefs[age]'" in proc.stderr and proc.stdout == b""
