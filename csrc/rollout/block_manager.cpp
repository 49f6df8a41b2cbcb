// Paged-KV block manager; the rules (full-hit, computed-only hashing, LRU order) are in the header.
#include "rollout/block_manager.h"

#include <stdexcept>
#include <string>

namespace sleepcore::rollout {
namespace {

// 64-bit finaliser of MurmurHash3 / splitmix64: full avalanche of every input bit.
uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  x ^= x >> 33;
  return x;
}

std::string id_text(const char* argument, int64_t value) {
  return std::string(argument) + " " + std::to_string(value);
}

void require(bool condition, const std::string& what) {
  if (!condition) throw std::runtime_error("BlockManager invariant violated: " + what);
}

}  // namespace

uint64_t BlockManager::block_hash(uint64_t parent, const int64_t* tokens, int64_t count) {
  uint64_t h = mix64(parent ^ 0x2545F4914F6CDD1Dull);
  for (int64_t i = 0; i < count; ++i) {
    h = mix64(h ^ (static_cast<uint64_t>(tokens[i]) * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i)));
  }
  return mix64(h ^ static_cast<uint64_t>(count));
}

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching) {
  if (num_blocks < 1 || num_blocks > INT32_MAX) {
    throw std::invalid_argument("num_blocks must be in [1, 2^31 - 1], got " + std::to_string(num_blocks));
  }
  if (block_size < 1) throw std::invalid_argument("block_size must be >= 1, got " + std::to_string(block_size));
  blocks_.resize(static_cast<size_t>(num_blocks));
  for (int32_t b = 0; b < static_cast<int32_t>(num_blocks); ++b) {
    blocks_[b].free_position = free_list_.insert(free_list_.end(), b);
    blocks_[b].in_free_list = true;
  }
}

const BlockManager::Sequence& BlockManager::sequence(int64_t seq_id, const char* argument) const {
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) throw std::invalid_argument(id_text(argument, seq_id) + " is not a known sequence");
  return it->second;
}

BlockManager::Sequence& BlockManager::sequence(int64_t seq_id, const char* argument) {
  auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) throw std::invalid_argument(id_text(argument, seq_id) + " is not a known sequence");
  return it->second;
}

int32_t BlockManager::lookup(uint64_t hash, uint64_t parent, const int64_t* tokens) const {
  auto it = cache_.find(hash);
  if (it == cache_.end()) return -1;
  const Block& block = blocks_[it->second];
  if (block.parent_hash != parent) return -1;  // a 64-bit collision: treat as a miss
  for (int64_t i = 0; i < block_size_; ++i) {
    if (block.tokens[i] != tokens[i]) return -1;
  }
  return it->second;
}

int32_t BlockManager::take_free_block() {
  if (free_list_.empty()) throw std::runtime_error("BlockManager: out of KV blocks");
  const int32_t b = free_list_.front();
  free_list_.pop_front();
  Block& block = blocks_[b];
  block.in_free_list = false;
  if (block.cached) {  // reused for new data: evict the cached content
    cache_.erase(block.hash);
    block.cached = false;
    block.tokens.clear();
    ++evictions_;
  }
  block.ref_count = 1;
  return b;
}

void BlockManager::revive(int32_t b) {
  Block& block = blocks_[b];
  if (block.ref_count == 0) {
    free_list_.erase(block.free_position);
    block.in_free_list = false;
  }
  ++block.ref_count;
}

void BlockManager::release(int32_t b) {
  Block& block = blocks_[b];
  if (--block.ref_count > 0) return;
  block.free_position = block.cached ? free_list_.insert(free_list_.end(), b) : free_list_.insert(free_list_.begin(), b);
  block.in_free_list = true;
}

bool BlockManager::can_allocate(int64_t num_tokens) const {
  if (num_tokens < 0) throw std::invalid_argument("num_tokens must be >= 0, got " + std::to_string(num_tokens));
  return (num_tokens + block_size_ - 1) / block_size_ <= num_free_blocks();
}

int64_t BlockManager::allocate(int64_t seq_id, const std::vector<int64_t>& token_ids) {
  if (sequences_.count(seq_id)) throw std::invalid_argument(id_text("seq_id", seq_id) + " is already allocated");
  if (token_ids.empty()) throw std::invalid_argument("token_ids must not be empty");
  const int64_t n = static_cast<int64_t>(token_ids.size());
  const int64_t needed = (n + block_size_ - 1) / block_size_;
  const int64_t eligible = prefix_caching_ ? (n - 1) / block_size_ : 0;  // keeps cached <= n - 1

  Sequence seq;
  uint64_t parent = kRootHash;
  int64_t revived_free = 0;  // hits on ref-0 blocks also leave the free list
  for (int64_t i = 0; i < eligible; ++i) {
    const int64_t* tokens = token_ids.data() + i * block_size_;
    const uint64_t h = block_hash(parent, tokens, block_size_);
    const int32_t b = lookup(h, parent, tokens);
    if (b < 0) break;
    revived_free += blocks_[b].ref_count == 0;
    seq.blocks.push_back(b);
    seq.hashes.push_back(h);
    parent = h;
  }
  const int64_t hits = static_cast<int64_t>(seq.blocks.size());
  if (needed - hits + revived_free > num_free_blocks()) {
    throw std::runtime_error("BlockManager: out of KV blocks (" + id_text("seq_id", seq_id) + " needs " +
                             std::to_string(needed - hits + revived_free) + ", " +
                             std::to_string(num_free_blocks()) + " free)");
  }
  for (int32_t b : seq.blocks) revive(b);  // before take_free_block, which could evict a hit
  while (static_cast<int64_t>(seq.blocks.size()) < needed) seq.blocks.push_back(take_free_block());
  seq.tokens = token_ids;
  seq.num_computed = hits * block_size_;
  prefix_queries_ += eligible;
  prefix_hits_ += hits;
  sequences_.emplace(seq_id, std::move(seq));
  return hits * block_size_;
}

bool BlockManager::can_append(int64_t seq_id) const {
  const Sequence& seq = sequence(seq_id, "seq_id");
  const size_t index = seq.tokens.size() / block_size_;
  const bool needs_block = index == seq.blocks.size() || blocks_[seq.blocks[index]].ref_count > 1;
  return !needs_block || num_free_blocks() > 0;
}

int64_t BlockManager::append_token(int64_t seq_id, int64_t token_id) {
  Sequence& seq = sequence(seq_id, "seq_id");
  const int64_t position = static_cast<int64_t>(seq.tokens.size());
  const size_t index = position / block_size_;
  if (index == seq.blocks.size()) {
    seq.blocks.push_back(take_free_block());
  } else if (blocks_[seq.blocks[index]].ref_count > 1) {  // shared partial block: copy on write
    const int32_t source = seq.blocks[index];
    const int32_t copy = take_free_block();
    --blocks_[source].ref_count;  // stays >= 1: another sequence still reads it
    seq.blocks[index] = copy;
    pending_copies_.emplace_back(source, copy);
    ++copies_;
  }
  seq.tokens.push_back(token_id);
  return static_cast<int64_t>(seq.blocks[index]) * block_size_ + position % block_size_;
}

void BlockManager::fork(int64_t parent_seq_id, int64_t child_seq_id) {
  const Sequence& parent = sequence(parent_seq_id, "parent_seq_id");
  if (sequences_.count(child_seq_id)) {
    throw std::invalid_argument(id_text("child_seq_id", child_seq_id) + " is already allocated");
  }
  for (int32_t b : parent.blocks) ++blocks_[b].ref_count;
  Sequence child = parent;
  sequences_.emplace(child_seq_id, std::move(child));
}

void BlockManager::free(int64_t seq_id) {
  const Sequence& seq = sequence(seq_id, "seq_id");
  for (auto it = seq.blocks.rbegin(); it != seq.blocks.rend(); ++it) release(*it);
  sequences_.erase(seq_id);
}

void BlockManager::mark_computed(int64_t seq_id, int64_t num_tokens) {
  Sequence& seq = sequence(seq_id, "seq_id");
  const int64_t total = static_cast<int64_t>(seq.tokens.size());
  if (num_tokens < seq.num_computed || num_tokens > total) {
    throw std::invalid_argument("num_tokens must be in [" + std::to_string(seq.num_computed) + ", " +
                                std::to_string(total) + "] (computed so far, sequence length), got " +
                                std::to_string(num_tokens));
  }
  seq.num_computed = num_tokens;
  const size_t full = static_cast<size_t>(num_tokens / block_size_);
  while (seq.hashes.size() < full) {
    const size_t i = seq.hashes.size();
    const uint64_t parent = i == 0 ? kRootHash : seq.hashes[i - 1];
    const int64_t* tokens = seq.tokens.data() + i * block_size_;
    const uint64_t h = block_hash(parent, tokens, block_size_);
    seq.hashes.push_back(h);
    Block& block = blocks_[seq.blocks[i]];
    // Already cached (a hit or a sibling's registration), or the same content is cached in another
    // block (identical prompts computed side by side): keep the first copy only.
    if (!prefix_caching_ || block.cached || cache_.count(h)) continue;
    block.cached = true;
    block.hash = h;
    block.parent_hash = parent;
    block.tokens.assign(tokens, tokens + block_size_);
    cache_.emplace(h, seq.blocks[i]);
  }
}

std::vector<int64_t> BlockManager::block_table(int64_t seq_id) const {
  const Sequence& seq = sequence(seq_id, "seq_id");
  return {seq.blocks.begin(), seq.blocks.end()};
}

std::vector<int64_t> BlockManager::token_ids(int64_t seq_id) const { return sequence(seq_id, "seq_id").tokens; }

int64_t BlockManager::num_tokens(int64_t seq_id) const {
  return static_cast<int64_t>(sequence(seq_id, "seq_id").tokens.size());
}

int64_t BlockManager::num_computed_tokens(int64_t seq_id) const { return sequence(seq_id, "seq_id").num_computed; }

std::vector<int64_t> BlockManager::slot_mapping(int64_t seq_id, int64_t start, int64_t stop) const {
  const Sequence& seq = sequence(seq_id, "seq_id");
  const int64_t total = static_cast<int64_t>(seq.tokens.size());
  if (start < 0 || start > stop || stop > total) {
    throw std::invalid_argument("start and stop must satisfy 0 <= start <= stop <= " + std::to_string(total) +
                                ", got start=" + std::to_string(start) + ", stop=" + std::to_string(stop));
  }
  std::vector<int64_t> slots;
  slots.reserve(static_cast<size_t>(stop - start));
  for (int64_t p = start; p < stop; ++p) {
    slots.push_back(static_cast<int64_t>(seq.blocks[p / block_size_]) * block_size_ + p % block_size_);
  }
  return slots;
}

std::vector<std::pair<int64_t, int64_t>> BlockManager::take_copies() {
  std::vector<std::pair<int64_t, int64_t>> copies;
  copies.swap(pending_copies_);
  return copies;
}

void BlockManager::check_invariants() const {
  const size_t total = blocks_.size();
  std::vector<int64_t> holders(total, 0);
  for (const auto& [id, seq] : sequences_) {
    const std::string name = id_text("seq_id", id);
    const size_t n = seq.tokens.size();
    require(seq.blocks.size() == (n + block_size_ - 1) / block_size_, name + " has a table of the wrong length");
    require(seq.num_computed >= 0 && static_cast<size_t>(seq.num_computed) <= n, name + " computed count");
    require(seq.hashes.size() == static_cast<size_t>(seq.num_computed / block_size_), name + " hash count");
    std::vector<int32_t> seen;
    for (size_t i = 0; i < seq.blocks.size(); ++i) {
      const int32_t b = seq.blocks[i];
      require(b >= 0 && static_cast<size_t>(b) < total, name + " holds an out-of-range block");
      for (int32_t other : seen) require(other != b, name + " holds a block twice");
      seen.push_back(b);
      ++holders[b];
      const Block& block = blocks_[b];
      if (i < seq.hashes.size()) {
        const uint64_t parent = i == 0 ? kRootHash : seq.hashes[i - 1];
        require(seq.hashes[i] == block_hash(parent, seq.tokens.data() + i * block_size_, block_size_),
                name + " has a stale chain hash");
        if (block.cached) require(block.hash == seq.hashes[i], name + " holds a block cached under another hash");
      }
      if (block.cached) {
        require((i + 1) * block_size_ <= n, name + " has a cached block that is not full");
        for (int64_t j = 0; j < block_size_; ++j) {
          require(block.tokens[j] == seq.tokens[i * block_size_ + j], name + " disagrees with a cached block");
        }
      }
    }
  }
  size_t free_count = 0;
  for (size_t b = 0; b < total; ++b) {
    const Block& block = blocks_[b];
    const std::string name = id_text("block", static_cast<int64_t>(b));
    require(block.ref_count >= 0, name + " has a negative ref count");
    require(block.ref_count == holders[b], name + " ref count differs from the number of tables holding it");
    require(block.in_free_list == (block.ref_count == 0), name + " free-list membership differs from ref == 0");
    free_count += block.ref_count == 0;
    if (block.in_free_list) require(*block.free_position == static_cast<int32_t>(b), name + " free position");
    if (block.cached) {
      auto it = cache_.find(block.hash);
      require(it != cache_.end() && it->second == static_cast<int32_t>(b), name + " is cached but not in the table");
    }
  }
  require(free_list_.size() == free_count, "free list size differs from the number of ref-0 blocks");
  for (const auto& [hash, b] : cache_) {
    require(b >= 0 && static_cast<size_t>(b) < total, "hash table points out of range");
    const Block& block = blocks_[b];
    require(block.cached && block.hash == hash, "hash table entry points to an uncached block");
    require(static_cast<int64_t>(block.tokens.size()) == block_size_, "hash table entry is not a full block");
    require(block_hash(block.parent_hash, block.tokens.data(), block_size_) == hash,
            "hash table entry's stored tokens do not match its hash");
  }
  require(prefix_caching_ || cache_.empty(), "prefix caching is off but blocks are cached");
}

}  // namespace sleepcore::rollout
