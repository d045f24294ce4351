/* MD5 (RFC 1321) of many messages at once, several in step: one message per lane of a
 * vector, so a tape block's hundreds of small bodies cost a fraction of hashing them one
 * after the other (MD5 is one long chain of dependent steps per message; lanes are
 * independent chains).
 *
 * Written with GCC's vector extensions, 16 lanes; on x86-64 the compression is built three
 * times (AVX-512, AVX2, the baseline) and the loader picks one for the CPU it runs on
 * (100k bodies of 1-8 KiB, CPU per body: 7.9 us with hashlib, 2.5 us at 8 lanes of AVX2,
 * 1.9 at 16, 1.4 at 16 with AVX-512; rough, a busy machine). Every lane's digest is the
 * digest of its own message: tests/test_native_stream.py holds it to hashlib. */
#include "md5.h"

#include <string.h>

#define LANES 16

typedef uint32_t vec_t __attribute__((vector_size(LANES * 4)));

/* floor(abs(sin(i + 1)) * 2^32), RFC 1321 section 3.4 */
static const uint32_t K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

static const uint32_t IV[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};

#define ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define F(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define G(b, c, d) ((c) ^ ((d) & ((b) ^ (c))))
#define H(b, c, d) ((b) ^ (c) ^ (d))
#define I(b, c, d) ((c) ^ ((b) | ~(d)))
#define STEP(fn, a, b, c, d, i, g, s) (a) = (b) + ROTL((a) + fn(b, c, d) + w[g] + K[i], s)

/* Four steps of one round, the variables rotating as the RFC writes them. */
#define ROUND4(fn, i, g0, g1, g2, g3, s0, s1, s2, s3) \
    STEP(fn, a, b, c, d, i, g0, s0);                  \
    STEP(fn, d, a, b, c, i + 1, g1, s1);              \
    STEP(fn, c, d, a, b, i + 2, g2, s2);              \
    STEP(fn, b, c, d, a, i + 3, g3, s3)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(TT_NO_CLONES)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

/* One 64-byte block of every lane: state[k][lane] += compress(words[j][lane]). */
CLONES static void compress(uint32_t state[4][LANES], const uint32_t words[16][LANES])
{
    vec_t w[16], a, b, c, d;
    memcpy(w, words, sizeof w);
    memcpy(&a, state[0], sizeof a);
    memcpy(&b, state[1], sizeof b);
    memcpy(&c, state[2], sizeof c);
    memcpy(&d, state[3], sizeof d);
    vec_t a0 = a, b0 = b, c0 = c, d0 = d;
    ROUND4(F, 0, 0, 1, 2, 3, 7, 12, 17, 22);
    ROUND4(F, 4, 4, 5, 6, 7, 7, 12, 17, 22);
    ROUND4(F, 8, 8, 9, 10, 11, 7, 12, 17, 22);
    ROUND4(F, 12, 12, 13, 14, 15, 7, 12, 17, 22);
    ROUND4(G, 16, 1, 6, 11, 0, 5, 9, 14, 20);
    ROUND4(G, 20, 5, 10, 15, 4, 5, 9, 14, 20);
    ROUND4(G, 24, 9, 14, 3, 8, 5, 9, 14, 20);
    ROUND4(G, 28, 13, 2, 7, 12, 5, 9, 14, 20);
    ROUND4(H, 32, 5, 8, 11, 14, 4, 11, 16, 23);
    ROUND4(H, 36, 1, 4, 7, 10, 4, 11, 16, 23);
    ROUND4(H, 40, 13, 0, 3, 6, 4, 11, 16, 23);
    ROUND4(H, 44, 9, 12, 15, 2, 4, 11, 16, 23);
    ROUND4(I, 48, 0, 7, 14, 5, 6, 10, 15, 21);
    ROUND4(I, 52, 12, 3, 10, 1, 6, 10, 15, 21);
    ROUND4(I, 56, 8, 15, 6, 13, 6, 10, 15, 21);
    ROUND4(I, 60, 4, 11, 2, 9, 6, 10, 15, 21);
    a += a0;
    b += b0;
    c += c0;
    d += d0;
    memcpy(state[0], &a, sizeof a);
    memcpy(state[1], &b, sizeof b);
    memcpy(state[2], &c, sizeof c);
    memcpy(state[3], &d, sizeof d);
}

static uint32_t le32(const unsigned char *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
#else
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
#endif
}

/* A message as one lane walks it: its whole blocks in place, then its last one or two
 * blocks (the rest of the bytes, 0x80, zeros, the length in bits) made in `tail`. */
typedef struct {
    const unsigned char *data;
    size_t whole, blocks, next; /* whole blocks in data, all blocks, the next one to hash */
    size_t message;             /* which of the n messages */
    unsigned char tail[128];
} lane_t;

static void start(lane_t *lane, uint32_t state[4][LANES], int k, const unsigned char *data, size_t len,
                  size_t message)
{
    lane->data = data;
    lane->whole = len / 64;
    lane->next = 0;
    lane->message = message;
    size_t rest = len % 64, tail_len = rest + 9 <= 64 ? 64 : 128;
    lane->blocks = lane->whole + tail_len / 64;
    memset(lane->tail, 0, sizeof lane->tail);
    if (rest)
        memcpy(lane->tail, data + lane->whole * 64, rest);
    lane->tail[rest] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int j = 0; j < 8; j++)
        lane->tail[tail_len - 8 + j] = (unsigned char)(bits >> (8 * j));
    for (int j = 0; j < 4; j++)
        state[j][k] = IV[j];
}

void tt_md5_many(const unsigned char *const *data, const size_t *lens, size_t n, unsigned char (*out)[16])
{
    static const unsigned char idle[64]; /* what an idle lane hashes, its result unused */
    lane_t lanes[LANES];
    int busy[LANES] = {0};
    uint32_t state[4][LANES] __attribute__((aligned(32)));
    uint32_t words[16][LANES] __attribute__((aligned(32)));
    size_t given = 0, running = 0;
    for (int k = 0; k < LANES && given < n; k++, given++, running++) {
        start(&lanes[k], state, k, data[given], lens[given], given);
        busy[k] = 1;
    }
    while (running) {
        for (int k = 0; k < LANES; k++) {
            const unsigned char *block = idle;
            if (busy[k]) {
                lane_t *lane = &lanes[k];
                block = lane->next < lane->whole ? lane->data + 64 * lane->next
                                                 : lane->tail + 64 * (lane->next - lane->whole);
            }
            for (int j = 0; j < 16; j++)
                words[j][k] = le32(block + 4 * j);
        }
        compress(state, words);
        for (int k = 0; k < LANES; k++) {
            if (!busy[k] || ++lanes[k].next < lanes[k].blocks)
                continue;
            unsigned char *digest = out[lanes[k].message];
            for (int j = 0; j < 4; j++)
                for (int b = 0; b < 4; b++)
                    digest[4 * j + b] = (unsigned char)(state[j][k] >> (8 * b));
            if (given < n) {
                start(&lanes[k], state, k, data[given], lens[given], given);
                given++;
            } else {
                busy[k] = 0;
                running--;
            }
        }
    }
}
