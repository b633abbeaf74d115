/*
 * qc_kernels.h -- the integer kernel library of qcompile's C backend.
 *
 * Freestanding C99: no heap, no floating point, no library calls beyond memcpy/memset.
 * Every kernel reproduces qcompile's integer semantics (docs/integer-semantics.md) bit for
 * bit; the requantization helpers below are the C form of qcompile.quant.intmath.
 *
 * Layout is NCHW, as in the IR. Activations are 8-bit (int8_t or uint8_t, with a zero point);
 * accumulators int32. Weights of conv/linear are stored *centred* (w - zero_point, int8) and,
 * along the reduction dimension, in groups of four reordered as (w0, w2, w1, w3): one 32-bit
 * load then unpacks with SXTB16 into the halfword pairs (w0, w1) and (w2, w3) that SMLAD
 * multiplies against two int16 activations. The portable path reads the same layout.
 *
 * Build options (preprocessor):
 *   QC_DSP=1   use the Armv7E-M DSP instructions (SMLAD, SXTB16); on a compiler without
 *              __ARM_FEATURE_DSP they are emulated in C, which is how hosts test that path.
 *              Results are identical with and without.
 *
 * Implementation-defined behaviour relied on (true of gcc, clang, armcc, IAR): `>>` of a
 * negative signed integer is an arithmetic shift.
 */
#ifndef QC_KERNELS_H
#define QC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef QC_DSP
#define QC_DSP 0
#endif

/* Element storage types of tensors (graph dtypes of 2..8 bits live in int8_t/uint8_t). */
enum { QC_I8 = 0, QC_U8 = 1, QC_I16 = 2, QC_U16 = 3, QC_I32 = 4 };

/* Requantization rounding modes (intmath.REQUANT_ROUNDINGS, plus the power-of-two path). */
enum {
    QC_ROUND_GEMMLOWP_DOUBLE = 0,
    QC_ROUND_SINGLE_HALF_UP = 1,
    QC_ROUND_SINGLE_HALF_AWAY = 2,
    QC_ROUND_SHIFT_ONLY = 3
};

/* y = clamp(requantize(x - in_zp, mult, shift, rounding) + out_zp, clamp_min, clamp_max),
 * with (mult, shift) per channel (channels > 1) or per tensor. The clamp is applied before the
 * zero point is added, as clamp(v, lo, hi) + out_zp with lo = clamp_min - out_zp and
 * hi = clamp_max - out_zp limited to int32 (the same result, in 32-bit arithmetic). */
typedef struct {
    const int32_t *mult;
    const int32_t *shift;
    int32_t channels;
    int32_t in_zp;
    int32_t out_zp;
    int32_t lo;
    int32_t hi;
    int32_t rounding;
} qc_requant_t;

#if defined(__GNUC__)
#define QC_INLINE static inline __attribute__((always_inline))
#else
#define QC_INLINE static inline
#endif

/* 2-D convolution over one NCHW image batch. Weights: O x K, K = (C / groups) * kh * kw,
 * centred and reordered (see the top of this file). */
typedef struct {
    int32_t n, c, h, w;          /* input */
    int32_t o, oh, ow;           /* output channels and size */
    int32_t kh, kw, sh, sw, dh, dw, pad_t, pad_l;
    int32_t groups;
    int32_t in_zp;
    int32_t acc_bits;            /* accumulators wrap to this many bits (two's complement) */
    int32_t x_type, y_type;
} qc_conv_t;

/* ---------------------------------------------------------------- fixed-point primitives */

/* Two's complement reinterpretation of a uint32 without implementation-defined conversion. */
static inline int32_t qc_u2i(uint32_t u)
{
    return u <= 0x7fffffffu ? (int32_t)u : -(int32_t)(~u) - 1;
}

/* The low `bits` bits of `acc`, sign-extended: the accumulator wrapped to its declared width. */
static inline int32_t qc_wrap(uint32_t acc, int32_t bits)
{
    uint32_t m;
    if (bits >= 32)
        return qc_u2i(acc);
    m = (uint32_t)1 << (bits - 1);
    acc &= ((uint32_t)1 << bits) - 1u;
    return qc_u2i((acc ^ m) - m);
}

/* SaturatingRoundingDoublingHighMul (intmath.srdhm): floor(a b / 2^31 + 1/2). The reference's
 * trunc((a b + nudge) / 2^31), nudge = 2^30 or 1 - 2^30 by the sign of a b, is the same
 * number; the single-shift form compiles to a few instructions on a 32-bit core. */
QC_INLINE int32_t qc_srdhm(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN)
        return INT32_MAX;
    return (int32_t)(((int64_t)a * (int64_t)b + ((int64_t)1 << 30)) >> 31);
}

/* RoundingDivideByPOT: x / 2^e rounded half away from zero, e in [0, 31] (intmath.rdbpot). */
QC_INLINE int32_t qc_rdbpot(int32_t x, int32_t e)
{
    uint32_t mask = ((uint32_t)1 << e) - 1u;
    uint32_t rem = (uint32_t)x & mask;
    uint32_t thr = (mask >> 1) + (x < 0 ? 1u : 0u);
    return (x >> e) + (rem > thr ? 1 : 0);
}

/* acc * mult * 2^(shift - 31) rounded to an int32 (intmath.requantize / shift_requantize).
 * Cases where the reference raises (a result outside int32) wrap here. */
QC_INLINE int32_t qc_requant_value(int32_t x, int32_t mult, int32_t shift, int32_t rounding)
{
    if (rounding == QC_ROUND_GEMMLOWP_DOUBLE) {
        int32_t left = shift > 0 ? shift : 0;
        int32_t right = shift > 0 ? 0 : -shift;
        int32_t xs = qc_u2i((uint32_t)x << left);
        return qc_rdbpot(qc_srdhm(xs, mult), right);
    }
    if (rounding == QC_ROUND_SHIFT_ONLY) {
        if (shift >= 0)
            return qc_u2i((uint32_t)x << shift);
        return qc_rdbpot(x, -shift);
    }
    {
        int32_t n = shift > 30 ? 1 : 31 - shift;        /* in [1, 62]; shift > 30 is refused upstream */
        int64_t prod = (int64_t)x * (int64_t)mult;
        int64_t half = (int64_t)1 << (n - 1);
        int64_t off = (rounding == QC_ROUND_SINGLE_HALF_AWAY && prod < 0) ? half - 1 : half;
        return (int32_t)((prod + off) >> n);
    }
}

static inline int32_t qc_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* The full requantize step for channel `ch`: clamp(requant(x - in_zp) + out_zp). */
QC_INLINE int32_t qc_requant_apply(const qc_requant_t *rq, int32_t x, int32_t ch)
{
    int32_t i = rq->channels > 1 ? ch : 0;
    int32_t v = qc_requant_value(qc_u2i((uint32_t)x - (uint32_t)rq->in_zp), rq->mult[i],
                                 rq->shift[i], rq->rounding);
    return (v < rq->lo ? rq->lo : (v > rq->hi ? rq->hi : v)) + rq->out_zp;
}

/* Element access by storage type. */
static inline int32_t qc_load(const void *p, int32_t type, size_t i)
{
    switch (type) {
    case QC_I8: return ((const int8_t *)p)[i];
    case QC_U8: return ((const uint8_t *)p)[i];
    case QC_I16: return ((const int16_t *)p)[i];
    case QC_U16: return ((const uint16_t *)p)[i];
    default: return ((const int32_t *)p)[i];
    }
}

static inline void qc_store(void *p, int32_t type, size_t i, int32_t v)
{
    switch (type) {
    case QC_I8: ((int8_t *)p)[i] = (int8_t)v; break;
    case QC_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    case QC_I16: ((int16_t *)p)[i] = (int16_t)v; break;
    case QC_U16: ((uint16_t *)p)[i] = (uint16_t)v; break;
    default: ((int32_t *)p)[i] = v; break;
    }
}

size_t qc_type_size(int32_t type);

/* ---------------------------------------------------------------- kernels
 * Every kernel returns 0. The out-of-place kernels never read their output. */

/* Scratch int16 elements qc_conv2d needs (the two im2col columns). */
#define QC_CONV_SCRATCH(cg, kh, kw) (2 * (cg) * (kh) * (kw))

/* qconv2d; with `rq` the accumulators are requantized on the fly (qconv2d + requantize fused),
 * else stored as int32. `bias` may be NULL. */
int qc_conv2d(const qc_conv_t *p, const void *x, const int8_t *w, const int32_t *bias,
              const qc_requant_t *rq, void *y, int16_t *scratch);

/* qlinear: x (rows, k) times centred weights (o, k) transposed, plus bias. */
int qc_linear(int32_t rows, int32_t k, int32_t o, const void *x, int32_t x_type, int32_t x_zp,
              const int8_t *w, const int32_t *bias, int32_t acc_bits, const qc_requant_t *rq,
              void *y, int32_t y_type, int16_t *scratch);

/* qmatmul: batch x (m, k) @ (k, n); b_batch_stride 0 broadcasts b. */
int qc_matmul(int32_t batch, int32_t m, int32_t k, int32_t n, const void *a, int32_t a_type,
              int32_t a_zp, const void *b, int32_t b_type, int32_t b_zp, int32_t b_batch_stride,
              int32_t acc_bits, const qc_requant_t *rq, void *y, int32_t y_type);

/* requantize over a tensor seen as (outer, channels, inner); channel = middle index. */
int qc_requantize(int32_t outer, int32_t channels, int32_t inner, const void *x, int32_t x_type,
                  const qc_requant_t *rq, void *y, int32_t y_type);

/* Element-wise binary ops on two tensors broadcast to the output shape: operand element i of
 * the output is at offset sum(idx_d * stride_d) (stride 0 broadcasts). Rank <= QC_MAX_RANK. */
#define QC_MAX_RANK 6
typedef struct {
    int32_t rank;
    int32_t shape[QC_MAX_RANK];
    int32_t a_stride[QC_MAX_RANK];
    int32_t b_stride[QC_MAX_RANK];
    int32_t a_type, b_type, y_type;
    int32_t a_zp, b_zp, y_zp;
    int32_t a_mult, a_shift, b_mult, b_shift, out_mult, out_shift, left_shift;
    int32_t rounding, clamp_min, clamp_max;
    int32_t sub;                 /* qadd: 0, qsub: 1 */
} qc_binary_t;

int qc_add(const qc_binary_t *p, const void *a, const void *b, void *y);
int qc_mul(const qc_binary_t *p, const void *a, const void *b, void *y);

/* qprelu over (outer, channels, inner): xc >= 0 uses (pos_mult, pos_shift); else
 * xc * slope[c] (centred slope codes) uses (neg_mult[c], neg_shift[c]). */
typedef struct {
    int32_t outer, channels, inner;
    int32_t x_type, y_type, x_zp, y_zp;
    int32_t pos_mult, pos_shift;
    const int32_t *neg_mult;
    const int32_t *neg_shift;
    const int32_t *slope;
    int32_t slope_channels;      /* 1 (shared) or `channels` */
    int32_t rounding, clamp_min, clamp_max;
} qc_prelu_t;

int qc_prelu(const qc_prelu_t *p, const void *x, void *y);

typedef struct {
    int32_t n, c, h, w, oh, ow;
    int32_t kh, kw, sh, sw, dh, dw, pad_t, pad_l, pad_b, pad_r;
    int32_t type;
    int32_t count_include_pad;   /* avg pool: declared padding counts (holding zp) */
    int32_t zp;                  /* avg pool: the input zero point */
    int32_t qmin, qmax;          /* avg pool: output saturation */
} qc_pool_t;

int qc_max_pool2d(const qc_pool_t *p, const void *x, void *y);
int qc_avg_pool2d(const qc_pool_t *p, const void *x, void *y);

/* I-BERT integer softmax along the middle axis of (outer, n, inner) (qsoftmax): i-exp of
 * q - max on the grid ln2 / 2^frac_bits, normalised to the output grid 2^-out_frac_bits. */
typedef struct {
    int32_t outer, n, inner;
    int32_t x_type, y_type, y_zp, qmin, qmax;
    int32_t in_mult, in_shift, frac_bits, exp_b, exp_c, out_frac_bits, rounding;
} qc_softmax_t;

int qc_softmax(const qc_softmax_t *p, const void *x, void *y);

/* y[i] = table[x[i] - qmin] */
int qc_lut(size_t n, const void *x, int32_t x_type, int32_t qmin, const void *table,
           int32_t y_type, void *y);

/* y[i] = x[offset + sum_d idx_d(i) * stride_d] over an output of `shape` (transpose, slice,
 * expand: strides in elements, negative allowed). */
int qc_gather_strided(int32_t rank, const int32_t *shape, const int32_t *stride, int32_t offset,
                      size_t elem, const void *x, void *y);

/* y[offset + sum_d idx_d(i) * stride_d] = x[i] (pad, concat). */
int qc_scatter_strided(int32_t rank, const int32_t *shape, const int32_t *stride, int32_t offset,
                       size_t elem, const void *x, void *y);

/* Fill n elements of `type` with v. */
int qc_fill(size_t n, int32_t type, int32_t v, void *y);

#ifdef __cplusplus
}
#endif
#endif /* QC_KERNELS_H */
