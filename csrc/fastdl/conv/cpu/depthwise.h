// The depthwise convolution kernels (one input channel per group, any channel multiplier) of
// the conv2d CPU op (conv.cpp): direct loops, NCHW, float32 and float64.
#pragma once

#include "fastdl/conv/conv.h"

namespace fastdl::conv_cpu {

template <typename T>
void depthwise_forward(const T* x, const T* w, const T* bias, T* y, const detail::Conv2dShape& s);
template <typename T>
void depthwise_grad_input(const T* gy, const T* w, T* gx, const detail::Conv2dShape& s);
template <typename T>
void depthwise_grad_weight(const T* gy, const T* x, T* gw, const detail::Conv2dShape& s);

}  // namespace fastdl::conv_cpu
