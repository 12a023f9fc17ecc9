/*
 * Kernel paths (see kernels.h): the CPU's features, read once, and the process's choice.
 *
 * Includes: libc, and <sys/auxv.h> on Linux aarch64 (the kernel's hardware capability bits).
 */
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define HWCAP_DOTPROD (1UL << 20)   /* asm/hwcap.h: HWCAP_ASIMDDP */
#define HWCAP2_INT8MM (1UL << 13)   /* asm/hwcap.h: HWCAP2_I8MM */
#endif

static const char *const NAMES[EL_PATHS] = {"portable", "avx2", "avx512vnni", "neon", "i8mm", "avxvnni"};

const char *el_path_name(int path)
{
    return path >= 0 && path < EL_PATHS ? NAMES[path] : NULL;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static int x86_has(int path)
{
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (path == EL_PATH_AVX2)
        return avx2;
    if (path == EL_PATH_AVXVNNI) {   /* CPUID leaf 7, subleaf 1: EAX bit 4 (the OS keeps the AVX state: avx2) */
        static volatile int vnni = -1;   /* asked once: CPUID can trap to a hypervisor, microseconds each */
        if (vnni < 0) {
            unsigned int a = 0, b = 0, c = 0, d = 0;
            vnni = __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4)) != 0;
        }
        return avx2 && vnni;
    }
    return path == EL_PATH_AVX512VNNI && avx2 && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
}
#endif

int el_path_supported(int path)
{
    switch (path) {
    case EL_PATH_PORTABLE:
        return 1;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    case EL_PATH_AVX2:
    case EL_PATH_AVXVNNI:
    case EL_PATH_AVX512VNNI:
        return x86_has(path);
#endif
#if defined(__aarch64__) && defined(__linux__)
    case EL_PATH_NEON:
        return (getauxval(AT_HWCAP) & HWCAP_DOTPROD) != 0;
    case EL_PATH_I8MM:
        return (getauxval(AT_HWCAP) & HWCAP_DOTPROD) != 0 && (getauxval(AT_HWCAP2) & HWCAP2_INT8MM) != 0;
#endif
    default:
        return 0;
    }
}

/* the path EDGELLAMA_KERNELS names, -1 when unset or empty, -2 when it names none */
static int env_path(void)
{
    const char *value = getenv("EDGELLAMA_KERNELS");
    if (value == NULL || value[0] == '\0')
        return -1;
    for (int p = 0; p < EL_PATHS; p++)
        if (strcmp(value, NAMES[p]) == 0)
            return p;
    return -2;
}

static int best(void)
{
    static const int ORDER[] = {EL_PATH_AVX512VNNI, EL_PATH_AVXVNNI, EL_PATH_AVX2, EL_PATH_I8MM, EL_PATH_NEON};
    for (size_t i = 0; i < sizeof ORDER / sizeof ORDER[0]; i++)
        if (el_path_supported(ORDER[i]))
            return ORDER[i];
    return EL_PATH_PORTABLE;
}

el_path el_path_chosen(void)
{
    static volatile int chosen = -1;   /* every thread that races here computes the same value */
    if (chosen < 0) {
        int p = env_path();
        chosen = p >= 0 && el_path_supported(p) ? p : best();
    }
    return (el_path)chosen;
}

el_status el_path_check_env(void)
{
    int p = env_path();
    return p == -1 || (p >= 0 && el_path_supported(p)) ? EL_OK : EL_ERR_RANGE;
}

el_path el_path_resolve(int path)
{
    if (path == EL_PATH_CHOSEN)
        return el_path_chosen();
    return el_path_supported(path) ? (el_path)path : EL_PATH_PORTABLE;
}

int el_path_x86_vector(int path)
{
    int p = el_path_resolve(path);
    return p == EL_PATH_AVX2 || p == EL_PATH_AVXVNNI || p == EL_PATH_AVX512VNNI;
}
