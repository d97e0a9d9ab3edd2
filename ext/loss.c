/* Losses: each returns the mean over rows of the per-sample loss and writes
 * d(mean loss)/d(input) in the same pass over the data.
 *
 * Per-row losses are summed in float64 over fixed chunks of rows whose size
 * depends only on the row count, and the chunk sums are added in chunk order:
 * the returned value is the same for any thread count.
 */
#include <math.h>
#include <stddef.h>

#include "fastnn.h"

#define PAR_MIN_WORK 32768
/* At most this many row chunks, so their partial sums live on the stack. */
#define MAX_CHUNKS 256
/* Keras clips probabilities to [eps, 1 - eps] with its backend epsilon 1e-7,
 * both bounds rounded to float32 as Keras applies them to float32 tensors
 * (so 1 - eps is 0.99999988). */
#define PROB_EPS ((double)1e-7f)
#define PROB_HI ((double)(1.0f - 1e-7f))

struct loss_args {
    int64_t rows, cols;
    const float *x;          /* logits, probabilities or predictions */
    const float *t;          /* float targets (NULL for label losses) */
    const int32_t *labels;   /* integer targets (NULL for float targets) */
    float *probs;            /* activated predictions ("_logits" losses) */
    float *grad;
    double gscale;           /* d(mean loss)/d(row loss) factor */
    const double *lse;       /* softmax losses: log-sum-exp of row r at [r - lse_r0] */
    int64_t lse_r0;
};

typedef double (*row_loss_fn)(const struct loss_args *a, int64_t r);
/* Sum of the losses of rows [r0, r1), added in row order. */
typedef double (*chunk_loss_fn)(const struct loss_args *a, row_loss_fn fn,
                                int64_t r0, int64_t r1);

/* Sum over all rows of chunk_fn's chunk sums, in an order independent of the
 * thread count: chunks of at least min_chunk rows, their size a function of
 * the row count only, added in chunk order. */
static double sum_chunks(const struct loss_args *a, chunk_loss_fn chunk_fn,
                         row_loss_fn fn, int64_t min_chunk, int64_t cost_per_row)
{
    const int64_t rows = a->rows;
    if (rows <= 0)
        return 0.0;
    int64_t chunk = (rows + MAX_CHUNKS - 1) / MAX_CHUNKS;
    chunk = chunk < min_chunk ? min_chunk : chunk;
    const int64_t nchunks = (rows + chunk - 1) / chunk;
    double partial[MAX_CHUNKS];
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && nchunks > 1 && rows * cost_per_row > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t k = 0; k < nchunks; k++) {
        const int64_t r0 = k * chunk;
        const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
        partial[k] = chunk_fn(a, fn, r0, r1);
    }
    double total = 0.0;
    for (int64_t k = 0; k < nchunks; k++)
        total += partial[k];
    return total;
}

static double rows_in_order(const struct loss_args *a, row_loss_fn fn,
                            int64_t r0, int64_t r1)
{
    double s = 0.0;
    for (int64_t r = r0; r < r1; r++)
        s += fn(a, r);
    return s;
}

/* Sum of fn(a, r) over rows in a thread-count independent order. */
static double sum_rows(const struct loss_args *a, row_loss_fn fn, int64_t cost_per_row)
{
    return sum_chunks(a, rows_in_order, fn, 1, cost_per_row);
}

/* Rows whose softmax fnn_softmax_rows takes at once in the softmax losses. */
#define SOFTMAX_LOSS_ROWS 32

/* The softmax losses' row functions read the row's probabilities from
 * a->probs and its log-sum-exp from a->lse, both filled for them here, a
 * block of rows at a time (one vectorised exp pass per block). */
static double softmax_rows_in_order(const struct loss_args *a, row_loss_fn fn,
                                    int64_t r0, int64_t r1)
{
    double lse[SOFTMAX_LOSS_ROWS];
    struct loss_args block = *a;
    double s = 0.0;
    for (int64_t b = r0; b < r1; b += SOFTMAX_LOSS_ROWS) {
        const int64_t nb = r1 - b < SOFTMAX_LOSS_ROWS ? r1 - b : SOFTMAX_LOSS_ROWS;
        fnn_softmax_rows(nb, a->cols, a->x + b * a->cols, a->probs + b * a->cols, lse);
        block.lse = lse;
        block.lse_r0 = b;
        for (int64_t r = b; r < b + nb; r++)
            s += fn(&block, r);
    }
    return s;
}

static double sum_softmax_rows(const struct loss_args *a, row_loss_fn fn,
                               int64_t cost_per_row)
{
    return sum_chunks(a, softmax_rows_in_order, fn, SOFTMAX_LOSS_ROWS, cost_per_row);
}

static double softmax_cce_row(const struct loss_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *z = a->x + r * cols;
    const float *t = a->t + r * cols;
    const float *p = a->probs + r * cols;
    float *g = a->grad + r * cols;
    const double lse = a->lse[r - a->lse_r0];
    double loss = 0.0, tsum = 0.0;
    for (int64_t c = 0; c < cols; c++) {
        /* -t*log(softmax) = t*(lse - z): no log of a rounded probability. */
        loss += (double)t[c] * (lse - (double)z[c]);
        tsum += t[c];
    }
    /* d/dz_j of -sum_i t_i log p_i is p_j * sum(t) - t_j. */
    for (int64_t c = 0; c < cols; c++)
        g[c] = (float)(((double)p[c] * tsum - (double)t[c]) * a->gscale);
    return loss;
}

double fnn_softmax_cce_logits(int64_t rows, int64_t cols, const float *logits,
                              const float *target, float *probs, float *grad)
{
    if (rows <= 0)
        return 0.0;
    struct loss_args a = {rows, cols, logits, target, NULL, probs, grad,
                          1.0 / (double)rows, NULL, 0};
    return sum_softmax_rows(&a, softmax_cce_row, cols * 12) / (double)rows;
}

static double softmax_sparse_cce_row(const struct loss_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *z = a->x + r * cols;
    const int32_t y = a->labels[r];
    const float *p = a->probs + r * cols;
    float *g = a->grad + r * cols;
    const double lse = a->lse[r - a->lse_r0];
    for (int64_t c = 0; c < cols; c++)
        g[c] = (float)((double)p[c] * a->gscale);
    g[y] = (float)(((double)p[y] - 1.0) * a->gscale);
    return lse - (double)z[y];
}

double fnn_softmax_sparse_cce_logits(int64_t rows, int64_t cols,
                                     const float *logits, const int32_t *labels,
                                     float *probs, float *grad)
{
    if (rows <= 0)
        return 0.0;
    struct loss_args a = {rows, cols, logits, NULL, labels, probs, grad,
                          1.0 / (double)rows, NULL, 0};
    return sum_softmax_rows(&a, softmax_sparse_cce_row, cols * 10) / (double)rows;
}

/* clip(q, eps, 1 - eps); *inside = 0 where the clip is active (its gradient
 * is zero there). NaN counts as inside so that it propagates. */
static inline double clip_prob(double q, int *inside)
{
    if (q < PROB_EPS) {
        *inside = 0;
        return PROB_EPS;
    }
    if (q > PROB_HI) {
        *inside = 0;
        return PROB_HI;
    }
    *inside = 1;
    return q;
}

/* Keras from-probabilities CCE: q = p / sum(p), c = clip(q), loss =
 * -sum t log c. With g_i = dL/dq_i = -t_i / c_i (0 where clipped), the
 * normalisation's Jacobian dq_i/dp_j = (delta_ij - q_i) / s gives
 * dL/dp_j = (g_j - sum_i g_i q_i) / s. */
static double cce_probs_row(const struct loss_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *p = a->x + r * cols;
    const float *t = a->t + r * cols;
    float *g = a->grad + r * cols;
    double s = 0.0;
    for (int64_t c = 0; c < cols; c++)
        s += p[c];
    const double inv_s = 1.0 / s;
    double loss = 0.0, dot = 0.0;
    for (int64_t c = 0; c < cols; c++) {
        int inside;
        const double q = (double)p[c] * inv_s;
        const double cl = clip_prob(q, &inside);
        loss -= (double)t[c] * log(cl);
        if (inside)
            dot += -(double)t[c] / cl * q;
    }
    for (int64_t c = 0; c < cols; c++) {
        int inside;
        const double q = (double)p[c] * inv_s;
        const double cl = clip_prob(q, &inside);
        const double gq = inside ? -(double)t[c] / cl : 0.0;
        g[c] = (float)((gq - dot) * inv_s * a->gscale);
    }
    return loss;
}

double fnn_cce_probs(int64_t rows, int64_t cols, const float *probs,
                     const float *target, float *grad)
{
    if (rows <= 0)
        return 0.0;
    struct loss_args a = {rows, cols, probs, target, NULL, NULL, grad, 1.0 / (double)rows};
    return sum_rows(&a, cce_probs_row, cols * 8) / (double)rows;
}

/* As cce_probs_row with a one-hot target: only the label's term is nonzero. */
static double sparse_cce_probs_row(const struct loss_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *p = a->x + r * cols;
    const int32_t y = a->labels[r];
    float *g = a->grad + r * cols;
    double s = 0.0;
    for (int64_t c = 0; c < cols; c++)
        s += p[c];
    const double inv_s = 1.0 / s;
    int inside;
    const double q = (double)p[y] * inv_s;
    const double cl = clip_prob(q, &inside);
    const double gy = inside ? -1.0 / cl : 0.0;
    const double dot = gy * q;
    const double k = inv_s * a->gscale;
    for (int64_t c = 0; c < cols; c++)
        g[c] = (float)(-dot * k);
    g[y] = (float)((gy - dot) * k);
    return -log(cl);
}

double fnn_sparse_cce_probs(int64_t rows, int64_t cols, const float *probs,
                            const int32_t *labels, float *grad)
{
    if (rows <= 0)
        return 0.0;
    struct loss_args a = {rows, cols, probs, NULL, labels, NULL, grad, 1.0 / (double)rows};
    return sum_rows(&a, sparse_cce_probs_row, cols * 3) / (double)rows;
}

/* loss(z, t) = max(z, 0) - z t + log(1 + exp(-|z|)): the softplus form, finite
 * for any finite z; its derivative is sigmoid(z) - t. */
static double sigmoid_bce_row(const struct loss_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *z = a->x + r * cols;
    const float *t = a->t + r * cols;
    float *p = a->probs + r * cols;
    float *g = a->grad + r * cols;
    double loss = 0.0;
    for (int64_t c = 0; c < cols; c++) {
        const double zc = z[c], tc = t[c];
        const double e = exp(-fabs(zc));
        const double sig = zc >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        loss += (zc > 0.0 ? zc : 0.0) - zc * tc + log1p(e);
        p[c] = (float)sig;
        g[c] = (float)((sig - tc) * a->gscale);
    }
    return loss / (double)cols;
}

double fnn_sigmoid_bce_logits(int64_t rows, int64_t cols, const float *logits,
                              const float *target, float *probs, float *grad)
{
    if (rows <= 0)
        return 0.0;
    struct loss_args a = {rows, cols, logits, target, NULL, probs, grad,
                          1.0 / ((double)rows * (double)cols)};
    return sum_rows(&a, sigmoid_bce_row, cols * 16) / (double)rows;
}

/* Keras 3 from-probabilities BCE: c = clip(p, eps, 1 - eps), loss =
 * -(t log c + (1 - t) log(1 - c)); zero gradient where the clip is active. */
static double bce_probs_row(const struct loss_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *p = a->x + r * cols;
    const float *t = a->t + r * cols;
    float *g = a->grad + r * cols;
    double loss = 0.0;
    for (int64_t c = 0; c < cols; c++) {
        int inside;
        const double cl = clip_prob((double)p[c], &inside);
        const double tc = t[c];
        loss -= tc * log(cl) + (1.0 - tc) * log(1.0 - cl);
        g[c] = inside ? (float)((-tc / cl + (1.0 - tc) / (1.0 - cl)) * a->gscale) : 0.0f;
    }
    return loss / (double)cols;
}

double fnn_bce_probs(int64_t rows, int64_t cols, const float *probs,
                     const float *target, float *grad)
{
    if (rows <= 0)
        return 0.0;
    struct loss_args a = {rows, cols, probs, target, NULL, NULL, grad,
                          1.0 / ((double)rows * (double)cols)};
    return sum_rows(&a, bce_probs_row, cols * 16) / (double)rows;
}

static double mse_row(const struct loss_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *p = a->x + r * cols;
    const float *t = a->t + r * cols;
    float *g = a->grad + r * cols;
    const double k = 2.0 * a->gscale;
    double loss = 0.0;
    for (int64_t c = 0; c < cols; c++) {
        const double d = (double)p[c] - (double)t[c];
        loss += d * d;
        g[c] = (float)(d * k);
    }
    return loss / (double)cols;
}

double fnn_mse(int64_t rows, int64_t cols, const float *pred,
               const float *target, float *grad)
{
    if (rows <= 0)
        return 0.0;
    struct loss_args a = {rows, cols, pred, target, NULL, NULL, grad,
                          1.0 / ((double)rows * (double)cols)};
    return sum_rows(&a, mse_row, cols * 2) / (double)rows;
}

static double mae_row(const struct loss_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *p = a->x + r * cols;
    const float *t = a->t + r * cols;
    float *g = a->grad + r * cols;
    const double k = a->gscale;
    double loss = 0.0;
    for (int64_t c = 0; c < cols; c++) {
        const double d = (double)p[c] - (double)t[c];
        loss += fabs(d);
        /* sign(d), with sign(0) = 0 and NaN kept. */
        const double sg = d > 0.0 ? 1.0 : (d < 0.0 ? -1.0 : d);
        g[c] = (float)(sg * k);
    }
    return loss / (double)cols;
}

double fnn_mae(int64_t rows, int64_t cols, const float *pred,
               const float *target, float *grad)
{
    if (rows <= 0)
        return 0.0;
    struct loss_args a = {rows, cols, pred, target, NULL, NULL, grad,
                          1.0 / ((double)rows * (double)cols)};
    return sum_rows(&a, mae_row, cols * 2) / (double)rows;
}
