/* SIMD_CLONES: compile a loop function for several instruction sets and pick
 * one at load time (GCC's target_clones, an ELF ifunc), so a portable build
 * still runs 8- or 16-wide where the CPU allows. Every clone performs the same
 * IEEE operations in the same order (-std=c99 keeps FMA contraction off), so
 * results do not depend on which one runs. Put the attribute on a function
 * without OpenMP pragmas: the region's outlined body would not be cloned. */
#ifndef FASTNN_SIMD_CLONES_H
#define FASTNN_SIMD_CLONES_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && defined(__GLIBC__)
#define SIMD_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define SIMD_CLONES
#endif

#endif
