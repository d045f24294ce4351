-- tartapefs index, format version 6 (2: ctime_ns; 3: mtimes in two columns, CRC-32;
-- 4: several tapes, the tapes table; 5: the encryption table; 6: generated files,
-- index members).
--
-- One file per recording (one walk of one source folder) and the tapes planned
-- from it. It is built in a temporary file next to its final
-- place and renamed over it, so a reader sees either the old index or the new
-- one, never half of one; an open connection keeps reading the file it opened.
--
-- The header's user_version (4 bytes at offset 60) holds a CRC-32 of every other
-- byte of the file, written last: a file damaged anywhere is refused at open.

-- Recording metadata, one row per key: format, format_version, bytes_version,
-- member_count (rows of members), tape_count, source_root, prefix, keep_owner,
-- exclude (JSON list), plan (JSON: the options the tapes were planned with:
-- shards, index member, ratarmount index), encrypt_to (only when served
-- encrypted: the age recipients, one per line), created_by.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;

-- One row per planned tape, in order. The tapes lie back to back on one global
-- line of bytes: tape k occupies [start, start + total_size), its own footer
-- included, so a member's offset within its tape is its global offset - start.
CREATE TABLE tapes (
    number       INTEGER PRIMARY KEY,  -- 0, 1, ... in order
    name         BLOB    NOT NULL,     -- file name as planned (photos.tar, photos-000003.tar)
    start        INTEGER NOT NULL,     -- global offset of the tape's first byte
    total_size   INTEGER NOT NULL,     -- bytes, footer included
    member_count INTEGER NOT NULL,
    fingerprint  TEXT    NOT NULL,     -- hex SHA-256 of everything that decides its bytes
    mtime        INTEGER NOT NULL,     -- seconds: its newest member's mtime, at least 0
    nsamples     INTEGER NOT NULL,     -- samples as wids counts them (0 for a whole tape)
    index_member INTEGER               -- global offset of its index member (the last member
                                       -- before its footer, kind 100), NULL when it has none
);

-- One row per archive member of every tape, in tape order (a folder that
-- several shards repeat has a row in each).
--
-- The primary key is the global offset of the member's first header byte.
-- Offsets grow with tape order and every member is at least 512 bytes, so they
-- are unique, and "which member holds byte X" is one descent of the table's own
-- B-tree: the row with the largest offset <= X. No separate index is needed.
CREATE TABLE members (
    offset      INTEGER PRIMARY KEY,
    header_size INTEGER NOT NULL,  -- bytes of ustar (+ PAX) header before the body
    kind        INTEGER NOT NULL,  -- tar typeflag digit: 0 file, 1 hard link, 2 symlink, 5 directory;
                                   -- 100: a regular file tartapefs made (an index member): its
                                   -- body is in the generated table, source is its name under
                                   -- the prefix, ino and dev are 0
    source      BLOB    NOT NULL,  -- path relative to the source root, raw bytes; '' = the root
    size        INTEGER NOT NULL,  -- body bytes (0 unless a regular file)
    mode        INTEGER NOT NULL,  -- permission bits (st_mode & 0o7777)
    mtime_s     INTEGER NOT NULL,  -- lstat st_mtime_ns split in two: floor(ns / 1e9), the header's
    mtime_nsec  INTEGER NOT NULL,  -- seconds, and the rest 0..999999999 (ns from 2262 on, and
                                   -- before 1677, do not fit one signed 64-bit INTEGER)
    linkname    BLOB,              -- symlink target, or the archive name a hard link points to
    ino         INTEGER NOT NULL,  -- lstat st_ino, checked before serving a body; stored as a
                                   -- signed 64-bit value (st_ino may use all 64 bits)
    dev         INTEGER NOT NULL,  -- lstat st_dev, groups hard links at record time (signed too)
    ctime_ns    INTEGER NOT NULL,  -- lstat st_ctime_ns, checked before and after serving a body
    uid         INTEGER,           -- owner fields: NULL when anonymized (uid/gid 0, no names)
    gid         INTEGER,
    uname       BLOB,
    gname       BLOB
);

-- One row per tape of a recording served encrypted (encrypt_to in meta), none
-- otherwise: the age state that, with the tape's bytes, decides its .age file.
-- Made at record time from fresh randomness, one per tape: two tapes never share
-- a file key, since one key and nonce over two different plaintexts would give
-- both away. It holds the file key every recipient derives from the header, never
-- a secret key of a user; the file is 0600 for that reason too.
CREATE TABLE encryption (
    tape          INTEGER PRIMARY KEY,  -- tapes.number
    recipients    TEXT NOT NULL,        -- age1... one per line, in the header's stanza order
    file_key      TEXT NOT NULL,        -- hex, 16 bytes
    payload_nonce TEXT NOT NULL,        -- hex, 16 bytes
    header        TEXT NOT NULL         -- the whole age header, up to and including the MAC line
);

-- Files tartapefs made at record time, which no source file holds: the body of a
-- tape's index member (role 'index_member') and ratarmount's index of a tape (role
-- 'ratarmount_index', served as NAME.index.sqlite). Each file is cut in parts of
-- 1 MiB (the last one shorter, or empty for an empty file), so byte X of a file is
-- in its part X / 1 MiB; a part is read in place (blobopen), never a whole file.
-- The CRC-32 of the index covers them too.
CREATE TABLE generated (
    id    INTEGER PRIMARY KEY,
    tape  INTEGER NOT NULL,        -- tapes.number
    role  TEXT    NOT NULL,        -- 'index_member' or 'ratarmount_index'
    part  INTEGER NOT NULL,        -- 0, 1, ... in order
    data  BLOB    NOT NULL,
    UNIQUE (tape, role, part)
);
