/* Metrics: each returns the SUM over rows of the per-sample metric, so that
 * callers can accumulate over batches of any size and divide once.
 *
 * Summation order is fixed (chunks of rows sized by the row count alone,
 * chunk sums added in order): the result does not depend on thread count. */
#include <math.h>
#include <stddef.h>

#include "fastnn.h"

#define PAR_MIN_WORK 32768
#define MAX_CHUNKS 256

struct metric_args {
    int64_t cols;
    const float *pred;
    const float *t;
    const int32_t *labels;
    float threshold;
};

typedef double (*row_metric_fn)(const struct metric_args *a, int64_t r);

static double sum_rows(int64_t rows, const struct metric_args *a, row_metric_fn fn)
{
    if (rows <= 0)
        return 0.0;
    const int64_t chunk = (rows + MAX_CHUNKS - 1) / MAX_CHUNKS;
    const int64_t nchunks = (rows + chunk - 1) / chunk;
    double partial[MAX_CHUNKS];
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && nchunks > 1 && rows * a->cols > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t k = 0; k < nchunks; k++) {
        const int64_t r0 = k * chunk;
        const int64_t r1 = r0 + chunk < rows ? r0 + chunk : rows;
        double s = 0.0;
        for (int64_t r = r0; r < r1; r++)
            s += fn(a, r);
        partial[k] = s;
    }
    double total = 0.0;
    for (int64_t k = 0; k < nchunks; k++)
        total += partial[k];
    return total;
}

/* Index of the first maximum, as numpy.argmax and Keras's argmax pick. */
static inline int64_t argmax_row(int64_t cols, const float *x)
{
    int64_t best = 0;
    for (int64_t c = 1; c < cols; c++)
        if (x[c] > x[best])
            best = c;
    return best;
}

static double cat_acc_row(const struct metric_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    return argmax_row(cols, a->pred + r * cols) == argmax_row(cols, a->t + r * cols)
               ? 1.0 : 0.0;
}

double fnn_categorical_accuracy_sum(int64_t rows, int64_t cols,
                                    const float *pred, const float *target)
{
    struct metric_args a = {cols, pred, target, NULL, 0.0f};
    return sum_rows(rows, &a, cat_acc_row);
}

static double sparse_cat_acc_row(const struct metric_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    return argmax_row(cols, a->pred + r * cols) == (int64_t)a->labels[r] ? 1.0 : 0.0;
}

double fnn_sparse_categorical_accuracy_sum(int64_t rows, int64_t cols,
                                           const float *pred,
                                           const int32_t *labels)
{
    struct metric_args a = {cols, pred, NULL, labels, 0.0f};
    return sum_rows(rows, &a, sparse_cat_acc_row);
}

static double bin_acc_row(const struct metric_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *p = a->pred + r * cols;
    const float *t = a->t + r * cols;
    int64_t hits = 0;
    for (int64_t c = 0; c < cols; c++)
        hits += (p[c] > a->threshold) == (t[c] > 0.5f);
    return (double)hits / (double)cols;
}

double fnn_binary_accuracy_sum(int64_t rows, int64_t cols, const float *pred,
                               const float *target, float threshold)
{
    if (cols <= 0)
        return 0.0;
    struct metric_args a = {cols, pred, target, NULL, threshold};
    return sum_rows(rows, &a, bin_acc_row);
}

static double mse_row(const struct metric_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *p = a->pred + r * cols;
    const float *t = a->t + r * cols;
    double s = 0.0;
    for (int64_t c = 0; c < cols; c++) {
        const double d = (double)p[c] - (double)t[c];
        s += d * d;
    }
    return s / (double)cols;
}

double fnn_mse_sum(int64_t rows, int64_t cols, const float *pred,
                   const float *target)
{
    if (cols <= 0)
        return 0.0;
    struct metric_args a = {cols, pred, target, NULL, 0.0f};
    return sum_rows(rows, &a, mse_row);
}

static double mae_row(const struct metric_args *a, int64_t r)
{
    const int64_t cols = a->cols;
    const float *p = a->pred + r * cols;
    const float *t = a->t + r * cols;
    double s = 0.0;
    for (int64_t c = 0; c < cols; c++)
        s += fabs((double)p[c] - (double)t[c]);
    return s / (double)cols;
}

double fnn_mae_sum(int64_t rows, int64_t cols, const float *pred,
                   const float *target)
{
    if (cols <= 0)
        return 0.0;
    struct metric_args a = {cols, pred, target, NULL, 0.0f};
    return sum_rows(rows, &a, mae_row);
}
