// Python bindings of the sampling family (work in progress: nothing bound yet).
#include "bindings.h"

namespace sleepcore {

void bind_sampling(pybind11::module_& /*m*/) {}

}  // namespace sleepcore
