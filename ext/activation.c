/* Activations: bias + activation forward, activation backward, the dense
 * forward (a GEMM with bias + activation in its epilogue) and the bias gradient. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "fastnn.h"
#include "simd_clones.h"

/* Below this many element-operations a parallel region costs more than it
 * saves. Transcendental activations weigh more per element. */
#define PAR_MIN_WORK 32768
#define EXP_COST 8
/* Columns whose float64 sums (8 KiB) column_block keeps at once: whole rows
 * of a 1024-wide layer, so it streams through dz row by row (64-column blocks
 * walked down 4 KiB-strided rows ran at half the speed). */
#define BIAS_GRAD_BLOCK 1024
/* A thread's share of the columns starts on a cache line (16 floats). */
#define COLUMN_ALIGN 16

/* ---- vectorisable float32 exp, tanh, sigmoid ---------------------------
 * libm's expf/tanhf are scalar calls that stop GCC vectorising a loop, which
 * made activations cost more than the GEMM next to them. These are plain
 * arithmetic and selects, so loops over them vectorise with SSE2 already.
 * Accuracy, checked against float64 over every float32 input: exp 1.3 ulp,
 * tanh 2.4 ulp, sigmoid 2.9 ulp. NaN propagates. */

static inline float float_from_bits(int32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* exp(x) for x <= 88.72 (above, it saturates near FLT_MAX instead of inf). */
static inline float exp_f(float x)
{
    /* exp(x) = 2^k * exp(r), k = round(x / ln 2), |r| <= ln(2) / 2. */
    /* Below -150 ln 2 the result rounds to 0, which -104 still gives. */
    float xc = x > 88.7228317f ? 88.7228317f : x;
    xc = xc < -104.0f ? -104.0f : xc;
    /* Adding and subtracting 1.5 * 2^23 rounds to the nearest integer. */
    const float shifter = 12582912.0f;
    float kf = (xc * 1.44269502f + shifter) - shifter;
    kf = kf == kf ? kf : 0.0f; /* NaN: keep the int conversion defined */
    /* ln 2 split in two (Cody-Waite): kf * LN2_HI is exact. */
    float r = xc - kf * 0.693145751953125f;
    r = r - kf * 1.42860654e-06f;
    /* Taylor series to r^7: truncation below 1e-8 relative for |r| <= 0.35. */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^k in two factors so that k = 128 and subnormal results both work. */
    const int32_t k = (int32_t)kf;
    const int32_t k1 = k / 2, k2 = k - k1;
    return p * float_from_bits((k1 + 127) << 23) * float_from_bits((k2 + 127) << 23);
}

static inline float tanh_f(float x)
{
    const float ax = fabsf(x);
    /* |x| < 0.5: tanh(x) = x + x^3 P(x^2), P a least-squares fit (error
     * below 4e-10 relative); above, (1 - e) / (1 + e) with e = exp(-2|x|)
     * has no cancellation. */
    const float u = ax * ax;
    float p = -6.645598449e-03f;
    p = p * u + 2.129667625e-02f;
    p = p * u + -5.389886349e-02f;
    p = p * u + 1.333296150e-01f;
    p = p * u + -3.333332539e-01f;
    const float small = ax + ax * u * p;
    const float e = exp_f(-2.0f * ax);
    const float big = (1.0f - e) / (1.0f + e);
    return copysignf(ax < 0.5f ? small : big, x);
}

static inline float sigmoid_f(float z)
{
    /* Never exponentiate a positive number: e = exp(-|z|) <= 1. */
    const float e = exp_f(-fabsf(z));
    const float inv = 1.0f / (1.0f + e);
    return z >= 0.0f ? inv : e * inv;
}

/* The array loops below are compiled per instruction set (simd_clones.h). */
SIMD_CLONES
void fnn_vexpf(int64_t n, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = exp_f(x[i]);
}

/* Lanes of a row's max and sum in fnn_softmax_rows: lane l reduces elements
 * l, l + 8, ... and the lanes combine in a fixed order, so the loops vectorise
 * (a single running double sum is a chain of dependent adds, ~9 cycles per
 * element on 1000-wide rows) and every clone gives the same bits. */
#define SOFTMAX_LANES 8
/* Rows whose exps fnn_softmax_rows takes in one vectorised pass: a 10-class
 * row alone is shorter than a vector and fell to the scalar tail of the loop. */
#define SOFTMAX_BLOCK 32

static inline float row_max(int64_t cols, const float *z)
{
    float lane[SOFTMAX_LANES];
    for (int l = 0; l < SOFTMAX_LANES; l++)
        lane[l] = z[0];
    int64_t c = 0;
    for (; c + SOFTMAX_LANES <= cols; c += SOFTMAX_LANES)
        for (int l = 0; l < SOFTMAX_LANES; l++)
            lane[l] = z[c + l] > lane[l] ? z[c + l] : lane[l];
    for (int l = 0; c + l < cols; l++)
        lane[l] = z[c + l] > lane[l] ? z[c + l] : lane[l];
    float m = lane[0];
    for (int l = 1; l < SOFTMAX_LANES; l++)
        m = lane[l] > m ? lane[l] : m;
    return m;
}

static inline double row_sum(int64_t cols, const float *p)
{
    double lane[SOFTMAX_LANES] = {0.0};
    int64_t c = 0;
    for (; c + SOFTMAX_LANES <= cols; c += SOFTMAX_LANES)
        for (int l = 0; l < SOFTMAX_LANES; l++)
            lane[l] += (double)p[c + l];
    for (int l = 0; c + l < cols; l++)
        lane[l] += (double)p[c + l];
    for (int half = SOFTMAX_LANES / 2; half > 0; half /= 2)
        for (int l = 0; l < half; l++)
            lane[l] += lane[l + half];
    return lane[0];
}

SIMD_CLONES
void fnn_softmax_rows(int64_t rows, int64_t cols, const float *z, float *p,
                      double *lse)
{
    if (cols <= 0)
        return;
    float zmax[SOFTMAX_BLOCK];
    for (int64_t r0 = 0; r0 < rows; r0 += SOFTMAX_BLOCK) {
        const int64_t nb = rows - r0 < SOFTMAX_BLOCK ? rows - r0 : SOFTMAX_BLOCK;
        const float *zb = z + r0 * cols;
        float *pb = p + r0 * cols;
        for (int64_t i = 0; i < nb; i++) {
            /* read before p's row is written: p may be z */
            zmax[i] = row_max(cols, zb + i * cols);
            for (int64_t c = 0; c < cols; c++)
                pb[i * cols + c] = zb[i * cols + c] - zmax[i];
        }
        for (int64_t k = 0; k < nb * cols; k++)
            pb[k] = exp_f(pb[k]);
        for (int64_t i = 0; i < nb; i++) {
            float *pr = pb + i * cols;
            const double sum = row_sum(cols, pr);
            const float inv = (float)(1.0 / sum);
            for (int64_t c = 0; c < cols; c++)
                pr[c] *= inv;
            if (lse != NULL)
                lse[r0 + i] = (double)zmax[i] + log(sum);
        }
    }
}

SIMD_CLONES
void fnn_vtanhf(int64_t n, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = tanh_f(x[i]);
}

SIMD_CLONES
void fnn_vsigmoidf(int64_t n, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = sigmoid_f(x[i]);
}

static inline int64_t act_cost(int act)
{
    return (act == FNN_ACT_SIGMOID || act == FNN_ACT_TANH) ? EXP_COST : 1;
}

static inline int use_parallel(int nt, int64_t rows, int64_t work)
{
    return nt > 1 && rows > 1 && work > PAR_MIN_WORK;
}

/* One row of y = act(x + bias). x and y may be the same row. */
static inline void bias_act_row(int act, int64_t cols, const float *x,
                                const float *bias, float *y)
{
    if (bias != NULL) {
        for (int64_t c = 0; c < cols; c++)
            y[c] = x[c] + bias[c];
    } else if (y != x) {
        for (int64_t c = 0; c < cols; c++)
            y[c] = x[c];
    }
    switch (act) {
    case FNN_ACT_RELU:
        /* "z < 0" rather than "z > 0" so that NaN propagates. */
        for (int64_t c = 0; c < cols; c++)
            y[c] = y[c] < 0.0f ? 0.0f : y[c];
        break;
    case FNN_ACT_SIGMOID:
        fnn_vsigmoidf(cols, y, y);
        break;
    case FNN_ACT_TANH:
        fnn_vtanhf(cols, y, y);
        break;
    default: /* FNN_ACT_LINEAR */
        break;
    }
}

/* y = softmax(x + bias) over each row, in blocks of rows (fnn_softmax_rows). */
static void bias_softmax_fwd(int64_t rows, int64_t cols, const float *x,
                             const float *bias, float *y)
{
    const int64_t nblocks = (rows + SOFTMAX_BLOCK - 1) / SOFTMAX_BLOCK;
    const int nt = fnn_get_num_threads();
    const int par = use_parallel(nt, nblocks, rows * cols * EXP_COST);
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t r0 = b * SOFTMAX_BLOCK;
        const int64_t nb = rows - r0 < SOFTMAX_BLOCK ? rows - r0 : SOFTMAX_BLOCK;
        for (int64_t r = r0; r < r0 + nb; r++)
            bias_act_row(FNN_ACT_LINEAR, cols, x + r * cols, bias, y + r * cols);
        fnn_softmax_rows(nb, cols, y + r0 * cols, y + r0 * cols, NULL);
    }
}

/* Rows [0, rows) of y = act(x + bias), rows ldx and ldy apart. A cloned
 * function around the inline row: the OpenMP loops that call it are compiled
 * for the baseline instruction set (SSE2), four lanes where AVX-512 has 16. */
SIMD_CLONES
static void bias_act_rows(int act, int64_t rows, int64_t cols, const float *x,
                          int64_t ldx, const float *bias, float *y, int64_t ldy)
{
    for (int64_t r = 0; r < rows; r++)
        bias_act_row(act, cols, x + r * ldx, bias, y + r * ldy);
}

void fnn_bias_act_fwd(int act, int64_t rows, int64_t cols, const float *x,
                      const float *bias, float *y)
{
    if (act == FNN_ACT_SOFTMAX) {
        bias_softmax_fwd(rows, cols, x, bias, y);
        return;
    }
    const int nt = fnn_get_num_threads();
    const int par = use_parallel(nt, rows, rows * cols * act_cost(act));
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t r = 0; r < rows; r++)
        bias_act_rows(act, 1, cols, x + r * cols, cols, bias, y + r * cols, cols);
}

/* One row of dx = dy * act'(.), written through the forward output y. */
static inline void act_bwd_row(int act, int64_t cols, const float *y,
                               const float *dy, float *dx)
{
    switch (act) {
    case FNN_ACT_RELU:
        /* dy is read unconditionally so the select is branch-free and the
         * loop vectorises; a branch on the sign of y mispredicts about half
         * the time on ReLU outputs (3-5x slower on LeNet's conv1 gradient). */
        for (int64_t c = 0; c < cols; c++) {
            const float g = dy[c];
            dx[c] = y[c] > 0.0f ? g : 0.0f;
        }
        break;
    case FNN_ACT_SIGMOID:
        for (int64_t c = 0; c < cols; c++)
            dx[c] = dy[c] * y[c] * (1.0f - y[c]);
        break;
    case FNN_ACT_TANH:
        for (int64_t c = 0; c < cols; c++)
            dx[c] = dy[c] * (1.0f - y[c] * y[c]);
        break;
    case FNN_ACT_SOFTMAX: {
        /* Jacobian-vector product: dx_j = y_j * (dy_j - sum_k dy_k y_k).
         * The dot is finished before dx is written, so dx may alias dy. */
        double dot = 0.0;
        for (int64_t c = 0; c < cols; c++)
            dot += (double)dy[c] * (double)y[c];
        const float d = (float)dot;
        for (int64_t c = 0; c < cols; c++)
            dx[c] = y[c] * (dy[c] - d);
        break;
    }
    default: /* FNN_ACT_LINEAR */
        if (dx != dy) {
            for (int64_t c = 0; c < cols; c++)
                dx[c] = dy[c];
        }
        break;
    }
}

/* Rows [0, rows) of dx = dy * act'(y), contiguous; cloned as bias_act_rows. */
SIMD_CLONES
static void act_bwd_rows(int act, int64_t rows, int64_t cols, const float *y,
                         const float *dy, float *dx)
{
    for (int64_t r = 0; r < rows; r++)
        act_bwd_row(act, cols, y + r * cols, dy + r * cols, dx + r * cols);
}

void fnn_act_bwd(int act, int64_t rows, int64_t cols, const float *y,
                 const float *dy, float *dx)
{
    const int nt = fnn_get_num_threads();
    const int par = use_parallel(nt, rows, rows * cols);
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t r = 0; r < rows; r++)
        act_bwd_rows(act, 1, cols, y + r * cols, dy + r * cols, dx + r * cols);
}

void fnn_bias_act_tile(int act, int64_t rows, int64_t cols, const float *bias,
                       float *c, int64_t ldc)
{
    bias_act_rows(act, rows, cols, c, ldc, bias, c, ldc);
}

void fnn_dense_fwd(int act, int64_t M, int64_t N, int64_t K, const float *x,
                   const float *w, const float *bias, float *y)
{
    const int64_t lda = K > 0 ? K : 1, ld = N > 0 ? N : 1;
    if (act == FNN_ACT_SOFTMAX) {
        /* Softmax needs whole rows, which a GEMM tile does not hold. */
        fnn_sgemm_bias_act(0, 0, M, N, K, 1.0f, x, lda, w, ld, 0.0f, y, ld, bias,
                           FNN_ACT_LINEAR);
        fnn_bias_act_fwd(act, M, N, y, NULL, y);
    } else {
        fnn_sgemm_bias_act(0, 0, M, N, K, 1.0f, x, lda, w, ld, 0.0f, y, ld, bias,
                           act);
    }
}

/* db[c0:c0+w] = column sums of dz over all rows, where dz = dy * act'(y) is
 * first written row segment by row segment (dz != NULL; act elementwise) or is
 * dy itself (dz == NULL). Each column is summed top row to bottom row in
 * double, and a row segment is summed while it is still in L1. Cloned: the
 * float-to-double adds run 8 wide with AVX-512, 2 wide in the baseline. */
SIMD_CLONES
static void column_block(int act, int64_t rows, int64_t cols, int64_t c0, int64_t w,
                         const float *y, const float *dy, float *dz, float *db)
{
    double acc[BIAS_GRAD_BLOCK];
    for (int64_t c = 0; c < w; c++)
        acc[c] = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t off = r * cols + c0;
        const float *seg = dy + off;
        if (dz != NULL) {
            act_bwd_row(act, w, y + off, dy + off, dz + off);
            seg = dz + off;
        }
        for (int64_t c = 0; c < w; c++)
            acc[c] += (double)seg[c];
    }
    for (int64_t c = 0; c < w; c++)
        db[c0 + c] = (float)acc[c];
}

/* Column sums (column_block), the columns cut into one contiguous share per
 * thread. Each column is summed by one thread in row order, so the result is
 * the same however the columns are shared out. */
static void column_sums(int act, int64_t rows, int64_t cols, const float *y,
                        const float *dy, float *dz, float *db)
{
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && cols >= 2 * COLUMN_ALIGN && rows * cols > PAR_MIN_WORK;
    const int64_t parts = par ? nt : 1;
    const int64_t lines = (cols + COLUMN_ALIGN - 1) / COLUMN_ALIGN;
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t t = 0; t < parts; t++) {
        const int64_t c0 = lines * t / parts * COLUMN_ALIGN;
        int64_t c1 = lines * (t + 1) / parts * COLUMN_ALIGN;
        c1 = c1 < cols ? c1 : cols;
        for (int64_t c = c0; c < c1; c += BIAS_GRAD_BLOCK) {
            const int64_t w = c1 - c < BIAS_GRAD_BLOCK ? c1 - c : BIAS_GRAD_BLOCK;
            column_block(act, rows, cols, c, w, y, dy, dz, db);
        }
    }
}

void fnn_act_bias_bwd(int act, int64_t rows, int64_t cols, const float *y,
                      const float *dy, float *dz, float *db)
{
    if (db == NULL || act == FNN_ACT_SOFTMAX) {
        /* Softmax's backward needs whole rows; the column blocks do not. */
        fnn_act_bwd(act, rows, cols, y, dy, dz);
        if (db != NULL)
            fnn_bias_grad(rows, cols, dz, db);
        return;
    }
    column_sums(act, rows, cols, y, dy, dz, db);
}

void fnn_bias_grad(int64_t rows, int64_t cols, const float *dz, float *db)
{
    column_sums(FNN_ACT_LINEAR, rows, cols, NULL, dz, NULL, db);
}
