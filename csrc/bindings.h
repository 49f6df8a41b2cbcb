// Registration functions of the binding files, all called from the one PYBIND11_MODULE in
// bindings.cpp. Each family binds its own functions so that its files stay together.
#pragma once

#include <pybind11/pybind11.h>

namespace sleepcore {

void bind_block_manager(pybind11::module_& m);   // csrc/rollout/block_manager_bindings.cpp
void bind_sampling(pybind11::module_& m);        // csrc/cpu/sampling_bindings.cpp
void bind_paged_attention(pybind11::module_& m); // csrc/cpu/paged_attention_bindings.cpp

}  // namespace sleepcore
