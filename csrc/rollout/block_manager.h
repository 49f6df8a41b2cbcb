// Paged-KV block manager (vLLM v1 / nano-vllm style): ref-counted blocks, an LRU free list,
// hash-chained prefix caching and copy-on-write. Pure bookkeeping: no torch, no Python.
//
// Rules that fix known nano-vllm bugs:
//  * A block enters the prefix cache only when it is full AND mark_computed says its KV has been
//    written, so sequences allocated in the same batch never hit each other's unwritten blocks.
//  * A prefix hit always leaves at least one token to compute: allocate only looks up the first
//    (n - 1) / block_size full blocks, so cached <= n - 1. When every full block of a prompt whose
//    length is a multiple of block_size is cached, the last one is NOT reused: it gets a fresh
//    block and is recomputed (up to block_size tokens of extra prefill, no copy needed).
//  * Block tables are rebuilt from scratch on every allocate, so free (preemption) followed by
//    allocate with prefix hits never indexes a stale table.
// Free list: a freed block that holds a cached (hashed) block goes to the tail and keeps its hash;
// a freed uncached block goes to the head. Allocation pops the head, so empty blocks are used
// first, then cached ones in least-recently-freed order (each such reuse is an eviction).
// A sequence's blocks are released last-to-first, so a prompt's tail is evicted before its head.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sleepcore::rollout {

class BlockManager {
 public:
  // Throws std::invalid_argument when num_blocks < 1 or block_size < 1.
  BlockManager(int64_t num_blocks, int64_t block_size = 16, bool enable_prefix_caching = true);

  // Chained hash of one full block: h_i = block_hash(h_{i-1}, tokens of block i); h_{-1} = kRootHash.
  static constexpr uint64_t kRootHash = 0x9E3779B97F4A7C15ull;
  static uint64_t block_hash(uint64_t parent, const int64_t* tokens, int64_t count);

  // Conservative: enough free blocks for num_tokens tokens, ignoring prefix hits.
  bool can_allocate(int64_t num_tokens) const;
  // Builds the block table of a new (or preempted and resumed) sequence; returns the number of
  // leading tokens whose KV is already cached (a multiple of block_size, <= len(token_ids) - 1).
  // Those tokens count as computed. Throws std::invalid_argument (known seq_id, empty token_ids)
  // or std::runtime_error (not enough free blocks; nothing is changed).
  int64_t allocate(int64_t seq_id, const std::vector<int64_t>& token_ids);
  bool can_append(int64_t seq_id) const;
  // Appends one token and returns its KV slot (block_id * block_size + offset). Allocates a block
  // when the last one is full, or copies-on-write when the block to write is shared.
  int64_t append_token(int64_t seq_id, int64_t token_id);
  // The child shares every block of the parent (ref++) and its tokens and computed count.
  void fork(int64_t parent_seq_id, int64_t child_seq_id);
  // Releases the sequence's blocks (finish or preemption) and forgets the sequence.
  void free(int64_t seq_id);
  // The first num_tokens tokens now have KV: registers every newly full, computed block.
  void mark_computed(int64_t seq_id, int64_t num_tokens);

  bool has_sequence(int64_t seq_id) const { return sequences_.count(seq_id) != 0; }
  std::vector<int64_t> block_table(int64_t seq_id) const;
  std::vector<int64_t> token_ids(int64_t seq_id) const;
  int64_t num_tokens(int64_t seq_id) const;
  int64_t num_computed_tokens(int64_t seq_id) const;
  // Slots of token positions [start, stop); needs 0 <= start <= stop <= num_tokens.
  std::vector<int64_t> slot_mapping(int64_t seq_id, int64_t start, int64_t stop) const;
  // Pending (src, dst) block copies from copy-on-write, in order (apply them in this order, before
  // the next forward pass); clears the list.
  std::vector<std::pair<int64_t, int64_t>> take_copies();

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_list_.size()); }
  int64_t num_cached_blocks() const { return static_cast<int64_t>(cache_.size()); }
  int64_t num_sequences() const { return static_cast<int64_t>(sequences_.size()); }
  int64_t prefix_hits() const { return prefix_hits_; }        // blocks reused by allocate
  int64_t prefix_queries() const { return prefix_queries_; }  // eligible full blocks looked up
  int64_t copies() const { return copies_; }                  // copy-on-write block copies
  int64_t evictions() const { return evictions_; }            // cached blocks reused for new data

  // Throws std::runtime_error naming the first violated invariant.
  void check_invariants() const;

 private:
  struct Block {
    int64_t ref_count = 0;
    bool cached = false;  // registered in cache_ under `hash`
    bool in_free_list = false;
    uint64_t hash = 0;
    uint64_t parent_hash = 0;
    std::vector<int64_t> tokens;  // the block's tokens while cached
    std::list<int32_t>::iterator free_position;
  };
  struct Sequence {
    std::vector<int64_t> tokens;
    std::vector<int32_t> blocks;
    std::vector<uint64_t> hashes;  // chained hashes of the num_computed / block_size leading blocks
    int64_t num_computed = 0;
  };

  const Sequence& sequence(int64_t seq_id, const char* argument) const;
  Sequence& sequence(int64_t seq_id, const char* argument);
  int32_t lookup(uint64_t hash, uint64_t parent, const int64_t* tokens) const;
  int32_t take_free_block();
  void revive(int32_t block);
  void release(int32_t block);

  int64_t block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::list<int32_t> free_list_;
  std::unordered_map<uint64_t, int32_t> cache_;
  std::unordered_map<int64_t, Sequence> sequences_;
  std::vector<std::pair<int64_t, int64_t>> pending_copies_;
  int64_t prefix_hits_ = 0, prefix_queries_ = 0, copies_ = 0, evictions_ = 0;
};

}  // namespace sleepcore::rollout
