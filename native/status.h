/*
 * The status every routine of this folder returns: EL_OK, or what went wrong.
 *
 * One enum for all of them, so a caller needs one mapping from status to error: the extension
 * module raises edgellama's exception for each (edgellama/native_status.py holds the table and
 * mirrors these values), and the ONNX Runtime operators turn it into an OrtStatus (ort_api.c).
 * Routines check only what is cheap and needed to stay inside their buffers; the Python side
 * checks arguments before it calls them (edgellama/native_args.py).
 */
#ifndef EDGELLAMA_STATUS_H
#define EDGELLAMA_STATUS_H

typedef enum el_status {
    EL_OK = 0,
    EL_ERR_NOMEM = 1,       /* an allocation failed */
    EL_ERR_NONFINITE = 2,   /* a logit is NaN or infinite after the logit bias and the penalties */
    EL_ERR_TOKEN = 3,       /* a token id (history or logit bias) is outside [0, vocab_size) */
    EL_ERR_SIZE = 4,        /* a size is zero, negative or too large, or a buffer is missing */
    EL_ERR_RANGE = 5,       /* positions outside a buffer */
    EL_ERR_MASK = 6,        /* a token mask allows no token of the vocabulary */
} el_status;

#endif
