/* See ustar.h. Field offsets of a ustar block: name 0, mode 100, uid 108,
 * gid 116, size 124, mtime 136, checksum 148, typeflag 156, linkname 157,
 * magic 257, uname 265, gname 297, devmajor 329, devminor 337, prefix 345. */
#include "ustar.h"

#include <string.h>

int tt_archive_name(unsigned char *out, size_t cap, const unsigned char *prefix, size_t prefix_len,
                    const unsigned char *source, size_t source_len, int is_dir)
{
    size_t n = 0;
    size_t need = prefix_len + (prefix_len && source_len ? 1 : 0) + source_len + (is_dir ? 1 : 0);
    if (need > cap)
        return -1;
    memcpy(out, prefix, prefix_len);
    n = prefix_len;
    if (prefix_len && source_len)
        out[n++] = '/';
    memcpy(out + n, source, source_len);
    n += source_len;
    if (is_dir)
        out[n++] = '/';
    return (int)n;
}

int tt_is_plain(size_t name_len, int64_t size, int64_t mtime_ns)
{
    /* mtime_ns < 0 means a floor(mtime_ns / 1e9) below 0: ustar cannot hold it. */
    return name_len <= TT_NAME_MAX && size >= 0 && size <= TT_MAX_OCT12 && mtime_ns >= 0
           && mtime_ns / 1000000000 <= TT_MAX_OCT12;
}

/* width - 1 octal digits, zero-padded, then NUL (the value fits: checked before). */
static void octal(unsigned char *out, int width, uint64_t value)
{
    out[width - 1] = 0;
    for (int i = width - 2; i >= 0; i--) {
        out[i] = (unsigned char)('0' + (value & 7));
        value >>= 3;
    }
}

void tt_plain_header(unsigned char *out, const unsigned char *name, size_t name_len, int typeflag,
                     int64_t mode, int64_t size, int64_t mtime_ns)
{
    memset(out, 0, TT_BLOCK);
    memcpy(out, name, name_len);
    octal(out + 100, 8, (uint64_t)(mode & 07777));
    memcpy(out + 108, "0000000", 8); /* uid 0, with its NUL */
    memcpy(out + 116, "0000000", 8); /* gid 0 */
    octal(out + 124, 12, (uint64_t)size);
    octal(out + 136, 12, (uint64_t)(mtime_ns / 1000000000));
    memset(out + 148, ' ', 8); /* the checksum counts its own field as spaces */
    out[156] = (unsigned char)typeflag;
    memcpy(out + 257, "ustar\0" "00", 8);
    unsigned int sum = 0;
    /* Only the first 265 bytes can be non-zero in a plain block. */
    for (int i = 0; i < 265; i++)
        sum += out[i];
    octal(out + 148, 7, sum);
    out[155] = ' ';
}
