/* The ustar header of the common member, in C: the fast path of
 * tartapefs/format.py's encode_header, byte for byte (tests/test_native.py
 * holds them to each other). Pure: no I/O, no Python objects. */
#ifndef TT_USTAR_H
#define TT_USTAR_H

#include <stddef.h>
#include <stdint.h>

#define TT_BLOCK 512
#define TT_NAME_MAX 100
#define TT_MAX_OCT12 077777777777LL /* 8**11 - 1: sizes and mtimes ustar holds */

/* Index kind codes (tartapefs/index.py) are the typeflag digits. */
#define TT_KIND_FILE 0
#define TT_KIND_HARDLINK 1
#define TT_KIND_SYMLINK 2
#define TT_KIND_DIR 5

/* The member's archive name into out (at most cap bytes), as layout.archive_name
 * builds it: prefix/source, prefix alone for the root, a directory ending in '/'.
 * Returns its length, or -1 when it is longer than cap. */
int tt_archive_name(unsigned char *out, size_t cap, const unsigned char *prefix, size_t prefix_len,
                    const unsigned char *source, size_t source_len, int is_dir);

/* Whether a member with these fields gets one plain ustar block: a name of at most
 * 100 bytes, no link target, no owner, size and mtime (whole seconds) in ustar's range.
 * The caller has checked there is no link target and no owner. */
int tt_is_plain(size_t name_len, int64_t size, int64_t mtime_ns);

/* The 512-byte ustar block of a plain member (tt_is_plain true) into out.
 * typeflag is the ASCII flag ('0', '5', ...); mode is masked to 07777. */
void tt_plain_header(unsigned char *out, const unsigned char *name, size_t name_len, int typeflag,
                     int64_t mode, int64_t size, int64_t mtime_ns);

#endif
