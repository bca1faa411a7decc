// Run-time values as compile-time template arguments, for kernels instantiated per case (a
// vector width, a tile size, a head dimension, a flag), written once instead of a switch or an
// if/else ladder at every launch site (flash-attention's BOOL_SWITCH idea).
//
//   static_switch<8, 4, 2, 1>(vec, [&](auto v) { launch(kernel<T, decltype(v)::value>); });
//   bool_switch(peephole, [&](auto p) { launch(kernel<T, decltype(p)::value>); });
#pragma once

#include <c10/util/Exception.h>

#include <type_traits>

namespace fastdl {

// f(std::integral_constant<int, V>{}) for the V of Values equal to `value`; an error if none is.
template <int... Values, typename F>
void static_switch(int value, F&& f) {
  const bool found =
      ((value == Values ? (f(std::integral_constant<int, Values>{}), true) : false) || ...);
  TORCH_CHECK(found, "fastdl: no kernel instantiated for the value ", value);
}

// f(std::true_type{}) or f(std::false_type{}).
template <typename F>
void bool_switch(bool value, F&& f) {
  if (value) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace fastdl
