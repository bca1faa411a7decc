// fastdl's public C++ API: include this and link fastdl::fastdl (find_package(fastdl)).
// Every function calls its op through the torch dispatcher, so autograd, autocast and
// CPU/CUDA dispatch work as they do from Python.
#pragma once

#include "fastdl/attention/sdpa.h"
#include "fastdl/attention/sdpa_weights.h"
#include "fastdl/build_info.h"
#include "fastdl/conv/conv.h"
#include "fastdl/histogram/histogram.h"
#include "fastdl/norm/batch_norm.h"
#include "fastdl/norm/layer_norm.h"
#include "fastdl/pooling/pooling.h"
#include "fastdl/rnn/rnn.h"
#include "fastdl/sets/induced_attention.h"
