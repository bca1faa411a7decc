// Calling fastdl ops through the dispatcher from C++, so autograd, autocast and device
// dispatch apply exactly as they do from Python.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

// FASTDL_OP("name", Signature): the typed dispatcher handle of fastdl::name, looked up once
// per call site (the lambda gives every call site its own static).
#define FASTDL_OP(name, ...)                                                                      \
  ([]() -> const auto& {                                                                          \
    static const auto handle =                                                                    \
        c10::Dispatcher::singleton().findSchemaOrThrow("fastdl::" name, "").typed<__VA_ARGS__>(); \
    return handle;                                                                                \
  }())
