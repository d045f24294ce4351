/* MD5 of many messages at once (md5.c), for the event stream's per-member digests (play.c). */
#ifndef TT_MD5_H
#define TT_MD5_H

#include <stddef.h>
#include <stdint.h>

/* out[i] = MD5 of data[i][0 : lens[i]] for i < n. Needs no Python: callable without the GIL. */
void tt_md5_many(const unsigned char *const *data, const size_t *lens, size_t n, unsigned char (*out)[16]);

#endif
