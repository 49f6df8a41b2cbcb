// Python bindings of the block manager family (work in progress: nothing bound yet).
#include "bindings.h"

namespace sleepcore {

void bind_block_manager(pybind11::module_& /*m*/) {}

}  // namespace sleepcore
