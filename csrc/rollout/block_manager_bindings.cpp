// Python bindings of the block manager family: _C.BlockManager (csrc/rollout/block_manager.h).
// std::invalid_argument becomes ValueError, std::runtime_error (out of blocks, broken invariant)
// becomes RuntimeError; the Python wrapper sleepcore.rollout.BlockManager checks argument types.
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "bindings.h"
#include "rollout/block_manager.h"

namespace py = pybind11;

namespace sleepcore {

void bind_block_manager(pybind11::module_& m) {
  using rollout::BlockManager;
  py::class_<BlockManager>(m, "BlockManager",
                           "Paged-KV block manager: ref counts, LRU free list, hash-chained prefix caching "
                           "(computed blocks only), copy-on-write. See csrc/rollout/block_manager.h.")
      .def(py::init<int64_t, int64_t, bool>(), py::arg("num_blocks"), py::arg("block_size") = 16,
           py::arg("enable_prefix_caching") = true)
      .def("can_allocate", &BlockManager::can_allocate, py::arg("num_tokens"))
      .def("allocate", &BlockManager::allocate, py::arg("seq_id"), py::arg("token_ids"))
      .def("can_append", &BlockManager::can_append, py::arg("seq_id"))
      .def("append_token", &BlockManager::append_token, py::arg("seq_id"), py::arg("token_id"))
      .def("fork", &BlockManager::fork, py::arg("parent_seq_id"), py::arg("child_seq_id"))
      .def("free", &BlockManager::free, py::arg("seq_id"))
      .def("mark_computed", &BlockManager::mark_computed, py::arg("seq_id"), py::arg("num_tokens"))
      .def("has_sequence", &BlockManager::has_sequence, py::arg("seq_id"))
      .def("block_table", &BlockManager::block_table, py::arg("seq_id"))
      .def("token_ids", &BlockManager::token_ids, py::arg("seq_id"))
      .def("num_tokens", &BlockManager::num_tokens, py::arg("seq_id"))
      .def("num_computed_tokens", &BlockManager::num_computed_tokens, py::arg("seq_id"))
      .def("slot_mapping", &BlockManager::slot_mapping, py::arg("seq_id"), py::arg("start"), py::arg("stop"))
      .def("take_copies", &BlockManager::take_copies)
      .def("check_invariants", &BlockManager::check_invariants)
      .def_static(
          "block_hash",
          [](uint64_t parent, const std::vector<int64_t>& tokens) {
            return BlockManager::block_hash(parent, tokens.data(), static_cast<int64_t>(tokens.size()));
          },
          py::arg("parent"), py::arg("tokens"))
      .def_readonly_static("root_hash", &BlockManager::kRootHash)
      .def_property_readonly("num_blocks", &BlockManager::num_blocks)
      .def_property_readonly("block_size", &BlockManager::block_size)
      .def_property_readonly("prefix_caching", &BlockManager::prefix_caching)
      .def_property_readonly("num_free_blocks", &BlockManager::num_free_blocks)
      .def_property_readonly("num_cached_blocks", &BlockManager::num_cached_blocks)
      .def_property_readonly("num_sequences", &BlockManager::num_sequences)
      .def_property_readonly("prefix_hits", &BlockManager::prefix_hits)
      .def_property_readonly("prefix_queries", &BlockManager::prefix_queries)
      .def_property_readonly("copies", &BlockManager::copies)
      .def_property_readonly("evictions", &BlockManager::evictions);
}

}  // namespace sleepcore
