#include "inference/kv_mirror.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "inference/kv_cache.h"
#include "memory/topology.h"

namespace ramstream::inference {
namespace {

std::string bytes_text(int64_t bytes) {
  return memory::format_bytes(static_cast<uint64_t>(bytes));
}

int64_t align64(int64_t x) {
  return (x + 63) / 64 * 64;
}

// Pages a view's records [0, n) occupy in its page table.
int64_t pages_of(const kernels::PagedRecords& r, int64_t n) {
  return n == 0 ? 0 : (r.first + n - 1) / r.per_page + 1;
}

// The six record runs of a view with their counts.
template <typename View, typename Fn>
void for_each_run(View& v, Fn&& fn) {
  fn(v.sink_keys, v.n_sink);
  fn(v.sink_values, v.n_sink);
  fn(v.key_groups, v.n_key_groups);
  fn(v.key_window, v.n_key_window);
  fn(v.value_tokens, v.n_value_quant);
  fn(v.value_window, v.n_value_window);
}

class HostMirrorBackend final : public KvMirrorBackend {
 public:
  ~HostMirrorBackend() override {
    std::free(host_);
    std::free(device_);
  }
  std::string name() const override { return "host memory standing in for a device"; }
  uint8_t* alloc(int64_t bytes) override {
    return static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(align64(bytes))));
  }
  void free(uint8_t* p) override { std::free(p); }
  int64_t available_bytes() const override { return int64_t{1} << 40; }
  uint8_t* staging(int64_t bytes) override {
    if (bytes > capacity_) {
      capacity_ = std::max(align64(bytes), 2 * capacity_);
      std::free(host_);
      std::free(device_);
      host_ = alloc(capacity_);
      device_ = alloc(capacity_);
      if (!host_ || !device_) throw std::bad_alloc();
    }
    return host_;
  }
  uint8_t* device_staging(int64_t offset) override { return device_ + offset; }
  int64_t max_logits() const override { return std::numeric_limits<int64_t>::max(); }
  void run(int64_t bytes, int64_t ops_offset, int64_t n_ops, int64_t views_offset, int64_t n_views,
           int64_t /*max_tokens*/, const float* q, int64_t q_stride, int Hq, float scale,
           float* out, int64_t out_stride) override {
    std::memcpy(device_, host_, static_cast<size_t>(bytes));
    kernels::kv_scatter(device_, reinterpret_cast<const kernels::KvCopyOp*>(device_ + ops_offset),
                        n_ops);
    kernels::kv_decode_attention_batch(
        reinterpret_cast<const kernels::KvHeadView*>(device_ + views_offset), n_views, q, q_stride,
        Hq, scale, out, out_stride, nullptr);
  }

 private:
  uint8_t* host_ = nullptr;
  uint8_t* device_ = nullptr;
  int64_t capacity_ = 0;
};

}  // namespace

std::unique_ptr<KvMirrorBackend> make_host_mirror_backend() {
  return std::make_unique<HostMirrorBackend>();
}

KvDeviceMirror::KvDeviceMirror(std::unique_ptr<KvMirrorBackend> backend, int64_t max_bytes)
    : backend_(std::move(backend)), max_bytes_(max_bytes) {
  if (!backend_) throw std::invalid_argument("KvDeviceMirror: no backend");
}

KvDeviceMirror::~KvDeviceMirror() {
  for (auto& c : chunks_) backend_->free(c.second.device);
}

void KvDeviceMirror::stop(const std::string& why) {
  if (!active_) return;
  active_ = false;
  reason_ = why;
  dirty_.clear();
  dirty_.shrink_to_fit();
  for (auto& c : chunks_) backend_->free(c.second.device);
  chunks_.clear();
  device_bytes_ = 0;
}

void KvDeviceMirror::add_chunk(const uint8_t* base, int64_t bytes) {
  if (!active_) return;
  if (device_bytes_ + bytes > max_bytes_) {
    stop("the KV pages need " + bytes_text(device_bytes_ + bytes) + ", past the device budget of " +
         bytes_text(max_bytes_) + ": attention reads them from host memory from now on");
    return;
  }
  uint8_t* dev = backend_->alloc(bytes);
  if (!dev) {
    stop("device memory: no " + bytes_text(bytes) + " more for the KV pages (" +
         bytes_text(device_bytes_) + " held): attention reads them from host memory from now on");
    return;
  }
  chunks_[base] = Chunk{bytes, dev};
  device_bytes_ += bytes;
}

uint8_t* KvDeviceMirror::to_device(const uint8_t* p) const {
  auto it = chunks_.upper_bound(p);
  if (it == chunks_.begin()) throw std::logic_error("KvDeviceMirror: not a mirrored page");
  --it;
  if (p >= it->first + it->second.bytes) {
    throw std::logic_error("KvDeviceMirror: not a mirrored page");
  }
  return it->second.device + (p - it->first);
}

bool KvDeviceMirror::attend(int64_t layer, const std::vector<SequenceKv*>& seqs, const float* q,
                            float* out, const model::ModelConfig& model) {
  if (!active_ || seqs.empty()) return false;
  const int64_t NKV = model.num_kv_heads, D = model.head_dim, Hq = model.num_heads / NKV;
  std::vector<kernels::KvHeadView> views;
  views.reserve(seqs.size() * static_cast<size_t>(NKV));
  int64_t max_tokens = 0, table_entries = 0;
  for (SequenceKv* s : seqs) {
    for (int64_t h = 0; h < NKV; ++h) {
      views.push_back(s->view(layer, h));
      const kernels::KvHeadView& v = views.back();
      if (v.alive) return false;  // h2o: scores need the probabilities on the host
      max_tokens = std::max(max_tokens, v.tokens());
      for_each_run(
          v, [&](const kernels::PagedRecords& r, int64_t n) { table_entries += pages_of(r, n); });
    }
  }
  if (Hq * max_tokens > backend_->max_logits()) return false;

  // The records written since the last call, as maximal runs within one chunk.
  std::sort(dirty_.begin(), dirty_.end(),
            [](const Written& a, const Written& b) { return a.p < b.p; });
  std::vector<Written> runs;
  for (const Written& w : dirty_) {
    if (!runs.empty()) {
      Written& last = runs.back();
      const uint8_t* end = last.p + last.n;
      if (w.p <= end && to_device(w.p) == to_device(last.p) + (w.p - last.p)) {
        last.n = std::max<int64_t>(last.n, w.p + w.n - last.p);
        continue;
      }
    }
    runs.push_back(w);
  }
  int64_t data_bytes = 0;
  for (const Written& r : runs) data_bytes += r.n;

  // Staging: [copy ops][views][page tables][record bytes].
  const int64_t off_ops = 0;
  const int64_t off_views =
      align64(off_ops + static_cast<int64_t>(runs.size() * sizeof(kernels::KvCopyOp)));
  const int64_t off_tables =
      align64(off_views + static_cast<int64_t>(views.size() * sizeof(kernels::KvHeadView)));
  const int64_t off_data = align64(off_tables + table_entries * int64_t{sizeof(uint8_t*)});
  const int64_t total = off_data + data_bytes;
  uint8_t* st = backend_->staging(total);

  auto* ops = reinterpret_cast<kernels::KvCopyOp*>(st + off_ops);
  int64_t at = off_data;
  for (size_t i = 0; i < runs.size(); ++i) {
    std::memcpy(st + at, runs[i].p, static_cast<size_t>(runs[i].n));
    ops[i] = kernels::KvCopyOp{to_device(runs[i].p), at, runs[i].n};
    at += runs[i].n;
  }
  int64_t tab = off_tables;
  for (kernels::KvHeadView& v : views) {
    for_each_run(v, [&](kernels::PagedRecords& r, int64_t n) {
      const int64_t np = pages_of(r, n);
      if (np == 0) {
        r.pages = nullptr;
        return;
      }
      auto* table = reinterpret_cast<uint8_t**>(st + tab);
      for (int64_t k = 0; k < np; ++k) table[k] = to_device(r.pages[k]);
      r.pages = reinterpret_cast<const uint8_t* const*>(backend_->device_staging(tab));
      tab += np * int64_t{sizeof(uint8_t*)};
    });
  }
  std::memcpy(st + off_views, views.data(), views.size() * sizeof(kernels::KvHeadView));

  backend_->run(total, off_ops, static_cast<int64_t>(runs.size()), off_views,
                static_cast<int64_t>(views.size()), max_tokens, q, Hq * D, static_cast<int>(Hq),
                1.0f / std::sqrt(float(D)), out, Hq * D);
  uploaded_bytes_ += data_bytes;
  dirty_.clear();
  return true;
}

}  // namespace ramstream::inference
