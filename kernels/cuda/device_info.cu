// What the CUDA runtime linked into sleepcore._C sees: its version and the usable devices.
// The runtime is linked statically and loads the driver lazily, so these calls are safe on a
// machine without a GPU or driver: they report 0 devices instead of failing to import.
#include <cuda_runtime.h>

#include "cuda/device_info.h"

namespace sleepcore::cuda {

int runtime_version() {
  int version = 0;
  return cudaRuntimeGetVersion(&version) == cudaSuccess ? version : 0;
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return count;
}

}  // namespace sleepcore::cuda
