// Python bindings of the paged attention family: KV cache writes, block copies and attention
// (raw pointers; the Python layer in sleepcore.ops.paged_attention has checked shapes and dtypes).
#include <cstdint>

#include "bindings.h"
#include "cpu/paged_attention.h"

namespace py = pybind11;

namespace sleepcore {
namespace {

cpu::CacheShape as_cache(int64_t num_blocks, int64_t block_size, int64_t heads_kv, int64_t head_dim) {
  if (num_blocks < 0 || block_size < 1 || heads_kv < 1 || head_dim < 1) {
    throw py::value_error("cache shape must have num_blocks >= 0 and positive block_size, heads_kv, head_dim");
  }
  return {num_blocks, block_size, heads_kv, head_dim};
}

}  // namespace

void bind_paged_attention(pybind11::module_& m) {
  m.def(
      "write_kv",
      [](std::uintptr_t k, std::uintptr_t v, std::uintptr_t k_cache, std::uintptr_t v_cache, int dtype,
         int64_t num_blocks, int64_t block_size, int64_t heads_kv, int64_t head_dim, std::uintptr_t slot_mapping,
         int64_t tokens, int num_threads) {
        const auto cache = as_cache(num_blocks, block_size, heads_kv, head_dim);
        py::gil_scoped_release release;
        cpu::write_kv(as_ptr<const void>(k), as_ptr<const void>(v), as_ptr<void>(k_cache), as_ptr<void>(v_cache),
                      as_dtype(dtype), cache, as_ptr<const int64_t>(slot_mapping), tokens, num_threads);
      },
      py::arg("k"), py::arg("v"), py::arg("k_cache"), py::arg("v_cache"), py::arg("dtype"), py::arg("num_blocks"),
      py::arg("block_size"), py::arg("heads_kv"), py::arg("head_dim"), py::arg("slot_mapping"), py::arg("tokens"),
      py::arg("num_threads"), "Scatter K/V rows into the paged caches; see csrc/cpu/paged_attention.h.");

  m.def(
      "copy_blocks",
      [](std::uintptr_t k_cache, std::uintptr_t v_cache, int dtype, int64_t num_blocks, int64_t block_size,
         int64_t heads_kv, int64_t head_dim, std::uintptr_t pairs, int64_t num_pairs) {
        const auto cache = as_cache(num_blocks, block_size, heads_kv, head_dim);
        py::gil_scoped_release release;
        cpu::copy_blocks(as_ptr<void>(k_cache), as_ptr<void>(v_cache), as_dtype(dtype), cache,
                         as_ptr<const int64_t>(pairs), num_pairs);
      },
      py::arg("k_cache"), py::arg("v_cache"), py::arg("dtype"), py::arg("num_blocks"), py::arg("block_size"),
      py::arg("heads_kv"), py::arg("head_dim"), py::arg("pairs"), py::arg("num_pairs"),
      "Copy whole cache blocks (src, dst) pairs in order; see csrc/cpu/paged_attention.h.");

  m.def(
      "paged_attention",
      [](std::uintptr_t q, std::uintptr_t k_cache, std::uintptr_t v_cache, std::uintptr_t out, int dtype,
         int64_t num_blocks, int64_t block_size, int64_t heads_kv, int64_t head_dim, int64_t heads_q,
         std::uintptr_t block_tables, int64_t max_blocks, std::uintptr_t context_lens, std::uintptr_t query_start,
         int64_t num_seqs, int64_t total_q, double scale, int64_t sliding_window, double softcap, int num_threads) {
        const auto cache = as_cache(num_blocks, block_size, heads_kv, head_dim);
        if (heads_q < 1 || heads_q % heads_kv != 0) throw py::value_error("heads_q must be a multiple of heads_kv");
        py::gil_scoped_release release;
        cpu::paged_attention(as_ptr<const void>(q), as_ptr<const void>(k_cache), as_ptr<const void>(v_cache),
                             as_ptr<void>(out), as_dtype(dtype), cache, heads_q, as_ptr<const int32_t>(block_tables),
                             max_blocks, as_ptr<const int64_t>(context_lens), as_ptr<const int64_t>(query_start),
                             num_seqs, total_q, float(scale), sliding_window, float(softcap), num_threads);
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("out"), py::arg("dtype"), py::arg("num_blocks"),
      py::arg("block_size"), py::arg("heads_kv"), py::arg("head_dim"), py::arg("heads_q"), py::arg("block_tables"),
      py::arg("max_blocks"), py::arg("context_lens"), py::arg("query_start"), py::arg("num_seqs"),
      py::arg("total_q"), py::arg("scale"), py::arg("sliding_window"), py::arg("softcap"), py::arg("num_threads"),
      "Variable-length causal attention over a paged KV cache; see csrc/cpu/paged_attention.h.");
}

}  // namespace sleepcore
