// Python bindings of the paged attention family (work in progress: nothing bound yet).
#include "bindings.h"

namespace sleepcore {

void bind_paged_attention(pybind11::module_& /*m*/) {}

}  // namespace sleepcore
