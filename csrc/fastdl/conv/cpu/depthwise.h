// The depthwise convolution kernels (one input channel per group, any channel multiplier) of
// the conv2d CPU op (conv.cpp): direct loops, NCHW, float32 and float64.
#pragma once

// Included by CPU kernel files only, which are compiled once per ISA: its contents live in that
// ISA's inline namespace (common/cpu_isa.h).
#ifndef CPU_CAPABILITY
#error \
    "only CPU kernel files (<family>/cpu/, common/cpu/), compiled once per ISA, include this header"
#endif

#include "fastdl/conv/conv.h"

namespace fastdl::conv_cpu::inline CPU_CAPABILITY {

template <typename T>
void depthwise_forward(const T* x, const T* w, const T* bias, T* y, const detail::Conv2dShape& s);
template <typename T>
void depthwise_grad_input(const T* gy, const T* w, T* gx, const detail::Conv2dShape& s);
template <typename T>
void depthwise_grad_weight(const T* gy, const T* x, T* gw, const detail::Conv2dShape& s);

}  // namespace fastdl::conv_cpu::inline CPU_CAPABILITY
