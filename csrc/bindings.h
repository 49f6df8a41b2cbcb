// Registration functions of the binding files, all called from the one PYBIND11_MODULE in
// bindings.cpp. Each family binds its own functions so that its files stay together.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/dtype.h"

namespace sleepcore {

// A raw pointer from a Python int (tensor.data_ptr(); 0 stands for nullptr).
template <typename T>
inline T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// A storage dtype from its code (sleepcore._core.dtype_code).
inline cpu::DType as_dtype(int code) {
  if (code < 0 || code > 2) throw pybind11::value_error("dtype code must be 0 (fp32), 1 (bf16) or 2 (fp16)");
  return static_cast<cpu::DType>(code);
}

void bind_block_manager(pybind11::module_& m);   // csrc/rollout/block_manager_bindings.cpp
void bind_sampling(pybind11::module_& m);        // csrc/cpu/sampling_bindings.cpp
void bind_paged_attention(pybind11::module_& m); // csrc/cpu/paged_attention_bindings.cpp

}  // namespace sleepcore
