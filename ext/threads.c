/* Thread-count control shared by every kernel.
 *
 * Kernels open their parallel regions with num_threads(fnn_get_num_threads())
 * rather than trusting the OpenMP ICV: the ICV is per calling thread, and a
 * kernel may be called from any Python thread. After fork() the child must
 * never enter a multi-threaded region (libgomp's pool does not survive fork),
 * which fnn_force_serial guarantees by making the count 1.
 */
#include "fastnn.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* 0 means "not chosen yet": take OpenMP's default (OMP_NUM_THREADS or the
 * core count) on first use. A racy first read is harmless: every racer stores
 * the same value. */
static int fnn_nthreads = 0;
static int fnn_serial = 0;

int fnn_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void fnn_set_num_threads(int n)
{
    if (n < 1)
        n = 1;
    fnn_nthreads = n;
#ifdef _OPENMP
    /* Also for any OpenMP code outside fastnn running on this thread. */
    omp_set_num_threads(n);
#endif
}

int fnn_get_num_threads(void)
{
#ifdef _OPENMP
    if (fnn_serial)
        return 1;
    if (fnn_nthreads < 1) {
        int n = omp_get_max_threads();
        fnn_nthreads = n < 1 ? 1 : n;
    }
    return fnn_nthreads;
#else
    return 1;
#endif
}

void fnn_force_serial(int on)
{
    fnn_serial = on ? 1 : 0;
}
