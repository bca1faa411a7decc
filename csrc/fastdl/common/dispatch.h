// Calling fastdl ops through the dispatcher from C++, so autograd, autocast and device
// dispatch apply exactly as they do from Python, and registering device kernels.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <utility>

// FASTDL_OP("name", Signature): the typed dispatcher handle of fastdl::name, looked up once
// per call site (the lambda gives every call site its own static).
#define FASTDL_OP(name, ...)                                                                      \
  ([]() -> const auto& {                                                                          \
    static const auto handle =                                                                    \
        c10::Dispatcher::singleton().findSchemaOrThrow("fastdl::" name, "").typed<__VA_ARGS__>(); \
    return handle;                                                                                \
  }())

// FASTDL_CALL(op): the typed handle of fastdl::op, typed from the declaration of the C++ entry
// point fastdl::op in the family's public header, so each op's signature is written once (there
// and in its schema; a mismatch throws at the first call).
#define FASTDL_CALL(op) FASTDL_OP(#op, decltype(::fastdl::op))

namespace fastdl::detail {

// BindTable<driver, table>::call(args...) = driver(table(), args...): a device-independent
// driver whose first parameter is a device's kernel table (RNN steps, attention rows), made
// into the plain function a dispatch key takes: m.impl("op", &BindTable<driver, table>::call).
template <auto Driver, auto Table>
struct BindTable;

template <typename R, typename Kernels, typename... Args, R (*Driver)(const Kernels&, Args...),
          const Kernels& (*Table)()>
struct BindTable<Driver, Table> {
  static R call(Args... args) { return Driver(Table(), std::forward<Args>(args)...); }
};

}  // namespace fastdl::detail
