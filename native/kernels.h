/*
 * Kernel paths: which instructions the block products (blocks.h) and attention (attention.h) run
 * with. The path is chosen once per process, the first time one is asked for: the one named by the
 * environment variable EDGELLAMA_KERNELS, else the best this CPU supports:
 *
 *     path         CPU                                             block products        attention
 *     avx512vnni   x86-64 with AVX-512 F, BW, VL and VNNI, AVX2,   vpdpbusd on 256 bits  AVX2 + FMA; int8
 *                  FMA, F16C                                                             caches: vpdpbusd,
 *                                                                                        vpdpwssd on 512 bits
 *     avxvnni      x86-64 with AVX-VNNI, AVX2, FMA, F16C (no        vpdpbusd on 256 bits  AVX2 + FMA; int8
 *                  AVX-512 needed: Intel cores since Alder Lake)   (VEX form)            caches: vpdpbusd,
 *                                                                                        vpdpwssd on 256 bits
 *                                                                                        (VEX form)
 *     avx2         x86-64 with AVX2, FMA, F16C                     vpmaddubsw            AVX2 + FMA
 *     i8mm         aarch64 with the int8 matrix multiply and       smmla (prompts),      plain C
 *                  dot product extensions                          sdot (one row)
 *     neon         aarch64 with the dot product extension          sdot                  plain C
 *     portable     any                                             plain C               plain C
 *
 * Every path computes each block product with the same float arithmetic in the same order (blocks.h);
 * only the exact integer dot products of the blocks are formed by different instructions, so all paths
 * give bit-identical products. Attention and SiLU (attention.c, activation.c) have x86 vector builds
 * (SiLU one for every x86 path, attention one per path) and a plain one (i8mm, neon, portable) that
 * fuse, fold and exponentiate alike: the same bits.
 *
 * Includes: libc (getenv; getauxval on Linux aarch64), the compiler's <cpuid.h> on x86-64.
 */
#ifndef EDGELLAMA_KERNELS_H
#define EDGELLAMA_KERNELS_H

#include "status.h"

typedef enum el_path {
    EL_PATH_CHOSEN = -1,      /* as an argument: the process's chosen path */
    EL_PATH_PORTABLE = 0,
    EL_PATH_AVX2 = 1,
    EL_PATH_AVX512VNNI = 2,
    EL_PATH_NEON = 3,
    EL_PATH_I8MM = 4,
    EL_PATH_AVXVNNI = 5,
} el_path;

#define EL_PATHS 6

/* The path's name as EDGELLAMA_KERNELS spells it; NULL for a value outside the enum. */
const char *el_path_name(int path);

/* 1 when this build on this CPU can run `path`. */
int el_path_supported(int path);

/* The process's path (chosen on the first call; see above). An unknown or unsupported
 * EDGELLAMA_KERNELS leaves the best path chosen; el_path_check_env reports it. */
el_path el_path_chosen(void);

/* EL_OK, or EL_ERR_RANGE when EDGELLAMA_KERNELS names no path, or one this CPU cannot run. */
el_status el_path_check_env(void);

/* `path`, with EL_PATH_CHOSEN replaced by the chosen path; EL_PATH_PORTABLE for a path this CPU
 * cannot run. */
el_path el_path_resolve(int path);

/* Whether `path` (resolved) runs the x86-64 vector loops of attention and activation. */
int el_path_x86_vector(int path);

#endif
