/*
 * The plumbing that the operator files share (ort_api.h): ONNX Runtime's API table, statuses (status.h
 * turned into ONNX Runtime's), the inputs and outputs of a call, and running a chain of phases
 * (phases.h) on ONNX Runtime's threads.
 *
 * Includes: libc.
 */
#include "ort_api.h"

#include <stdatomic.h>

const ort_fn *el_ort_api;

OrtStatus *el_ort_fail(int code, const char *message)
{
    return API(API_CreateStatus, create_status_fn)(code, message);
}

OrtStatus *el_ort_status(el_status status, const char *message)
{
    if (status == EL_OK)
        return NULL;
    return el_ort_fail(status == EL_ERR_NOMEM ? ORT_FAIL : ORT_INVALID_ARGUMENT, message);
}

OrtStatus *el_ort_input(void *context, size_t index, int64_t *dims, size_t *count, void **data)
{
    const void *value;
    void *info;
    OrtStatus *status = API(API_KernelContext_GetInput, get_input_fn)(context, index, &value);
    if (status == NULL)
        status = API(API_GetTensorTypeAndShape, type_and_shape_fn)(value, &info);
    if (status != NULL)
        return status;
    status = API(API_GetDimensionsCount, dims_count_fn)(info, count);
    if (status == NULL && *count > MAX_DIMS)
        status = el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama operator: an input has more than 8 dimensions");
    if (status == NULL)
        status = API(API_GetDimensions, dims_fn)(info, dims, *count);
    API(API_ReleaseTensorTypeAndShapeInfo, release_info_fn)(info);
    if (status == NULL)
        status = API(API_GetTensorMutableData, mutable_data_fn)(value, data);
    return status;
}

OrtStatus *el_ort_output(void *context, size_t index, const int64_t *dims, size_t count, void **data)
{
    void *out;
    OrtStatus *status = API(API_KernelContext_GetOutput, get_output_fn)(context, index, dims, count, &out);
    return status != NULL ? status : API(API_GetTensorMutableData, mutable_data_fn)(out, data);
}

OrtStatus *el_ort_rows_output(void *context, const int64_t *ids_dims, size_t count, int64_t k, float **rows,
                              int64_t *n)
{
    int64_t dims[MAX_DIMS];
    if (count >= MAX_DIMS)
        return el_ort_fail(ORT_INVALID_ARGUMENT, "edgellama gather: ids has too many dimensions");
    for (size_t i = 0; i < count; i++)
        dims[i] = ids_dims[i];
    dims[count] = k;
    *n = el_ort_elements(ids_dims, count);
    return el_ort_output(context, 0, dims, count + 1, (void **)rows);
}

int64_t el_ort_elements(const int64_t *dims, size_t count)
{
    int64_t total = 1;
    for (size_t i = 0; i < count; i++)
        total *= dims[i];
    return total;
}

/* one task of ONNX Runtime's ParallelFor: join the chain */
static void join_task(void *chain, size_t task)
{
    (void)task;
    el_phases_join(chain);
}

/* threads that joined the latest chain, and the most that have joined one in this process (a pool's
 * size, learnt as its calls run) */
static atomic_int last_joined = 1, most_joined = 1;

int el_ort_threads_joined(void)
{
    return atomic_load_explicit(&last_joined, memory_order_relaxed);
}

OrtStatus *el_ort_run_chain(void *context, el_phases *chain)
{
    /* one task more than that, so that one more thread can join and be counted; not 64 tasks: each task a
     * thread claims after the chain is done still moves ONNX Runtime's counter between the cores (a tiny
     * product on 2 threads: 2.6 us a call with 64 tasks, 1.9 with 2 to 4) */
    const int most = atomic_load_explicit(&most_joined, memory_order_relaxed);
    const size_t tasks = most < EL_ORT_CHAIN_TASKS ? (size_t)most + 1 : EL_ORT_CHAIN_TASKS;
    OrtStatus *status = API(API_KernelContext_ParallelFor, parallel_for_fn)(context, join_task, tasks, 0, chain);
    const int joined = el_phases_threads(chain);
    atomic_store_explicit(&last_joined, joined, memory_order_relaxed);
    if (joined > most)
        atomic_store_explicit(&most_joined, joined, memory_order_relaxed);   /* a lost race only delays it */
    return status;
}
