/* Flat reductions and scaling used by the optimisers (gradient norms,
 * loss scaling), and the finiteness scan of input data. */
#include <string.h>

#include "fastnn.h"
#include "simd_clones.h"

#define PAR_MIN_WORK 65536
/* sumsq splits x into at most MAX_CHUNKS chunks of at least MIN_CHUNK
 * elements; the split depends only on n, never on the thread count. */
#define MIN_CHUNK 4096
#define MAX_CHUNKS 1024
/* Independent float64 accumulators inside a chunk: enough to keep the FPU
 * busy, and a fixed pattern so the order is still fully determined. */
#define LANES 8

static double sumsq_chunk(int64_t n, const float *x)
{
    double acc[LANES] = {0.0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] += (double)x[i + l] * (double)x[i + l];
    for (int l = 0; i < n; i++, l++)
        acc[l] += (double)x[i] * (double)x[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

double fnn_sumsq(int64_t n, const float *x)
{
    if (n <= 0)
        return 0.0;
    int64_t chunk = (n + MAX_CHUNKS - 1) / MAX_CHUNKS;
    if (chunk < MIN_CHUNK)
        chunk = MIN_CHUNK;
    const int64_t nchunks = (n + chunk - 1) / chunk;
    double partial[MAX_CHUNKS];
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && nchunks > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t k = 0; k < nchunks; k++) {
        const int64_t i0 = k * chunk;
        const int64_t len = n - i0 < chunk ? n - i0 : chunk;
        partial[k] = sumsq_chunk(len, x + i0);
    }
    double total = 0.0;
    for (int64_t k = 0; k < nchunks; k++)
        total += partial[k];
    return total;
}

void fnn_scale(int64_t n, float *x, float s)
{
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt)
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
}

/* Elements per block of the finiteness scan. */
#define SCAN_BLOCK 16384
#define EXPONENT_MASK 0x7f800000u

/* 1 if x[0:n] holds a NaN or infinity: its exponent bits are all ones. An
 * integer test, because a float one (x - x != 0) would not vectorise without
 * -ffast-math, which would also let the compiler assume it away. */
SIMD_CLONES
static int any_nonfinite(int64_t n, const float *x)
{
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        bad |= (bits & EXPONENT_MASK) == EXPONENT_MASK;
    }
    return bad != 0;
}

int64_t fnn_first_nonfinite(int64_t n, const float *x)
{
    const int64_t nblocks = (n + SCAN_BLOCK - 1) / SCAN_BLOCK;
    int64_t first_block = nblocks;
    const int nt = fnn_get_num_threads();
    const int par = nt > 1 && nblocks > 1 && n > PAR_MIN_WORK;
    (void)par; /* unused when built without OpenMP */
    #pragma omp parallel for schedule(static) if (par) num_threads(nt) \
        reduction(min : first_block)
    for (int64_t b = 0; b < nblocks; b++) {
        const int64_t i0 = b * SCAN_BLOCK;
        const int64_t len = n - i0 < SCAN_BLOCK ? n - i0 : SCAN_BLOCK;
        if (b < first_block && any_nonfinite(len, x + i0))
            first_block = b;
    }
    if (first_block == nblocks)
        return -1;
    for (int64_t i = first_block * SCAN_BLOCK; i < n; i++)
        if (any_nonfinite(1, x + i))
            return i;
    return -1; /* not reached: the block holds one */
}
