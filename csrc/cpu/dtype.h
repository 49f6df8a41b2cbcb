// Storage dtype codes shared by the CPU kernels and the Python layer (sleepcore._core.dtype_code).
#pragma once

namespace sleepcore::cpu {

enum class DType : int { Float32 = 0, BFloat16 = 1, Float16 = 2 };

}  // namespace sleepcore::cpu
