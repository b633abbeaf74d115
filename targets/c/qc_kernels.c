/*
 * qc_kernels.c -- the integer kernel library of qcompile's C backend (see qc_kernels.h).
 *
 * MAC kernels share one scheme, the one CMSIS-NN uses on Cortex-M: the input patch of an output
 * pixel (conv) or a row of the input (linear) is copied once into an int16 column with the zero
 * point already subtracted ("im2col"), then two weight rows are multiplied against two columns
 * at a time, so every weight word and every column word loaded feeds two multiply-accumulates.
 * Accumulators are uint32: the reference defines the sum modulo 2^acc_bits, and unsigned
 * arithmetic wraps without undefined behaviour (SMLAD wraps the same way).
 */
#include "qc_kernels.h"

#include <string.h>

#if QC_DSP && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "QC_DSP assumes a little-endian target (halfword pairs in 32-bit words)"
#endif

size_t qc_type_size(int32_t type)
{
    switch (type) {
    case QC_I8: case QC_U8: return 1;
    case QC_I16: case QC_U16: return 2;
    default: return 4;
    }
}

static inline uint32_t qc_rd32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v); /* one LDR on cores with unaligned access (Armv7-M) */
    return v;
}

/* ---------------------------------------------------------------- DSP primitives */
#if QC_DSP && defined(__ARM_FEATURE_DSP)
static inline uint32_t qc_sxtb16(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1" : "=r"(r) : "r"(x));
    return r;
}
static inline uint32_t qc_sxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline uint32_t qc_uxtb16(uint32_t x)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1" : "=r"(r) : "r"(x));
    return r;
}
static inline uint32_t qc_uxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline uint32_t qc_smlad(uint32_t a, uint32_t b, uint32_t acc)
{
    uint32_t r;
    __asm__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}
/* acc + bottom(a) * bottom(b), acc + top(a) * bottom(b) (signed halfwords) */
static inline uint32_t qc_smlabb(uint32_t a, uint32_t b, uint32_t acc)
{
    uint32_t r;
    __asm__("smlabb %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}
static inline uint32_t qc_smlatb(uint32_t a, uint32_t b, uint32_t acc)
{
    uint32_t r;
    __asm__("smlatb %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}
#elif QC_DSP
/* The same instructions in C, so hosts run (and test) the DSP code path. */
static inline int32_t qc_sext8(uint32_t b) { return (int32_t)(b & 0xffu) - (int32_t)((b & 0x80u) << 1); }
static inline int32_t qc_sext16(uint32_t h) { return (int32_t)(h & 0xffffu) - (int32_t)((h & 0x8000u) << 1); }
static inline uint32_t qc_sxtb16(uint32_t x)
{
    return ((uint32_t)qc_sext8(x) & 0xffffu) | (((uint32_t)qc_sext8(x >> 16) & 0xffffu) << 16);
}
static inline uint32_t qc_sxtb16_ror8(uint32_t x)
{
    return qc_sxtb16((x >> 8) | (x << 24));
}
static inline uint32_t qc_uxtb16(uint32_t x) { return x & 0x00ff00ffu; }
static inline uint32_t qc_uxtb16_ror8(uint32_t x) { return (x >> 8) & 0x00ff00ffu; }
static inline uint32_t qc_smlad(uint32_t a, uint32_t b, uint32_t acc)
{
    return acc + (uint32_t)(qc_sext16(a) * qc_sext16(b))
               + (uint32_t)(qc_sext16(a >> 16) * qc_sext16(b >> 16));
}
static inline uint32_t qc_smlabb(uint32_t a, uint32_t b, uint32_t acc)
{
    return acc + (uint32_t)(qc_sext16(a) * qc_sext16(b));
}
static inline uint32_t qc_smlatb(uint32_t a, uint32_t b, uint32_t acc)
{
    return acc + (uint32_t)(qc_sext16(a >> 16) * qc_sext16(b));
}
#endif

/* ---------------------------------------------------------------- dot products
 * Weight rows are in the reordered layout for the first 4*floor(k/4) elements. */

static void qc_dot_2x2(const int8_t *w0, const int8_t *w1, const int16_t *a, const int16_t *b,
                       int32_t k, uint32_t acc[4])
{
    uint32_t s00 = acc[0], s01 = acc[1], s10 = acc[2], s11 = acc[3];
    int32_t i = 0;
#if QC_DSP
    for (; i + 4 <= k; i += 4) {
        uint32_t wa = qc_rd32(w0 + i), wb = qc_rd32(w1 + i);
        uint32_t a01 = qc_rd32(a + i), a23 = qc_rd32(a + i + 2);
        uint32_t b01 = qc_rd32(b + i), b23 = qc_rd32(b + i + 2);
        uint32_t wa0 = qc_sxtb16(wa), wa1 = qc_sxtb16_ror8(wa);
        uint32_t wb0 = qc_sxtb16(wb), wb1 = qc_sxtb16_ror8(wb);
        s00 = qc_smlad(wa0, a01, s00); s00 = qc_smlad(wa1, a23, s00);
        s01 = qc_smlad(wa0, b01, s01); s01 = qc_smlad(wa1, b23, s01);
        s10 = qc_smlad(wb0, a01, s10); s10 = qc_smlad(wb1, a23, s10);
        s11 = qc_smlad(wb0, b01, s11); s11 = qc_smlad(wb1, b23, s11);
    }
#else
    for (; i + 4 <= k; i += 4) {
        int32_t a0 = a[i], a1 = a[i + 1], a2 = a[i + 2], a3 = a[i + 3];
        int32_t b0 = b[i], b1 = b[i + 1], b2 = b[i + 2], b3 = b[i + 3];
        int32_t x0 = w0[i], x1 = w0[i + 2], x2 = w0[i + 1], x3 = w0[i + 3];
        int32_t y0 = w1[i], y1 = w1[i + 2], y2 = w1[i + 1], y3 = w1[i + 3];
        s00 += (uint32_t)(x0 * a0 + x1 * a1 + x2 * a2 + x3 * a3);
        s01 += (uint32_t)(x0 * b0 + x1 * b1 + x2 * b2 + x3 * b3);
        s10 += (uint32_t)(y0 * a0 + y1 * a1 + y2 * a2 + y3 * a3);
        s11 += (uint32_t)(y0 * b0 + y1 * b1 + y2 * b2 + y3 * b3);
    }
#endif
    for (; i < k; i++) {
        s00 += (uint32_t)(w0[i] * a[i]);
        s01 += (uint32_t)(w0[i] * b[i]);
        s10 += (uint32_t)(w1[i] * a[i]);
        s11 += (uint32_t)(w1[i] * b[i]);
    }
    acc[0] = s00; acc[1] = s01; acc[2] = s10; acc[3] = s11;
}

static void qc_dot_2x1(const int8_t *w0, const int8_t *w1, const int16_t *a, int32_t k,
                       uint32_t acc[2])
{
    uint32_t s0 = acc[0], s1 = acc[1];
    int32_t i = 0;
#if QC_DSP
    for (; i + 4 <= k; i += 4) {
        uint32_t wa = qc_rd32(w0 + i), wb = qc_rd32(w1 + i);
        uint32_t a01 = qc_rd32(a + i), a23 = qc_rd32(a + i + 2);
        s0 = qc_smlad(qc_sxtb16(wa), a01, s0); s0 = qc_smlad(qc_sxtb16_ror8(wa), a23, s0);
        s1 = qc_smlad(qc_sxtb16(wb), a01, s1); s1 = qc_smlad(qc_sxtb16_ror8(wb), a23, s1);
    }
#else
    for (; i + 4 <= k; i += 4) {
        int32_t a0 = a[i], a1 = a[i + 1], a2 = a[i + 2], a3 = a[i + 3];
        s0 += (uint32_t)(w0[i] * a0 + w0[i + 2] * a1 + w0[i + 1] * a2 + w0[i + 3] * a3);
        s1 += (uint32_t)(w1[i] * a0 + w1[i + 2] * a1 + w1[i + 1] * a2 + w1[i + 3] * a3);
    }
#endif
    for (; i < k; i++) {
        s0 += (uint32_t)(w0[i] * a[i]);
        s1 += (uint32_t)(w1[i] * a[i]);
    }
    acc[0] = s0; acc[1] = s1;
}

static uint32_t qc_dot_1x1(const int8_t *w0, const int16_t *a, int32_t k, uint32_t s)
{
    int32_t i = 0;
#if QC_DSP
    for (; i + 4 <= k; i += 4) {
        uint32_t wa = qc_rd32(w0 + i);
        s = qc_smlad(qc_sxtb16(wa), qc_rd32(a + i), s);
        s = qc_smlad(qc_sxtb16_ror8(wa), qc_rd32(a + i + 2), s);
    }
#else
    for (; i + 4 <= k; i += 4)
        s += (uint32_t)(w0[i] * a[i] + w0[i + 2] * a[i + 1] + w0[i + 1] * a[i + 2]
                        + w0[i + 3] * a[i + 3]);
#endif
    for (; i < k; i++)
        s += (uint32_t)(w0[i] * a[i]);
    return s;
}

/* How accumulators become outputs, with every field in a local: the kernels store through
 * char pointers, which may alias anything, so values read through the parameter pointers
 * would be reloaded after every store. */
typedef struct {
    const int32_t *mult, *shift;
    int32_t per_channel, in_zp, out_zp, lo, hi, rounding, active, acc_bits, y_type;
    int32_t fast;                /* qc_out_fast applies (see qc_out_init) */
} qc_out_t;

QC_INLINE qc_out_t qc_out_init(const qc_requant_t *rq, int32_t acc_bits, int32_t y_type)
{
    qc_out_t o;
    o.active = rq != NULL;
    o.mult = rq ? rq->mult : NULL;
    o.shift = rq ? rq->shift : NULL;
    o.per_channel = rq ? rq->channels > 1 : 0;
    o.in_zp = rq ? rq->in_zp : 0;
    o.out_zp = rq ? rq->out_zp : 0;
    o.lo = rq ? rq->lo : INT32_MIN;
    o.hi = rq ? rq->hi : INT32_MAX;
    o.rounding = rq ? rq->rounding : 0;
    o.acc_bits = acc_bits;
    o.y_type = y_type;
    /* The common case gets a requantization with its per-channel constants hoisted: gemmlowp
     * rounding, 32-bit accumulators (no wrap), 8-bit outputs, and no multiplier equal to
     * INT32_MIN (the one input where srdhm saturates instead of following its formula). */
    o.fast = rq != NULL && rq->rounding == QC_ROUND_GEMMLOWP_DOUBLE && acc_bits >= 32
             && (y_type == QC_I8 || y_type == QC_U8);
    if (o.fast) {
        int32_t i, nm = rq->channels > 1 ? rq->channels : 1;
        for (i = 0; i < nm; i++)
            if (rq->mult[i] == INT32_MIN) o.fast = 0;
    }
    return o;
}

/* The per-channel constants of a gemmlowp requantization: x << left, srdhm by mult, then a
 * rounding divide by 2^right, whose remainder mask is precomputed. */
typedef struct {
    int32_t mult, left, right;
    uint32_t mask;
} qc_chan_t;

QC_INLINE qc_chan_t qc_chan(const qc_out_t *o, int32_t ch)
{
    qc_chan_t c;
    int32_t i = o->per_channel ? ch : 0, s = o->shift[i];
    c.mult = o->mult[i];
    c.left = s > 0 ? s : 0;
    c.right = s > 0 ? 0 : -s;
    c.mask = ((uint32_t)1 << c.right) - 1u;
    return c;
}

/* qc_out for a fast qc_out_t: the same value as qc_requant_value's gemmlowp branch (mult is
 * never INT32_MIN here, so srdhm is its formula), clamped, stored as a byte. */
QC_INLINE void qc_out_fast(const qc_out_t *o, uint8_t *y, size_t idx, uint32_t acc,
                           const qc_chan_t *c)
{
    int32_t xs = qc_u2i((acc - (uint32_t)o->in_zp) << c->left);
    int32_t v = (int32_t)(((int64_t)xs * (int64_t)c->mult + ((int64_t)1 << 30)) >> 31);
    uint32_t thr = (c->mask >> 1) + ((uint32_t)v >> 31);
    v = (v >> c->right) + (((uint32_t)v & c->mask) > thr ? 1 : 0);
    v = (v < o->lo ? o->lo : (v > o->hi ? o->hi : v)) + o->out_zp;
    y[idx] = (uint8_t)((uint32_t)v & 0xffu);
}

/* Wrap one accumulator to acc_bits, requantize it with (m, s) (when fused), store it. */
QC_INLINE void qc_out(const qc_out_t *o, void *y, size_t idx, uint32_t acc, int32_t m, int32_t s)
{
    int32_t v = qc_wrap(acc, o->acc_bits);
    if (o->active) {
        v = qc_requant_value(qc_u2i((uint32_t)v - (uint32_t)o->in_zp), m, s, o->rounding);
        v = (v < o->lo ? o->lo : (v > o->hi ? o->hi : v)) + o->out_zp;
    }
    switch (o->y_type) {
    case QC_I8: ((int8_t *)y)[idx] = (int8_t)v; break;
    case QC_U8: ((uint8_t *)y)[idx] = (uint8_t)v; break;
    default: qc_store(y, o->y_type, idx, v); break;
    }
}

QC_INLINE int32_t qc_out_mult(const qc_out_t *o, int32_t ch)
{
    return o->active ? o->mult[o->per_channel ? ch : 0] : 0;
}

QC_INLINE int32_t qc_out_shift(const qc_out_t *o, int32_t ch)
{
    return o->active ? o->shift[o->per_channel ? ch : 0] : 0;
}

/* Multiply weight rows [0, o) against one or two int16 columns; outputs go to
 * y[(ch0 + oc) * ystride + pos] (pos = pa, pb). Inlined twice, with `fast` a constant. */
QC_INLINE void qc_gemm_cols_body(const int8_t *w, int32_t o, int32_t k, const int32_t *bias,
                                 const int16_t *ca, const int16_t *cb, int32_t ch0,
                                 size_t ystride, size_t pa, size_t pb, const qc_out_t *out,
                                 void *y, int fast)
{
    const qc_out_t q = *out;
    uint8_t *yb = (uint8_t *)y;
    int32_t oc = 0;
    for (; oc + 2 <= o; oc += 2) {
        const int8_t *w0 = w + (size_t)oc * k, *w1 = w0 + k;
        int32_t c0 = ch0 + oc, c1 = c0 + 1;
        uint32_t b0 = bias ? (uint32_t)bias[c0] : 0u;
        uint32_t b1 = bias ? (uint32_t)bias[c1] : 0u;
        size_t r0 = (size_t)c0 * ystride, r1 = r0 + ystride;
        if (cb) {
            uint32_t acc[4];
            acc[0] = b0; acc[1] = b0; acc[2] = b1; acc[3] = b1;
            qc_dot_2x2(w0, w1, ca, cb, k, acc);
            if (fast) {
                qc_chan_t k0 = qc_chan(&q, c0), k1 = qc_chan(&q, c1);
                qc_out_fast(&q, yb, r0 + pa, acc[0], &k0);
                qc_out_fast(&q, yb, r0 + pb, acc[1], &k0);
                qc_out_fast(&q, yb, r1 + pa, acc[2], &k1);
                qc_out_fast(&q, yb, r1 + pb, acc[3], &k1);
            } else {
                int32_t m0 = qc_out_mult(&q, c0), s0 = qc_out_shift(&q, c0);
                int32_t m1 = qc_out_mult(&q, c1), s1 = qc_out_shift(&q, c1);
                qc_out(&q, y, r0 + pa, acc[0], m0, s0);
                qc_out(&q, y, r0 + pb, acc[1], m0, s0);
                qc_out(&q, y, r1 + pa, acc[2], m1, s1);
                qc_out(&q, y, r1 + pb, acc[3], m1, s1);
            }
        } else {
            uint32_t acc[2];
            acc[0] = b0; acc[1] = b1;
            qc_dot_2x1(w0, w1, ca, k, acc);
            qc_out(&q, y, r0 + pa, acc[0], qc_out_mult(&q, c0), qc_out_shift(&q, c0));
            qc_out(&q, y, r1 + pa, acc[1], qc_out_mult(&q, c1), qc_out_shift(&q, c1));
        }
    }
    if (oc < o) {
        const int8_t *w0 = w + (size_t)oc * k;
        int32_t c0 = ch0 + oc;
        uint32_t b0 = bias ? (uint32_t)bias[c0] : 0u;
        int32_t m0 = qc_out_mult(&q, c0), s0 = qc_out_shift(&q, c0);
        size_t r0 = (size_t)c0 * ystride;
        qc_out(&q, y, r0 + pa, qc_dot_1x1(w0, ca, k, b0), m0, s0);
        if (cb)
            qc_out(&q, y, r0 + pb, qc_dot_1x1(w0, cb, k, b0), m0, s0);
    }
}

static void qc_gemm_cols(const int8_t *w, int32_t o, int32_t k, const int32_t *bias,
                         const int16_t *ca, const int16_t *cb, int32_t ch0, size_t ystride,
                         size_t pa, size_t pb, const qc_out_t *out, void *y)
{
    if (out->fast)
        qc_gemm_cols_body(w, o, k, bias, ca, cb, ch0, ystride, pa, pb, out, y, 1);
    else
        qc_gemm_cols_body(w, o, k, bias, ca, cb, ch0, ystride, pa, pb, out, y, 0);
}

/* ---------------------------------------------------------------- convolution */

/* The centred input patch of output pixel (oy, ox) for channels [0, cg) of image plane `x`. */
#define QC_IM2COL(T)                                                                           \
    do {                                                                                       \
        const T *xs = (const T *)xv;                                                           \
        int32_t ci, ky, kx, j = 0;                                                             \
        int32_t iy0 = oy * p->sh - p->pad_t, ix0 = ox * p->sw - p->pad_l;                      \
        for (ci = 0; ci < cg; ci++) {                                                          \
            const T *plane = xs + (size_t)ci * hw;                                             \
            for (ky = 0; ky < p->kh; ky++) {                                                   \
                int32_t iy = iy0 + ky * p->dh;                                                 \
                if (iy < 0 || iy >= p->h) {                                                    \
                    for (kx = 0; kx < p->kw; kx++) col[j++] = 0;                               \
                    continue;                                                                  \
                }                                                                              \
                if (ix0 >= 0 && ix0 + (p->kw - 1) * p->dw < p->w) {                            \
                    /* the whole row is inside the image: no bounds checks */                  \
                    const T *row = plane + (size_t)iy * p->w + ix0;                            \
                    if (p->dw == 1)                                                            \
                        for (kx = 0; kx < p->kw; kx++) col[j++] = (int16_t)(row[kx] - zp);     \
                    else                                                                       \
                        for (kx = 0; kx < p->kw; kx++)                                         \
                            col[j++] = (int16_t)(row[kx * p->dw] - zp);                        \
                    continue;                                                                  \
                }                                                                              \
                for (kx = 0; kx < p->kw; kx++) {                                               \
                    int32_t ix = ix0 + kx * p->dw;                                             \
                    col[j++] = (int16_t)((ix < 0 || ix >= p->w)                                \
                                         ? 0 : (int32_t)plane[(size_t)iy * p->w + ix] - zp);   \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    } while (0)

/* A window entirely inside the image: rows copied without bounds checks (3-wide unrolled). */
#define QC_IM2COL_INTERIOR(T)                                                                  \
    do {                                                                                       \
        const T *xs = (const T *)xv + (size_t)iy0 * p->w + ix0;                                \
        int32_t ci, ky, kx;                                                                    \
        size_t rstep = (size_t)p->dh * p->w;                                                   \
        for (ci = 0; ci < cg; ci++) {                                                          \
            const T *row = xs + (size_t)ci * hw;                                               \
            for (ky = 0; ky < p->kh; ky++, row += rstep) {                                     \
                if (p->kw == 3 && p->dw == 1) {                                                \
                    col[0] = (int16_t)(row[0] - zp);                                           \
                    col[1] = (int16_t)(row[1] - zp);                                           \
                    col[2] = (int16_t)(row[2] - zp);                                           \
                    col += 3;                                                                  \
                } else {                                                                       \
                    for (kx = 0; kx < p->kw; kx++) *col++ = (int16_t)(row[kx * p->dw] - zp);   \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    } while (0)

static void qc_im2col(const qc_conv_t *p, const void *xv, int32_t cg, size_t hw, int32_t pix,
                      int16_t *col)
{
    int32_t oy = pix / p->ow, ox = pix - (pix / p->ow) * p->ow;
    int32_t zp = p->in_zp;
    int32_t iy0 = oy * p->sh - p->pad_t, ix0 = ox * p->sw - p->pad_l;
    if (iy0 >= 0 && ix0 >= 0 && iy0 + (p->kh - 1) * p->dh < p->h
        && ix0 + (p->kw - 1) * p->dw < p->w) {
        if (p->x_type == QC_U8)
            QC_IM2COL_INTERIOR(uint8_t);
        else
            QC_IM2COL_INTERIOR(int8_t);
        return;
    }
    if (p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->pad_t == 0 && p->pad_l == 0
        && p->oh == p->h && p->ow == p->w) {
        /* 1x1 fast path: the column is one pixel across channels */
        int32_t ci;
        if (p->x_type == QC_U8) {
            const uint8_t *xs = (const uint8_t *)xv + pix;
            for (ci = 0; ci < cg; ci++) col[ci] = (int16_t)((int32_t)xs[(size_t)ci * hw] - zp);
        } else {
            const int8_t *xs = (const int8_t *)xv + pix;
            for (ci = 0; ci < cg; ci++) col[ci] = (int16_t)((int32_t)xs[(size_t)ci * hw] - zp);
        }
        return;
    }
    if (p->x_type == QC_U8)
        QC_IM2COL(uint8_t);
    else
        QC_IM2COL(int8_t);
}

/* Depthwise: every output channel reads one input channel; no column buffer. Windows inside
 * the image (most of them) take sum(x w) - zp sum(w), with a 3x3 fast path; border windows
 * are clipped to the image, so no loop checks bounds per tap. The parameters are copied to
 * locals (stores through char pointers would force reloads). */
#define QC_DW_CLIPPED(T)                                                                       \
    do {                                                                                       \
        int32_t ix0 = ox * sw - pad_l, kx0 = 0, kx1 = kw, ky, kx, s = 0;                       \
        while (kx0 < kx1 && ix0 + kx0 * dw < 0) kx0++;                                         \
        while (kx1 > kx0 && ix0 + (kx1 - 1) * dw >= wd) kx1--;                                 \
        for (ky = ky0; ky < ky1; ky++) {                                                       \
            const T *row = plane + (size_t)(iy0 + ky * dh) * wd + ix0;                         \
            const int8_t *wr = wk + ky * kw;                                                   \
            for (kx = kx0; kx < kx1; kx++)                                                     \
                s += ((int32_t)row[kx * dw] - zp) * wr[kx];                                    \
        }                                                                                      \
        qc_out(&q, y, ybase + (size_t)oy * ow + ox, b + (uint32_t)s, m, sft);                  \
    } while (0)

/* Four interior outputs of a stride-1 3x3 window per iteration (DSP). Per kernel row, the
 * words at r and r + 2 hold inputs x0..x5; XT (SXTB16/UXTB16) splits them into the pairs
 * (x0,x2), (x1,x3), (x2,x4), (x3,x5), each multiplied by (w0,w2) with one SMLAD; the middle
 * tap w1 is added with SMLABB/SMLATB. Sums are of raw codes: zp * sum(w) is taken off after. */
#if QC_DSP
#define QC_DW3_QUAD(T, XT, XT8)                                                                \
    do {                                                                                       \
        if (!k3 || sw != 1) break;                                                             \
        for (; ox + 4 <= ox_hi; ox += 4) {                                                     \
            const T *r = plane + (size_t)iy0 * wd + (ox - pad_l);                              \
            uint32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, u, v, a, bq, cq, dq;                      \
            int32_t ky;                                                                        \
            size_t yi = ybase + (size_t)oy * ow + ox;                                          \
            for (ky = 0; ky < 3; ky++, r += wd) {                                              \
                u = qc_rd32(r); v = qc_rd32(r + 2);                                            \
                a = XT(u); bq = XT8(u); cq = XT(v); dq = XT8(v);                               \
                s0 = qc_smlad(a, w02[ky], s0); s0 = qc_smlabb(bq, w1p[ky], s0);                \
                s1 = qc_smlad(bq, w02[ky], s1); s1 = qc_smlatb(a, w1p[ky], s1);                \
                s2 = qc_smlad(cq, w02[ky], s2); s2 = qc_smlatb(bq, w1p[ky], s2);               \
                s3 = qc_smlad(dq, w02[ky], s3); s3 = qc_smlatb(cq, w1p[ky], s3);               \
            }                                                                                  \
            s0 = b + s0 - (uint32_t)zp_wsum; s1 = b + s1 - (uint32_t)zp_wsum;                  \
            s2 = b + s2 - (uint32_t)zp_wsum; s3 = b + s3 - (uint32_t)zp_wsum;                  \
            if (q.fast) {                                                                      \
                qc_out_fast(&q, (uint8_t *)y, yi, s0, &kc);                                    \
                qc_out_fast(&q, (uint8_t *)y, yi + 1, s1, &kc);                                \
                qc_out_fast(&q, (uint8_t *)y, yi + 2, s2, &kc);                                \
                qc_out_fast(&q, (uint8_t *)y, yi + 3, s3, &kc);                                \
            } else {                                                                           \
                qc_out(&q, y, yi, s0, m, sft);                                                 \
                qc_out(&q, y, yi + 1, s1, m, sft);                                             \
                qc_out(&q, y, yi + 2, s2, m, sft);                                             \
                qc_out(&q, y, yi + 3, s3, m, sft);                                             \
            }                                                                                  \
        }                                                                                      \
    } while (0)
#else
#define QC_DW3_QUAD(T, XT, XT8) do { } while (0)
#endif

#define QC_DEPTHWISE(T, XT, XT8)                                                                      \
    do {                                                                                       \
        const T *plane = (const T *)xv + ((size_t)n * c + oc / mult) * hw;                     \
        int32_t oy, ox;                                                                        \
        for (oy = 0; oy < oh; oy++) {                                                          \
            int32_t iy0 = oy * sh - pad_t, ky0 = 0, ky1 = kh;                                  \
            while (ky0 < ky1 && iy0 + ky0 * dh < 0) ky0++;                                     \
            while (ky1 > ky0 && iy0 + (ky1 - 1) * dh >= h) ky1--;                              \
            if (ky0 != 0 || ky1 != kh) {                                                       \
                for (ox = 0; ox < ow; ox++) QC_DW_CLIPPED(T);                                  \
                continue;                                                                      \
            }                                                                                  \
            for (ox = 0; ox < ox_lo; ox++) QC_DW_CLIPPED(T);                                   \
            QC_DW3_QUAD(T, XT, XT8);                                                           \
            for (; ox < ox_hi; ox++) {                                                         \
                const T *r0 = plane + (size_t)iy0 * wd + (ox * sw - pad_l);                    \
                int32_t s = 0, ky, kx;                                                         \
                if (k3) {                                                                      \
                    const T *r1 = r0 + wd, *r2 = r1 + wd;                                      \
                    s = r0[0] * wk[0] + r0[1] * wk[1] + r0[2] * wk[2]                          \
                      + r1[0] * wk[3] + r1[1] * wk[4] + r1[2] * wk[5]                          \
                      + r2[0] * wk[6] + r2[1] * wk[7] + r2[2] * wk[8];                         \
                } else {                                                                       \
                    for (ky = 0; ky < kh; ky++, r0 += (size_t)dh * wd)                         \
                        for (kx = 0; kx < kw; kx++) s += r0[kx * dw] * wk[ky * kw + kx];       \
                }                                                                              \
                qc_out(&q, y, ybase + (size_t)oy * ow + ox, b + (uint32_t)(s - zp_wsum), m,    \
                       sft);                                                                   \
            }                                                                                  \
            for (; ox < ow; ox++) QC_DW_CLIPPED(T);                                            \
        }                                                                                      \
    } while (0)

static void qc_conv_depthwise(const qc_conv_t *p, const void *xv, const int8_t *w,
                              const int32_t *bias, const qc_out_t *out, void *y)
{
    const qc_out_t q = *out;
    const int32_t c = p->c, h = p->h, wd = p->w, o = p->o, oh = p->oh, ow = p->ow;
    const int32_t kh = p->kh, kw = p->kw, sh = p->sh, sw = p->sw, dh = p->dh, dw = p->dw;
    const int32_t pad_t = p->pad_t, pad_l = p->pad_l, zp = p->in_zp, nn = p->n;
    const int32_t x_u8 = p->x_type == QC_U8;
    const int32_t k3 = kh == 3 && kw == 3 && dh == 1 && dw == 1;
    size_t hw = (size_t)h * wd;
    int32_t mult = o / c, k = kh * kw, n, oc, ox_lo = 0, ox_hi = ow, i;
    /* output columns [ox_lo, ox_hi) have their whole window inside the image */
    while (ox_lo < ow && ox_lo * sw - pad_l < 0) ox_lo++;
    while (ox_hi > ox_lo && (ox_hi - 1) * sw - pad_l + (kw - 1) * dw >= wd) ox_hi--;
    for (n = 0; n < nn; n++) {
        for (oc = 0; oc < o; oc++) {
            const int8_t *wk = w + (size_t)oc * k;
            uint32_t b = bias ? (uint32_t)bias[oc] : 0u;
            int32_t m = qc_out_mult(&q, oc), sft = qc_out_shift(&q, oc), zp_wsum = 0;
            for (i = 0; i < k; i++) zp_wsum += zp * wk[i];
            size_t ybase = ((size_t)n * o + oc) * oh * ow;
#if QC_DSP
            /* per kernel row: (w0, w2) as a halfword pair, w1 in the bottom halfword */
            uint32_t w02[3] = {0, 0, 0}, w1p[3] = {0, 0, 0};
            qc_chan_t kc;
            if (k3)
                for (i = 0; i < 3; i++) {
                    w02[i] = ((uint32_t)(int32_t)wk[3 * i] & 0xffffu)
                             | ((uint32_t)(int32_t)wk[3 * i + 2] << 16);
                    w1p[i] = (uint32_t)(int32_t)wk[3 * i + 1] & 0xffffu;
                }
            if (q.fast)
                kc = qc_chan(&q, oc);
            else
                kc.mult = kc.left = kc.right = 0, kc.mask = 0;
            if (x_u8)
                QC_DEPTHWISE(uint8_t, qc_uxtb16, qc_uxtb16_ror8);
            else
                QC_DEPTHWISE(int8_t, qc_sxtb16, qc_sxtb16_ror8);
#else
            if (x_u8)
                QC_DEPTHWISE(uint8_t, , );
            else
                QC_DEPTHWISE(int8_t, , );
#endif
        }
    }
}

int qc_conv2d(const qc_conv_t *p, const void *x, const int8_t *w, const int32_t *bias,
              const qc_requant_t *rq, void *y, int16_t *scratch)
{
    int32_t cg = p->c / p->groups, og = p->o / p->groups, k = cg * p->kh * p->kw;
    int32_t npix = p->oh * p->ow, n, g, pix;
    size_t hw = (size_t)p->h * p->w;
    int16_t *ca = scratch, *cb = scratch + k;
    qc_out_t out = qc_out_init(rq, p->acc_bits, p->y_type);
    if (cg == 1 && p->groups > 1) {
        qc_conv_depthwise(p, x, w, bias, &out, y);
        return 0;
    }
    for (n = 0; n < p->n; n++) {
        for (g = 0; g < p->groups; g++) {
            const uint8_t *xg = (const uint8_t *)x + ((size_t)n * p->c + (size_t)g * cg) * hw;
            const int8_t *wg = w + (size_t)g * og * k;
            size_t ybase = (size_t)n * p->o * npix;
            for (pix = 0; pix < npix; pix += 2) {
                int two = pix + 1 < npix;
                qc_im2col(p, xg, cg, hw, pix, ca);
                if (two)
                    qc_im2col(p, xg, cg, hw, pix + 1, cb);
                qc_gemm_cols(wg, og, k, bias, ca, two ? cb : NULL, g * og, (size_t)npix,
                             ybase + pix, ybase + pix + 1, &out, y);
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- linear, matmul */

static void qc_centre_row(const void *x, int32_t x_type, size_t off, int32_t k, int32_t zp,
                          int16_t *col)
{
    int32_t i;
    if (x_type == QC_U8) {
        const uint8_t *r = (const uint8_t *)x + off;
        for (i = 0; i < k; i++) col[i] = (int16_t)((int32_t)r[i] - zp);
    } else {
        const int8_t *r = (const int8_t *)x + off;
        for (i = 0; i < k; i++) col[i] = (int16_t)((int32_t)r[i] - zp);
    }
}

int qc_linear(int32_t rows, int32_t k, int32_t o, const void *x, int32_t x_type, int32_t x_zp,
              const int8_t *w, const int32_t *bias, int32_t acc_bits, const qc_requant_t *rq,
              void *y, int32_t y_type, int16_t *scratch)
{
    int16_t *ca = scratch, *cb = scratch + k;
    qc_out_t out = qc_out_init(rq, acc_bits, y_type);
    int32_t r;
    for (r = 0; r < rows; r += 2) {
        int two = r + 1 < rows;
        qc_centre_row(x, x_type, (size_t)r * k, k, x_zp, ca);
        if (two)
            qc_centre_row(x, x_type, (size_t)(r + 1) * k, k, x_zp, cb);
        /* output (row, oc) lives at row * o + oc: channel stride 1, position stride o */
        qc_gemm_cols(w, o, k, bias, ca, two ? cb : NULL, 0, 1, (size_t)r * o,
                     (size_t)(r + 1) * o, &out, y);
    }
    return 0;
}

int qc_matmul(int32_t batch, int32_t m, int32_t k, int32_t n, const void *a, int32_t a_type,
              int32_t a_zp, const void *b, int32_t b_type, int32_t b_zp, int32_t b_batch_stride,
              int32_t acc_bits, const qc_requant_t *rq, void *y, int32_t y_type)
{
    int32_t bi, i, j, t;
    qc_out_t out = qc_out_init(rq, acc_bits, y_type);
    for (bi = 0; bi < batch; bi++) {
        size_t ao = (size_t)bi * m * k, bo = (size_t)bi * b_batch_stride, yo = (size_t)bi * m * n;
        for (i = 0; i < m; i++) {
            for (j = 0; j < n; j++) {
                uint32_t acc = 0;
                for (t = 0; t < k; t++) {
                    int32_t av = qc_load(a, a_type, ao + (size_t)i * k + t) - a_zp;
                    int32_t bv = qc_load(b, b_type, bo + (size_t)t * n + j) - b_zp;
                    acc += (uint32_t)(av * bv);
                }
                qc_out(&out, y, yo + (size_t)i * n + j, acc, qc_out_mult(&out, j),
                       qc_out_shift(&out, j));
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- requantize, lut */

int qc_requantize(int32_t outer, int32_t channels, int32_t inner, const void *x, int32_t x_type,
                  const qc_requant_t *rq, void *y, int32_t y_type)
{
    /* forward order, one element at a time: safe in place when y's elements are no wider */
    int32_t o, c, i;
    size_t idx = 0;
    for (o = 0; o < outer; o++)
        for (c = 0; c < channels; c++)
            for (i = 0; i < inner; i++, idx++)
                qc_store(y, y_type, idx, qc_requant_apply(rq, qc_load(x, x_type, idx), c));
    return 0;
}

int qc_lut(size_t n, const void *x, int32_t x_type, int32_t qmin, const void *table,
           int32_t y_type, void *y)
{
    size_t i;
    for (i = 0; i < n; i++)
        qc_store(y, y_type, i, qc_load(table, y_type, (size_t)(qc_load(x, x_type, i) - qmin)));
    return 0;
}

/* ---------------------------------------------------------------- pooling */

/* Max pooling; windows are clipped to the image (padding never wins). 8-bit tensors get a
 * typed loop, wider ones go through qc_load/qc_store. */
#define QC_MAXPOOL(T)                                                                          \
    do {                                                                                       \
        const T *xs = (const T *)x + base;                                                     \
        T *ys = (T *)y;                                                                        \
        for (oy = 0; oy < p->oh; oy++) {                                                       \
            int32_t iy0 = oy * p->sh - p->pad_t, ky0 = 0, ky1 = p->kh;                         \
            while (ky0 < ky1 && iy0 + ky0 * p->dh < 0) ky0++;                                  \
            while (ky1 > ky0 && iy0 + (ky1 - 1) * p->dh >= p->h) ky1--;                        \
            for (ox = 0; ox < p->ow; ox++, out++) {                                            \
                int32_t ix0 = ox * p->sw - p->pad_l, kx0 = 0, kx1 = p->kw;                     \
                T best;                                                                        \
                while (kx0 < kx1 && ix0 + kx0 * p->dw < 0) kx0++;                              \
                while (kx1 > kx0 && ix0 + (kx1 - 1) * p->dw >= p->w) kx1--;                    \
                best = xs[(size_t)(iy0 + ky0 * p->dh) * p->w + ix0 + kx0 * p->dw];             \
                for (ky = ky0; ky < ky1; ky++) {                                               \
                    const T *row = xs + (size_t)(iy0 + ky * p->dh) * p->w + ix0;               \
                    for (kx = kx0; kx < kx1; kx++)                                             \
                        if (row[kx * p->dw] > best) best = row[kx * p->dw];                    \
                }                                                                              \
                ys[out] = best;                                                                \
            }                                                                                  \
        }                                                                                      \
    } while (0)

int qc_max_pool2d(const qc_pool_t *p, const void *x, void *y)
{
    int32_t n, c, oy, ox, ky, kx;
    size_t hw = (size_t)p->h * p->w, out = 0;
    for (n = 0; n < p->n; n++)
        for (c = 0; c < p->c; c++) {
            size_t base = ((size_t)n * p->c + c) * hw;
            if (p->type == QC_I8) {
                QC_MAXPOOL(int8_t);
                continue;
            }
            if (p->type == QC_U8) {
                QC_MAXPOOL(uint8_t);
                continue;
            }
            for (oy = 0; oy < p->oh; oy++)
                for (ox = 0; ox < p->ow; ox++, out++) {
                    int32_t best = INT32_MIN, seen = 0;
                    for (ky = 0; ky < p->kh; ky++) {
                        int32_t iy = oy * p->sh - p->pad_t + ky * p->dh;
                        if (iy < 0 || iy >= p->h) continue;
                        for (kx = 0; kx < p->kw; kx++) {
                            int32_t ix = ox * p->sw - p->pad_l + kx * p->dw, v;
                            if (ix < 0 || ix >= p->w) continue;
                            v = qc_load(x, p->type, base + (size_t)iy * p->w + ix);
                            if (!seen || v > best) best = v;
                            seen = 1;
                        }
                    }
                    qc_store(y, p->type, out, best);
                }
        }
    return 0;
}

/* ---------------------------------------------------------------- data movement */

int qc_fill(size_t n, int32_t type, int32_t v, void *y)
{
    size_t i;
    if (qc_type_size(type) == 1) {
        memset(y, (int)(v & 0xff), n);
        return 0;
    }
    for (i = 0; i < n; i++) qc_store(y, type, i, v);
    return 0;
}

static inline void qc_copy_elem(void *dst, const void *src, size_t elem)
{
    switch (elem) {
    case 1: *(uint8_t *)dst = *(const uint8_t *)src; break;
    case 2: memcpy(dst, src, 2); break;
    default: memcpy(dst, src, 4); break;
    }
}

/* Walk the index space of `shape` in row-major order, keeping the strided offset. */
static void qc_strided(int32_t rank, const int32_t *shape, const int32_t *stride, int32_t offset,
                       size_t elem, const uint8_t *x, uint8_t *y, int scatter)
{
    int32_t idx[QC_MAX_RANK] = {0};
    size_t total = 1, i;
    int32_t d, off = offset;
    for (d = 0; d < rank; d++) total *= (size_t)shape[d];
    for (i = 0; i < total; i++) {
        if (scatter)
            qc_copy_elem(y + (size_t)off * elem, x + i * elem, elem);
        else
            qc_copy_elem(y + i * elem, x + (size_t)off * elem, elem);
        for (d = rank - 1; d >= 0; d--) {
            idx[d]++;
            off += stride[d];
            if (idx[d] < shape[d]) break;
            off -= stride[d] * shape[d];
            idx[d] = 0;
        }
    }
}

int qc_gather_strided(int32_t rank, const int32_t *shape, const int32_t *stride, int32_t offset,
                      size_t elem, const void *x, void *y)
{
    qc_strided(rank, shape, stride, offset, elem, (const uint8_t *)x, (uint8_t *)y, 0);
    return 0;
}

int qc_scatter_strided(int32_t rank, const int32_t *shape, const int32_t *stride, int32_t offset,
                       size_t elem, const void *x, void *y)
{
    qc_strided(rank, shape, stride, offset, elem, (const uint8_t *)x, (uint8_t *)y, 1);
    return 0;
}

/* ---------------------------------------------------------------- element-wise */

/* Visit the broadcast index space; call `fn` with the operand offsets of each output element. */
#define QC_BROADCAST_LOOP(p, BODY)                                                             \
    do {                                                                                       \
        int32_t idx_[QC_MAX_RANK] = {0};                                                       \
        size_t total_ = 1, i_;                                                                 \
        int32_t d_, ao = 0, bo = 0;                                                            \
        for (d_ = 0; d_ < (p)->rank; d_++) total_ *= (size_t)(p)->shape[d_];                   \
        for (i_ = 0; i_ < total_; i_++) {                                                      \
            BODY;                                                                              \
            for (d_ = (p)->rank - 1; d_ >= 0; d_--) {                                          \
                idx_[d_]++;                                                                    \
                ao += (p)->a_stride[d_];                                                       \
                bo += (p)->b_stride[d_];                                                       \
                if (idx_[d_] < (p)->shape[d_]) break;                                          \
                ao -= (p)->a_stride[d_] * (p)->shape[d_];                                      \
                bo -= (p)->b_stride[d_] * (p)->shape[d_];                                      \
                idx_[d_] = 0;                                                                  \
            }                                                                                  \
        }                                                                                      \
    } while (0)

static inline int32_t qc_finish(int32_t v, int32_t zp, int32_t lo, int32_t hi)
{
    int64_t y = (int64_t)v + zp;
    return y < lo ? lo : (y > hi ? hi : (int32_t)y);
}

int qc_add(const qc_binary_t *p, const void *a, const void *b, void *y)
{
    QC_BROADCAST_LOOP(p, {
        uint32_t ca = (uint32_t)(qc_load(a, p->a_type, (size_t)ao) - p->a_zp) << p->left_shift;
        uint32_t cb = (uint32_t)(qc_load(b, p->b_type, (size_t)bo) - p->b_zp) << p->left_shift;
        int32_t sa = qc_requant_value(qc_u2i(ca), p->a_mult, p->a_shift, p->rounding);
        int32_t sb = qc_requant_value(qc_u2i(cb), p->b_mult, p->b_shift, p->rounding);
        int32_t raw = qc_u2i(p->sub ? (uint32_t)sa - (uint32_t)sb : (uint32_t)sa + (uint32_t)sb);
        int32_t v = qc_requant_value(raw, p->out_mult, p->out_shift, p->rounding);
        qc_store(y, p->y_type, i_, qc_finish(v, p->y_zp, p->clamp_min, p->clamp_max));
    });
    return 0;
}

int qc_mul(const qc_binary_t *p, const void *a, const void *b, void *y)
{
    QC_BROADCAST_LOOP(p, {
        int32_t ca = qc_load(a, p->a_type, (size_t)ao) - p->a_zp;
        int32_t cb = qc_load(b, p->b_type, (size_t)bo) - p->b_zp;
        int32_t v = qc_requant_value(ca * cb, p->out_mult, p->out_shift, p->rounding);
        qc_store(y, p->y_type, i_, qc_finish(v, p->y_zp, p->clamp_min, p->clamp_max));
    });
    return 0;
}

int qc_prelu(const qc_prelu_t *p, const void *x, void *y)
{
    int32_t o, c, i;
    size_t idx = 0;
    for (o = 0; o < p->outer; o++)
        for (c = 0; c < p->channels; c++) {
            int32_t s = p->slope[p->slope_channels > 1 ? c : 0];
            int32_t nc = p->channels > 1 && p->neg_mult != NULL ? c : 0;
            for (i = 0; i < p->inner; i++, idx++) {
                int32_t xc = qc_load(x, p->x_type, idx) - p->x_zp, v;
                if (xc >= 0)
                    v = qc_requant_value(xc, p->pos_mult, p->pos_shift, p->rounding);
                else
                    v = qc_requant_value(xc * s, p->neg_mult[nc], p->neg_shift[nc], p->rounding);
                qc_store(y, p->y_type, idx, qc_finish(v, p->y_zp, p->clamp_min, p->clamp_max));
            }
        }
    return 0;
}

/* Average pooling, TFLite's integer recipe: sum of codes (declared padding holds zp when it
 * counts), divided by the count rounding half away from zero. */
int qc_avg_pool2d(const qc_pool_t *p, const void *x, void *y)
{
    int32_t n, c, oy, ox, iy, ix;
    size_t hw = (size_t)p->h * p->w, out = 0;
    for (n = 0; n < p->n; n++)
        for (c = 0; c < p->c; c++) {
            size_t base = ((size_t)n * p->c + c) * hw;
            for (oy = 0; oy < p->oh; oy++) {
                int32_t y0 = oy * p->sh - p->pad_t;
                int32_t y1 = y0 + p->kh < p->h + p->pad_b ? y0 + p->kh : p->h + p->pad_b;
                int32_t ry0 = y0 > 0 ? y0 : 0, ry1 = y1 < p->h ? y1 : p->h;
                for (ox = 0; ox < p->ow; ox++, out++) {
                    int32_t x0 = ox * p->sw - p->pad_l;
                    int32_t x1 = x0 + p->kw < p->w + p->pad_r ? x0 + p->kw : p->w + p->pad_r;
                    int32_t rx0 = x0 > 0 ? x0 : 0, rx1 = x1 < p->w ? x1 : p->w;
                    int32_t real = (ry1 - ry0) * (rx1 - rx0), count, sum = 0, avg;
                    for (iy = ry0; iy < ry1; iy++)
                        for (ix = rx0; ix < rx1; ix++)
                            sum += qc_load(x, p->type, base + (size_t)iy * p->w + ix);
                    if (p->count_include_pad) {
                        count = (y1 - y0) * (x1 - x0);
                        sum += p->zp * (count - real);
                    } else {
                        count = real;
                    }
                    avg = sum >= 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
                    qc_store(y, p->type, out, qc_clamp(avg, p->qmin, p->qmax));
                }
            }
        }
    return 0;
}

/* ---------------------------------------------------------------- softmax */

/* i-exp of element i (relative to the slice maximum), an integer below 2^31. */
static uint32_t qc_iexp(const qc_softmax_t *p, int32_t d)
{
    int32_t t = qc_requant_value(d, p->in_mult, p->in_shift, p->rounding); /* <= 0 */
    uint32_t u = (uint32_t)(-(int64_t)t);
    uint32_t pw = u >> p->frac_bits;
    int32_t r = -(int32_t)(u & (((uint32_t)1 << p->frac_bits) - 1u));
    int32_t b = r + p->exp_b;                      /* > 0: exp_b > 2^frac_bits */
    uint32_t z = (uint32_t)b * (uint32_t)b + (uint32_t)p->exp_c;
    return z >> (pw > 31u ? 31u : pw);
}

int qc_softmax(const qc_softmax_t *p, const void *x, void *y)
{
    int32_t o, i, j;
    for (o = 0; o < p->outer; o++)
        for (j = 0; j < p->inner; j++) {
            size_t base = (size_t)o * p->n * p->inner + j;
            int32_t mx = qc_load(x, p->x_type, base);
            uint64_t total = 0;
            for (i = 1; i < p->n; i++) {
                int32_t v = qc_load(x, p->x_type, base + (size_t)i * p->inner);
                if (v > mx) mx = v;
            }
            for (i = 0; i < p->n; i++)
                total += qc_iexp(p, qc_load(x, p->x_type, base + (size_t)i * p->inner) - mx);
            for (i = 0; i < p->n; i++) {
                size_t idx = base + (size_t)i * p->inner;
                uint64_t e = qc_iexp(p, qc_load(x, p->x_type, idx) - mx);
                /* e 2^k / total rounded half up; int64 because e 2^(k+1) exceeds 32 bits */
                int64_t q = (int64_t)((e * ((uint64_t)2 << p->out_frac_bits) + total)
                                      / (2u * total));
                int64_t v = q + p->y_zp;
                qc_store(y, p->y_type, idx, (int32_t)(v < p->qmin ? p->qmin
                                                      : (v > p->qmax ? p->qmax : v)));
            }
        }
    return 0;
}
