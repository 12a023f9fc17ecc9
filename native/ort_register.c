/*
 * The operator table of the library and its registration: what ONNX Runtime learns about each
 * operator of domain ai.edgellama (name, input and output types, the functions that create its kernel
 * and compute it) and RegisterCustomOps, the function it calls when a session's options register the
 * library. The operators themselves: ort_ops.c (block products), ort_kquants.c (k-quant products),
 * ort_attention.c (RotaryAttention and its float16 and q8 cache forms), ort_norm.c (RmsNorm, SkipRmsNorm).
 *
 * Includes: libc.
 */
#include "kernels.h"
#include "ort_api.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    OrtCustomOp base;           /* first: ONNX Runtime hands &base to the callbacks below */
    const char *name;
    int inputs[MAX_INPUTS];     /* ONNX element types */
    size_t n_inputs;
    const int *outputs;         /* ONNX element types */
    size_t n_outputs;
} OpInfo;

static void destroy_kernel(void *kernel) { free(kernel); }
static const char *op_name(const void *op) { return ((const OpInfo *)op)->name; }
static int op_input_type(const void *op, size_t i) { return ((const OpInfo *)op)->inputs[i]; }
static size_t op_input_count(const void *op) { return ((const OpInfo *)op)->n_inputs; }
static size_t op_output_count(const void *op) { return ((const OpInfo *)op)->n_outputs; }
static const char *cpu(const void *op) { (void)op; return "CPUExecutionProvider"; }
static int op_output_type(const void *op, size_t i) { return ((const OpInfo *)op)->outputs[i]; }
static int required(const void *op, size_t i) { (void)op; (void)i; return 0; }   /* INPUT_OUTPUT_REQUIRED */
static int default_memory(const void *op, size_t i) { (void)op; (void)i; return 0; }
static int arity_one(const void *op) { (void)op; return 1; }
static int first_opset(const void *op) { (void)op; return 1; }
static int any_opset(const void *op) { (void)op; return 1 << 30; }

#define F TYPE_FLOAT
#define U8 TYPE_UINT8
#define I8 TYPE_INT8
#define I64 TYPE_INT64
#define H TYPE_FLOAT16
#define I32 TYPE_INT32
#define OP(NAME, CREATE, COMPUTE, OUTPUTS, ...)                                                         \
    {{ORT_API_VERSION_USED, NULL, op_name, cpu, op_input_type, op_input_count, op_output_type, op_output_count, \
      NULL, destroy_kernel, required, required, default_memory, arity_one, arity_one, arity_one, arity_one, \
      CREATE, COMPUTE, NULL, first_opset, any_opset},                                                    \
     NAME, {__VA_ARGS__}, sizeof((int[]){__VA_ARGS__}) / sizeof(int), OUTPUTS, sizeof OUTPUTS / sizeof(int)}

/* output types */
static const int ONE[] = {F}, TWO[] = {F, F}, CACHE_F32[] = {F, F, F}, CACHE_F16[] = {F, H, H}, CACHE_Q8[] = {F, U8, U8};

static const OpInfo OPS[] = {
    OP("MatMulQ4_1", el_ops_create, el_matmul_q41_compute, ONE, F, U8, H, H),
    OP("MatMulQ8", el_ops_create, el_matmul_q8_compute, ONE, F, I8, F),
    OP("GatherQ8", el_ops_create, el_gather_q8_compute, ONE, I8, F, I64),
    OP("GatherQ4_1", el_ops_create, el_gather_q41_compute, ONE, U8, H, H, I64),
    OP("MatMulQ4_K", el_kquants_create, el_matmul_q4k_compute, ONE, F, U8, H, H, U8, U8),
    OP("MatMulQ5_K", el_kquants_create, el_matmul_q5k_compute, ONE, F, U8, H, H, U8, U8),
    OP("MatMulQ6_K", el_kquants_create, el_matmul_q6k_compute, ONE, F, U8, I8, H),
    OP("GatherQ4_K", el_kquants_create, el_gather_q4k_compute, ONE, U8, H, H, U8, U8, I64),
    OP("GatherQ5_K", el_kquants_create, el_gather_q5k_compute, ONE, U8, H, H, U8, U8, I64),
    OP("GatherQ6_K", el_kquants_create, el_gather_q6k_compute, ONE, U8, I8, H, I64),
    OP("NormMatMulQ4_1", el_ops_create_norm, el_norm_matmul_q41_compute, TWO, F, F, F, U8, H, H),
    OP("NormMlpQ4_1", el_ops_create_norm, el_norm_mlp_q41_compute, TWO, F, F, F, U8, H, H, U8, H, H),
    OP("ProjectNormMlpQ4_1", el_ops_create_norm, el_project_norm_mlp_q41_compute, TWO, F, F, F, U8, H, H, U8, H, H, U8, H, H),
    OP("RotaryAttention", el_attention_create, el_attention_compute, CACHE_F32, F, F, F, I32, I32, F, F),
    OP("RotaryAttentionF16", el_attention_create_f16, el_attention_compute, CACHE_F16, F, H, H, I32, I32, F, F),
    OP("RotaryAttentionQ8", el_attention_create_q8, el_attention_compute, CACHE_Q8, F, U8, U8, I32, I32, F, F),
    OP("RmsNorm", el_norm_create, el_rms_norm_compute, ONE, F, F),
    OP("SkipRmsNorm", el_norm_create, el_skip_rms_norm_compute, TWO, F, F, F),
};

/* What a session hears when EDGELLAMA_KERNELS names a path this CPU cannot run: the paths it can, from
 * kernels.c's table, into text [size] */
static const char *refusal(char *text, size_t size)
{
    size_t at = (size_t)snprintf(text, size, "EDGELLAMA_KERNELS names no kernel path this CPU can run: use one of");
    for (int p = 0; p < EL_PATHS && at < size; p++)
        if (el_path_supported(p))
            at += (size_t)snprintf(text + at, size - at, " %s", el_path_name(p));
    if (at < size)
        snprintf(text + at, size - at, ", or unset it");
    return text;
}

/* Called by ONNX Runtime when a session's options register this library. */
OrtStatus *RegisterCustomOps(void *options, const OrtApiBase *base)
{
    el_ort_api = base->GetApi(ORT_API_VERSION_USED);
    if (el_ort_api == NULL)   /* an ONNX Runtime older than 1.17: it cannot hear about the failure either */
        return NULL;
    char text[256];   /* ONNX Runtime copies a status's message */
    if (el_path_check_env() != EL_OK)
        return el_ort_fail(ORT_INVALID_ARGUMENT, refusal(text, sizeof text));
    el_path_chosen();   /* the path is chosen once, here */
    void *domain;
    OrtStatus *status = API(API_CreateCustomOpDomain, create_domain_fn)("ai.edgellama", &domain);
    for (size_t i = 0; status == NULL && i < sizeof OPS / sizeof OPS[0]; i++)
        status = API(API_CustomOpDomain_Add, domain_add_fn)(domain, &OPS[i].base);
    if (status == NULL)
        status = API(API_AddCustomOpDomain, add_domain_fn)(options, domain);
    return status;
}
