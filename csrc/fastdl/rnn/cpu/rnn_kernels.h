// The LSTM/GRU CPU step kernels (rnn.cpp), for the per-dtype kernel tables (rnn_ops.cpp).
#pragma once

#ifndef CPU_CAPABILITY
#error "only CPU kernel files (rnn/cpu/), compiled once per ISA, include this header"
#endif

#include "fastdl/rnn/rnn.h"

#include <ATen/core/Tensor.h>

namespace fastdl::CPU_CAPABILITY {

// The pointwise step kernels, state carrying and reductions for float32/float64 data; the
// matmul fields are left for the table to fill.
detail::RnnKernels step_kernels();

// The bfloat16 LSTM forward step with its recurrent product (RnnKernels::lstm_step_forward_fused):
// false, doing nothing, where it does not apply (W_hh^T not prepacked for the bfloat16 units, H
// not a multiple of 32, ...).
bool lstm_step_forward_fused(const detail::LstmStepForward& p, const at::Tensor& prepared);

}  // namespace fastdl::CPU_CAPABILITY
