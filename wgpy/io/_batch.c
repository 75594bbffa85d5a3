/* wgpy.io._batch: the fast path's per-packet work in one C call per TUN read.
 *
 * Python's cost per packet around each AEAD call (the header, the padding, the nonce, the
 * call itself) is what keeps a Python data plane at twice upstream wireguard-go's CPU per GB
 * (docs/benchmarks.md, section 9). Sealer.seal does, for one TUN read, what FastPath.on_tun
 * does per packet: for a plain packet, pad it, write the transport header and seal it into
 * the arena; for a TSO/USO super-packet (tun/offload.py), cut it into segments as the
 * kernel's tcp_gso_segment does, compute each one's checksums, and seal each one behind the
 * one before, ready for one UDP GSO send. A packet handed over with only a partial checksum
 * (NEEDS_CSUM) gets it completed first. tun/offload.py's Segmenter is the reference the tests
 * compare this with, byte for byte.
 *
 * Opener.open does the receiving side's AEAD for a run of transport datagrams of one
 * receiver index (a UDP GRO read): each opened into its own slot of an output buffer, the
 * counters handed back for the replay check, which stays with the Device.
 *
 * The AEAD is OpenSSL's ChaCha20-Poly1305 (libcrypto, the same code under `cryptography`).
 * Sans-IO: no syscall, no clock; the GIL is held throughout (calls are tens of µs at most).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define HEADER 16 /* type, receiver index, counter */
#define TAG 16
#define NEEDS_CSUM 1
#define GSO_NONE 0
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_UDP_L4 5
#define GSO_ECN 0x80
#define MAX_ROWS 2048 /* tun/offload.py's limit: more segments than this are dropped */
#define MAX_PACKET 65535
#define VNET_HDR_LEN 10
#define TH_FIN 0x01
#define TH_PSH 0x08
#define TH_CWR 0x80

static inline void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline unsigned get16(const uint8_t *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline uint32_t get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint64_t get_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline uint64_t fold(uint64_t x) {
    while (x >> 16) x = (x & 0xFFFF) + (x >> 16);
    return x;
}

/* The ones'-complement sum of p[0:n] as big-endian 16-bit words (an odd last byte padded
 * with zero), folded to 16 bits. Summed as native 32-bit words and swapped at the end: the
 * sum does not depend on byte order (RFC 1071, 2.B). p must start at an even offset of the
 * packet. */
static uint64_t ones_sum(const uint8_t *p, size_t n) {
    uint64_t acc = 0;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        acc += (w & 0xFFFFFFFFu) + (w >> 32);
        p += 8;
        n -= 8;
    }
    if (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        acc += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        acc += w;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t last[2] = {p[0], 0};
        uint16_t w;
        memcpy(&w, last, 2);
        acc += w;
    }
    uint64_t s = fold(acc);
#if PY_LITTLE_ENDIAN
    s = ((s & 0xFF) << 8) | (s >> 8);
#endif
    return s;
}

/* wireguard-go's calculatePaddingSize (wgpy.core.messages.padding_size) */
static Py_ssize_t padding_size(Py_ssize_t length, Py_ssize_t mtu) {
    if (mtu == 0) return ((length + 15) & ~(Py_ssize_t)15) - length;
    Py_ssize_t last = length > mtu ? length % mtu : length;
    Py_ssize_t padded = (last + 15) & ~(Py_ssize_t)15;
    if (padded > mtu) padded = mtu;
    return padded > last ? padded - last : 0;
}

/* ---------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ctx;
    int encrypt;
} Cipher;

/* One plaintext segment and its padding, shared: every call runs with the GIL held. */
static uint8_t scratch[MAX_PACKET + 64];

static int cipher_setup(Cipher *self, PyObject *args, int encrypt) {
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "y*", &key)) return -1;
    if (key.len != 32) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "a ChaCha20-Poly1305 key is 32 bytes");
        return -1;
    }
    if (self->ctx == NULL) self->ctx = EVP_CIPHER_CTX_new();
    int ok = self->ctx != NULL &&
             EVP_CipherInit_ex(self->ctx, EVP_chacha20_poly1305(), NULL, key.buf, NULL, encrypt) == 1;
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto refused the ChaCha20-Poly1305 key");
        return -1;
    }
    self->encrypt = encrypt;
    return 0;
}

static void cipher_dealloc(Cipher *self) {
    if (self->ctx != NULL) EVP_CIPHER_CTX_free(self->ctx); /* clears the key schedule */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *cipher_repr(PyObject *self) {
    return PyUnicode_FromFormat("%s(key=(hidden))", Py_TYPE(self)->tp_name);
}

static inline void nonce_of(uint8_t iv[12], uint64_t counter) {
    memset(iv, 0, 4);
    put_le64(iv + 4, counter);
}

/* Seal plaintext pt[0:n] under `counter` into out: header, ciphertext, tag. */
static int seal_one(Cipher *self, const uint8_t *pt, Py_ssize_t n, uint32_t receiver,
                    uint64_t counter, uint8_t *out) {
    uint8_t iv[12];
    int outl = 0, finl = 0;
    nonce_of(iv, counter);
    put_le32(out, 4);
    put_le32(out + 4, receiver);
    put_le64(out + 8, counter);
    if (EVP_CipherInit_ex(self->ctx, NULL, NULL, NULL, iv, 1) != 1) return -1;
    if (n && EVP_EncryptUpdate(self->ctx, out + HEADER, &outl, pt, (int)n) != 1) return -1;
    if (EVP_EncryptFinal_ex(self->ctx, out + HEADER + outl, &finl) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_GET_TAG, TAG, out + HEADER + n) != 1) return -1;
    return 0;
}

typedef struct {
    int version, proto;
    Py_ssize_t cs, hlen, check_at, mss, rows;
} Layout;

/* tun/offload.py's layout(): how a super-packet is cut; -1 if it cannot be (malformed). */
static int layout(const uint8_t *p, Py_ssize_t length, int gso_type, Py_ssize_t gso_size,
                  Py_ssize_t cs, Py_ssize_t mtu, Layout *lay) {
    int gso = gso_type & ~GSO_ECN;
    if (length < 20 || (cs & 1) || gso_size == 0) return -1;
    int version = p[0] >> 4;
    if (gso == GSO_TCPV4 || gso == GSO_TCPV6) {
        if (version != (gso == GSO_TCPV4 ? 4 : 6) || cs + 20 > length) return -1;
        Py_ssize_t thl = (p[cs + 12] >> 4) * 4;
        if (thl < 20) return -1;
        lay->hlen = cs + thl;
        lay->proto = 6;
        lay->check_at = cs + 16;
    } else if (gso == GSO_UDP_L4 && (version == 4 || version == 6)) {
        lay->hlen = cs + 8;
        lay->proto = 17;
        lay->check_at = cs + 6;
    } else {
        return -1;
    }
    if (version == 4 ? (cs != (p[0] & 0x0F) * 4 || cs < 20) : cs < 40) return -1;
    Py_ssize_t payload = length - lay->hlen;
    Py_ssize_t mss = lay->hlen + gso_size <= mtu ? gso_size : mtu - lay->hlen;
    if (payload <= 0 || mss <= 0) return -1;
    lay->rows = (payload + mss - 1) / mss;
    if (lay->rows > MAX_ROWS) return -1;
    lay->version = version;
    lay->cs = cs;
    lay->mss = mss;
    return 0;
}

/* Sealer.seal(src, start, length, vnet, mtu, remote_index, counter, out, out_off)
 *     -> (n, first, last)
 *
 * Seals the TUN read src[start:start+length] (with vnet: its virtio_net_hdr is the 10 bytes
 * before it; without, a plain packet) as n datagrams written one after the other at
 * out[out_off:]: the first n-1 of `first` bytes each, the last of `last` bytes, with
 * counters counter..counter+n-1. n is 0 for a packet that cannot be cut or whose checksum
 * offsets do not fit (drop it), -1 when out has no room for all of them from out_off (send
 * what is there, then call again at the arena's start). src is not changed. */
static PyObject *sealer_seal(Cipher *self, PyObject *args) {
    Py_buffer src, out;
    Py_ssize_t start, length, mtu, out_off;
    int vnet;
    unsigned int receiver;
    unsigned long long counter;
    if (!PyArg_ParseTuple(args, "y*nnpnIKw*n", &src, &start, &length, &vnet, &mtu, &receiver,
                          &counter, &out, &out_off))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = 0, first = 0, last = 0;
    if (start < (vnet ? VNET_HDR_LEN : 0) || length < 0 || start + length > src.len ||
        out_off < 0 || out_off > out.len || mtu < 0 || length > MAX_PACKET) {
        PyErr_SetString(PyExc_ValueError, "packet or output offsets out of range");
        goto done;
    }
    int flags = 0, gso_type = GSO_NONE;
    Py_ssize_t gso_size = 0, cs = 0, co = 0;
    if (vnet) { /* struct virtio_net_hdr, in the host's byte order, right before the packet */
        const uint8_t *h = (const uint8_t *)src.buf + start - VNET_HDR_LEN;
        uint16_t f16[3];
        memcpy(f16, h + 4, sizeof f16);
        flags = h[0];
        gso_type = h[1];
        gso_size = f16[0];
        cs = f16[1];
        co = f16[2];
    }
    const uint8_t *p = (const uint8_t *)src.buf + start;
    uint8_t *o = (uint8_t *)out.buf + out_off;
    Py_ssize_t room = out.len - out_off;
    uint8_t *s = scratch;
    if ((gso_type & ~GSO_ECN) == GSO_NONE) {
        Py_ssize_t pad = padding_size(length, mtu);
        Py_ssize_t size = length + pad;
        if (HEADER + size + TAG > room) {
            n = -1;
            goto answer;
        }
        memcpy(s, p, (size_t)length);
        memset(s + length, 0, (size_t)pad);
        if (flags & NEEDS_CSUM) { /* tun/offload.py's complete_checksum */
            Py_ssize_t field = cs + co;
            if (cs < 20 || co + 2 > length - cs || field + 2 > length) goto answer; /* n = 0 */
            unsigned check = 0xFFFF - (unsigned)fold(ones_sum(s + cs, (size_t)(length - cs)));
            if (check == 0 && co == 6) check = 0xFFFF; /* UDP: 0 means "no checksum" */
            put16(s + field, check);
        }
        if (seal_one(self, s, size, receiver, counter, o) < 0) goto crypto_error;
        n = 1;
        first = last = HEADER + size + TAG;
        goto answer;
    }
    Layout lay;
    if (layout(p, length, gso_type, gso_size, cs, mtu, &lay) < 0) goto answer; /* n = 0 */
    /* all segments but the last are hlen + mss long; room for all of them, padded */
    Py_ssize_t full = lay.hlen + lay.mss;
    Py_ssize_t full_dgram = HEADER + full + padding_size(full, mtu) + TAG;
    Py_ssize_t last_len = length - lay.hlen - (lay.rows - 1) * lay.mss;
    Py_ssize_t last_seg = lay.hlen + last_len;
    Py_ssize_t last_dgram = HEADER + last_seg + padding_size(last_seg, mtu) + TAG;
    if ((lay.rows - 1) * full_dgram + last_dgram > room) {
        n = -1;
        goto answer;
    }
    uint64_t addr_sum = lay.version == 4 ? ones_sum(p + 12, 8) : ones_sum(p + 8, 32);
    uint64_t pseudo = addr_sum + (uint64_t)lay.proto; /* + the transport length per segment */
    unsigned ip_id = lay.version == 4 ? get16(p + 4) : 0;
    uint32_t seq = lay.proto == 6 ? get32(p + lay.cs + 4) : 0;
    uint8_t tflags = lay.proto == 6 ? p[lay.cs + 13] : 0;
    const uint8_t *pay = p + lay.hlen;
    for (Py_ssize_t k = 0; k < lay.rows; k++) {
        Py_ssize_t chunk = k < lay.rows - 1 ? lay.mss : last_len;
        Py_ssize_t seg = lay.hlen + chunk;
        Py_ssize_t pad = padding_size(seg, mtu);
        memcpy(s, p, (size_t)lay.hlen);
        memcpy(s + lay.hlen, pay + k * lay.mss, (size_t)chunk);
        memset(s + seg, 0, (size_t)pad);
        if (lay.version == 4) {
            put16(s + 2, (unsigned)seg);
            put16(s + 4, (ip_id + (unsigned)k) & 0xFFFF);
            put16(s + 10, 0);
            put16(s + 10, 0xFFFF - (unsigned)fold(ones_sum(s, (size_t)lay.cs)));
        } else {
            put16(s + 4, (unsigned)(seg - 40));
        }
        if (lay.proto == 6) {
            put32(s + lay.cs + 4, seq + (uint32_t)(k * lay.mss));
            uint8_t f = tflags;
            if (k < lay.rows - 1) f &= (uint8_t)~(TH_FIN | TH_PSH);
            if (k) f &= (uint8_t)~TH_CWR;
            s[lay.cs + 13] = f;
        } else {
            put16(s + lay.cs + 4, (unsigned)(seg - lay.cs));
        }
        put16(s + lay.check_at, 0);
        uint64_t total = ones_sum(s + lay.cs, (size_t)(seg - lay.cs)) + pseudo +
                         (uint64_t)(seg - lay.cs);
        unsigned check = 0xFFFF - (unsigned)fold(total);
        if (check == 0 && lay.proto == 17) check = 0xFFFF;
        put16(s + lay.check_at, check);
        if (seal_one(self, s, seg + pad, receiver, counter + (uint64_t)k, o) < 0) goto crypto_error;
        o += HEADER + seg + pad + TAG;
    }
    n = lay.rows;
    first = full_dgram;
    last = last_dgram;
answer:
    result = Py_BuildValue("nnn", n, first, last);
    goto done;
crypto_error:
    PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to seal");
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return result;
}

/* Open the transport datagram d (header, size bytes of ciphertext, tag) into dst: 0, or -1
 * when the tag does not verify. */
static int open_one(Cipher *self, const uint8_t *d, Py_ssize_t size, uint8_t *dst) {
    uint8_t iv[12], tag[TAG];
    int outl = 0, finl = 0;
    memcpy(tag, d + HEADER + size, TAG);
    nonce_of(iv, get_le64(d + 8));
    if (EVP_CipherInit_ex(self->ctx, NULL, NULL, NULL, iv, 0) == 1 &&
        (size == 0 || EVP_DecryptUpdate(self->ctx, dst, &outl, d + HEADER, (int)size) == 1) &&
        EVP_CIPHER_CTX_ctrl(self->ctx, EVP_CTRL_AEAD_SET_TAG, TAG, tag) == 1 &&
        EVP_DecryptFinal_ex(self->ctx, dst + outl, &finl) == 1)
        return 0;
    return -1;
}

/* Whether d[0:n] is a transport message to `receiver`, long enough for a tag. */
static int transport_to(const uint8_t *d, Py_ssize_t n, uint32_t receiver) {
    return n >= HEADER + TAG && d[0] == 4 && !d[1] && !d[2] && !d[3] &&
           (uint32_t)(d[4] | d[5] << 8 | d[6] << 16 | (uint32_t)d[7] << 24) == receiver;
}

/* Opener.open(buf, start, end, seg, receiver, out, out_off, stride) -> list of counters
 *
 * Opens the transport datagrams buf[start:end] (each `seg` bytes long, the last one maybe
 * shorter; a UDP GRO read) for as long as they are transport messages to `receiver`: datagram
 * i's plaintext goes to out[out_off + i * stride:], as long as the datagram less 32 bytes,
 * behind out_off zero bytes (room for a virtio_net_hdr, written by the caller's TUN write;
 * so stride is at least out_off more than the longest plaintext).
 * Returns one entry per datagram opened, its counter, or -1 where the tag did not verify (the
 * slot's bytes are then undefined); the list ends before the first datagram of another
 * receiver or type, or one too short for a tag. The replay check is the caller's, after this.
 * buf is not changed. */
static PyObject *opener_open(Cipher *self, PyObject *args) {
    Py_buffer in, out;
    Py_ssize_t start, end, seg, out_off, stride;
    unsigned int receiver;
    if (!PyArg_ParseTuple(args, "y*nnnIw*nn", &in, &start, &end, &seg, &receiver, &out, &out_off,
                          &stride))
        return NULL;
    PyObject *result = NULL;
    if (start < 0 || end > in.len || start > end || seg < HEADER + TAG || out_off < 0 ||
        stride < seg - HEADER - TAG + out_off) {
        PyErr_SetString(PyExc_ValueError, "datagram offsets out of range");
        goto done;
    }
    result = PyList_New(0);
    if (result == NULL) goto done;
    const uint8_t *b = (const uint8_t *)in.buf;
    for (Py_ssize_t i = 0, a = start; a < end; i++, a += seg) {
        Py_ssize_t z = a + seg < end ? a + seg : end;
        const uint8_t *d = b + a;
        if (!transport_to(d, z - a, receiver)) break;
        Py_ssize_t size = z - a - HEADER - TAG;
        if (out_off + i * stride + size > out.len) break;
        uint64_t c = get_le64(d + 8);
        uint8_t *dst = (uint8_t *)out.buf + out_off + i * stride;
        memset(dst - out_off, 0, (size_t)out_off); /* another read may have left bytes there */
        long long counter = -1;
        if (c <= (uint64_t)LLONG_MAX && open_one(self, d, size, dst) == 0) counter = (long long)c;
        PyObject *v = PyLong_FromLongLong(counter);
        if (v == NULL || PyList_Append(result, v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(result);
            goto done;
        }
        Py_DECREF(v);
    }
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

/* ---- receiving: replay window, inner checks and TCP coalescing (wgpy.io.gro) ----------- */

#define RING_BITS 8192 /* wgpy.core.replay: one byte per counter slot, 128 blocks of 64 */
#define RING_BLOCKS 128
#define WINDOW ((RING_BLOCKS - 1) * 64)
#define REJECT_AFTER_MESSAGES (UINT64_MAX - 8192) /* 2**64 - 2**13 - 1 */
#define MAX_IP 65535
#define TH_ACK 0x10

/* wgpy.core.replay.ReplayFilter.validate on its ring and `last` */
static int replay_validate(uint8_t *ring, uint64_t *last, uint64_t c) {
    if (c >= REJECT_AFTER_MESSAGES) return 0;
    if (c > *last) {
        uint64_t current = *last >> 6, diff = (c >> 6) - current;
        if (diff >= RING_BLOCKS)
            memset(ring, 0, RING_BITS);
        else
            for (uint64_t i = 1; i <= diff; i++) memset(ring + (((current + i) & (RING_BLOCKS - 1)) << 6), 0, 64);
        *last = c;
    } else if (*last - c > WINDOW) {
        return 0;
    }
    uint8_t *slot = ring + (c & (RING_BITS - 1));
    if (*slot) return 0;
    *slot = 1;
    return 1;
}

/* The group being built in `out`: its virtio_net_hdr at g, the IP packet behind it. */
typedef struct {
    uint8_t *out;
    Py_ssize_t cap, used; /* out's size; bytes of it taken by finished writes */
    Py_ssize_t g, end;    /* the group's start (its vnet header) and the end of its data */
    Py_ssize_t held, ihl, hlen, seg;
    uint32_t next_seq;
    PyObject *writes; /* [(offset, length, segments)] */
    Py_ssize_t gso_writes, gso_segments;
} Groups;

static int add_write(Groups *G, Py_ssize_t off, Py_ssize_t len, Py_ssize_t segs) {
    PyObject *t = Py_BuildValue("(nnn)", off, len, segs);
    if (t == NULL) return -1;
    int r = PyList_Append(G->writes, t);
    Py_DECREF(t);
    return r;
}

/* wgpy.io.gro.TcpCoalescer.flush */
static int group_flush(Groups *G) {
    if (!G->held) return 0;
    uint8_t *v = G->out + G->g, *ip = v + VNET_HDR_LEN;
    Py_ssize_t total = G->end - G->g - VNET_HDR_LEN;
    memset(v, 0, VNET_HDR_LEN);
    if (G->held > 1) {
        Py_ssize_t tcp_len = total - G->ihl;
        uint64_t addrs;
        if (G->ihl == 20) {
            put16(ip + 2, (unsigned)total);
            put16(ip + 10, 0);
            put16(ip + 10, 0xFFFF - (unsigned)fold(ones_sum(ip, 20)));
            addrs = ones_sum(ip + 12, 8);
        } else {
            put16(ip + 4, (unsigned)tcp_len);
            addrs = ones_sum(ip + 8, 32);
        }
        /* CHECKSUM_PARTIAL: the pseudo-header sum; the kernel adds the rest */
        put16(ip + G->ihl + 16, (unsigned)fold(addrs + 6 + (uint64_t)tcp_len));
        uint16_t f[4] = {(uint16_t)G->hlen, (uint16_t)G->seg, (uint16_t)G->ihl, 16};
        v[0] = NEEDS_CSUM;
        v[1] = G->ihl == 20 ? GSO_TCPV4 : GSO_TCPV6;
        memcpy(v + 2, f, sizeof f);
        G->gso_writes++;
        G->gso_segments += G->held;
    }
    if (add_write(G, G->g, G->end - G->g, G->held) < 0) return -1;
    G->used = G->end;
    G->held = 0;
    return 0;
}

/* Whether packet p joins the group as the segment after the ones held (the fields of
 * wgpy.io.gro's _KEY_V4/_KEY_V6: all but lengths, IPv4 ID, checksums and sequence). */
static int joins(const Groups *G, const uint8_t *p, Py_ssize_t ihl, Py_ssize_t hlen,
                 Py_ssize_t payload) {
    const uint8_t *h = G->out + G->g + VNET_HDR_LEN;
    Py_ssize_t t = ihl, thl = hlen - ihl;
    if (hlen != G->hlen || ihl != G->ihl || payload <= 0 || payload > G->seg) return 0;
    if (get32(p + t + 4) != G->next_seq) return 0;
    if (G->end + payload > G->g + VNET_HDR_LEN + MAX_IP) return 0;
    if (ihl == 20) {
        if (memcmp(p, h, 2) || memcmp(p + 6, h + 6, 4) || memcmp(p + 12, h + 12, 12)) return 0;
    } else if (memcmp(p, h, 4) || memcmp(p + 6, h + 6, 38)) {
        return 0;
    }
    return !memcmp(p + t + 8, h + t + 8, 8) && !memcmp(p + t + 18, h + t + 18, (size_t)(thl - 18));
}

/* wgpy.io.gro.TcpCoalescer.offer, and the write of a packet it refuses: packet p (length
 * bytes) into the output. */
static int group_offer(Groups *G, const uint8_t *p, Py_ssize_t length) {
    Py_ssize_t ihl = p[0] == 0x45 ? 20 : (p[0] >> 4) == 6 ? 40 : 0;
    Py_ssize_t hlen = 0, payload = 0;
    if (ihl && length >= ihl + 20) {
        hlen = ihl + (p[ihl + 12] >> 4) * 4;
        payload = length - hlen;
        if (G->held) {
            if (joins(G, p, ihl, hlen, payload)) {
                memcpy(G->out + G->end, p + hlen, (size_t)payload);
                G->end += payload;
                G->held++;
                G->next_seq += (uint32_t)payload;
                return payload < G->seg ? group_flush(G) : 0;
            }
            if (group_flush(G) < 0) return -1;
        }
        int tcp = ihl == 20 ? p[9] == 6 && !(p[6] & 0x3F) && !p[7] : p[6] == 6;
        if (tcp && p[ihl + 13] == TH_ACK && payload > 0 && hlen - ihl >= 20 && hlen <= length) {
            G->g = G->used;
            memcpy(G->out + G->g + VNET_HDR_LEN, p, (size_t)length);
            G->end = G->g + VNET_HDR_LEN + length;
            G->held = 1;
            G->ihl = ihl;
            G->hlen = hlen;
            G->seg = payload;
            G->next_seq = get32(p + ihl + 4) + (uint32_t)payload;
            return 0;
        }
    } else if (G->held && group_flush(G) < 0) {
        return -1;
    }
    if (G->held && group_flush(G) < 0) return -1;
    Py_ssize_t off = G->used; /* as it came, behind a zero virtio_net_hdr */
    memset(G->out + off, 0, VNET_HDR_LEN);
    memcpy(G->out + off + VNET_HDR_LEN, p, (size_t)length);
    G->used = off + VNET_HDR_LEN + length;
    return add_write(G, off, VNET_HDR_LEN + length, 1);
}

/* Opener.receive(buf, start, end, seg, receiver, ring, last, source, out)
 *     -> (consumed, nbytes, packets, last, failed, replayed, writes, gso_writes, gso_segments)
 *
 * FastPath.on_udp for the datagrams of a UDP GRO read (buf[start:end], `seg` bytes each, the
 * last maybe shorter) that are transport messages to `receiver`, on a TUN with IFF_VNET_HDR:
 * each opened (a bad tag: counted in `failed`), replay-checked on the keypair's window
 * (wgpy.core.replay: its 8192-byte ring, updated here, and `last`, returned; a replay is
 * counted in `replayed`), its inner packet checked, and TCP segments coalesced as
 * wgpy.io.gro.TcpCoalescer does. `writes` lists what to write to the TUN, in order, as
 * (offset in out, length, segments), each starting with its virtio_net_hdr.
 *
 * It stops before the first datagram it does not handle, which the caller then takes the
 * ordinary way: another receiver or type, too short, or an inner packet that is not a plain
 * IPv4/IPv6 packet from the address `source` (the caller checked that one against the
 * peer's allowed IPs; b"" for none yet). `consumed` datagrams (`nbytes` bytes, `packets` of
 * them with data) were handled; a stopped-at datagram's counter is not marked as seen. */
static PyObject *opener_receive(Cipher *self, PyObject *args) {
    Py_buffer in, ring, source, out;
    Py_ssize_t start, end, seg;
    unsigned int receiver;
    unsigned long long last_in;
    if (!PyArg_ParseTuple(args, "y*nnnIw*Ky*w*", &in, &start, &end, &seg, &receiver, &ring,
                          &last_in, &source, &out))
        return NULL;
    PyObject *result = NULL;
    Groups G = {.out = out.buf, .cap = out.len};
    if (start < 0 || end > in.len || start > end || seg < HEADER + TAG ||
        seg > HEADER + MAX_PACKET + TAG || ring.len != RING_BITS ||
        out.len < 2 * (end - start) + VNET_HDR_LEN) {
        PyErr_SetString(PyExc_ValueError, "datagram offsets, window or output out of range");
        goto done;
    }
    G.writes = PyList_New(0);
    if (G.writes == NULL) goto done;
    const uint8_t *b = (const uint8_t *)in.buf;
    uint64_t last = last_in;
    Py_ssize_t consumed = 0, nbytes = 0, packets = 0, failed = 0, replayed = 0;
    uint8_t *plain = scratch;
    for (Py_ssize_t a = start; a < end; a += seg) {
        Py_ssize_t z = a + seg < end ? a + seg : end;
        const uint8_t *d = b + a;
        if (!transport_to(d, z - a, receiver)) break;
        Py_ssize_t size = z - a - HEADER - TAG;
        uint64_t c = get_le64(d + 8);
        if (open_one(self, d, size, plain) < 0) {
            failed++;
            consumed++;
            continue;
        }
        Py_ssize_t length = 0;
        if (size) { /* wgpy.core.receive.inner_packet_length, for a source already checked */
            int version = plain[0] >> 4;
            if (version == 4 && size >= 20 && source.len == 4) {
                length = get16(plain + 2);
                if (length < 20 || length > size || memcmp(plain + 12, source.buf, 4)) break;
            } else if (version == 6 && size >= 40 && source.len == 16) {
                length = 40 + get16(plain + 4);
                if (length > size || memcmp(plain + 8, source.buf, 16)) break;
            } else {
                break;
            }
        }
        consumed++;
        if (!replay_validate(ring.buf, &last, c)) {
            replayed++;
            continue;
        }
        nbytes += z - a;
        if (!size) continue; /* a keepalive */
        packets++;
        if (group_offer(&G, plain, length) < 0) goto fail;
    }
    if (group_flush(&G) < 0) goto fail;
    result = Py_BuildValue("nnnKnnOnn", consumed, nbytes, packets, (unsigned long long)last, failed,
                           replayed, G.writes, G.gso_writes, G.gso_segments);
fail:
    Py_DECREF(G.writes);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&ring);
    PyBuffer_Release(&source);
    PyBuffer_Release(&out);
    return result;
}

static int sealer_init(Cipher *self, PyObject *args, PyObject *kw) {
    (void)kw;
    return cipher_setup(self, args, 1);
}

static int opener_init(Cipher *self, PyObject *args, PyObject *kw) {
    (void)kw;
    return cipher_setup(self, args, 0);
}

static PyMethodDef sealer_methods[] = {
    {"seal", (PyCFunction)sealer_seal, METH_VARARGS, "Seal one TUN read (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef opener_methods[] = {
    {"open", (PyCFunction)opener_open, METH_VARARGS, "Open a run of transport datagrams."},
    {"receive", (PyCFunction)opener_receive, METH_VARARGS,
     "Open, replay-check and coalesce a GRO read (see the module source)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SealerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wgpy.io._batch.Sealer",
    .tp_basicsize = sizeof(Cipher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sealer(key): seals TUN reads into transport datagrams under one sending key.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sealer_init,
    .tp_dealloc = (destructor)cipher_dealloc,
    .tp_repr = cipher_repr,
    .tp_methods = sealer_methods,
};

static PyTypeObject OpenerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wgpy.io._batch.Opener",
    .tp_basicsize = sizeof(Cipher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Opener(key): opens runs of transport datagrams under one receiving key.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)opener_init,
    .tp_dealloc = (destructor)cipher_dealloc,
    .tp_repr = cipher_repr,
    .tp_methods = opener_methods,
};

static struct PyModuleDef batch_module = {
    PyModuleDef_HEAD_INIT, "wgpy.io._batch",
    "The fast path's per-packet sealing, segmentation and opening in C.", -1, NULL, NULL, NULL,
    NULL, NULL,
};

PyMODINIT_FUNC PyInit__batch(void) {
    if (PyType_Ready(&SealerType) < 0 || PyType_Ready(&OpenerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&batch_module);
    if (m == NULL) return NULL;
    Py_INCREF(&SealerType);
    Py_INCREF(&OpenerType);
    if (PyModule_AddObject(m, "Sealer", (PyObject *)&SealerType) < 0 ||
        PyModule_AddObject(m, "Opener", (PyObject *)&OpenerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
