// Host-side queries of the CUDA runtime compiled into sleepcore._C (kernels/cuda/device_info.cu).
#pragma once

namespace sleepcore::cuda {

int runtime_version();  // e.g. 13000 for CUDA 13.0; 0 when unavailable
int device_count();     // usable devices; 0 without a driver or GPU

}  // namespace sleepcore::cuda
