#include "inference/generator.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "autograd/ops.h"
#include "autograd/positions.h"
#include "kernels/gemm_rows.h"

namespace ramstream::inference {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

at::Tensor rmsnorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor out = at::empty_like(x);
  at::Tensor rstd = at::empty({x.size(0)}, x.options().dtype(autograd::acc_dtype(x.scalar_type())));
  autograd::rmsnorm_forward(out, rstd, x, w, eps);
  return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  at::Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  // Decode rows on the CPU: read each weight row once, no BLAS packing (kernels/gemm_rows.h).
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
      x.size(0) <= kernels::kGemmRowsMax && x.is_contiguous() && w.is_contiguous() &&
      (!b.defined() || b.is_contiguous())) {
    kernels::gemm_rows_nt(x.data_ptr<float>(), x.size(0), x.size(1), w.data_ptr<float>(), w.size(0),
                          b.defined() ? b.data_ptr<float>() : nullptr, out.data_ptr<float>());
    return out;
  }
  autograd::linear_forward(out, x, w, b);
  return out;
}

// x + the MLP of the post-attention residual stream x: [n,C].
at::Tensor mlp_residual(const model::BlockParams& w, const at::Tensor& x,
                        const model::ModelConfig& cfg) {
  const at::Tensor h2 = rmsnorm(x, w.mlp_norm, cfg.rms_norm_eps);
  const at::Tensor gu = linear(h2, w.wgu, at::Tensor());
  at::Tensor s = at::empty({x.size(0), cfg.intermediate_size}, x.options());
  autograd::swiglu_forward(s, gu);
  return x + linear(s, w.wd, at::Tensor());
}

// [n, H, 1 or T, D] fp32 host copy, contiguous, as [rows][H][D] or [T][H][D].
at::Tensor host_f32(const at::Tensor& t) {
  return t.to(at::kCPU, at::kFloat).contiguous();
}

}  // namespace

int64_t DecodeBatch::kv_bytes() const {
  int64_t n = 0;
  for (const auto& s : kv) n += s ? s->bytes() : 0;
  return n;
}

Generator::Generator(pipeline::Device& dev, pipeline::ParamStore& store,
                     const GeneratorOptions& options)
    : dev_(dev), store_(store), options_(options), cfg_(store.config()) {
  const bool bf16_layout = store_.options().working_copy_bf16;
  if (bf16_layout != (dev_.compute_dtype() == at::kBFloat16)) {
    throw std::invalid_argument("Generator: " + dev_.describe() +
                                " computes in a dtype the store's layout does not hold (bf16 "
                                "compute needs working_copy_bf16, fp32 compute needs it off)");
  }
  compute_ = dev_.new_compute_stream();
  const auto scope = dev_.make_current(*compute_);
  h2d_ = dev_.new_stream("h2d");
  pipeline::StageStreamerOptions so;
  so.num_slots = options_.num_slots;
  const int64_t n = store_.plan().num_stages();
  if (dev_.kind() == pipeline::DeviceKind::kCpu && !options_.stream_on_cpu) {
    so.host_views = true;
  } else {
    int64_t resident = options_.resident_stages;
    if (resident < 0) resident = resident_stages_within(options_.weight_device_bytes);
    for (int64_t s = 0; s < std::min(resident, n); ++s) so.resident.push_back(s);
  }
  streamer_ = std::make_unique<pipeline::StageStreamer>(dev_, store_, *h2d_, so);
  kv_pool_ = std::make_shared<KvPagePool>(
      KvPagePool::page_bytes_for(SequenceKv::largest_record(options_.kv, cfg_)),
      /*pin=*/dev_.kind() == pipeline::DeviceKind::kCuda, options_.kv_max_bytes);
  if (options_.kv_device_bytes != 0 && !options_.kv.h2o) {
    std::unique_ptr<KvMirrorBackend> backend;
    if (options_.kv_mirror_backend) {
      backend = options_.kv_mirror_backend();
    } else if (dev_.kind() == pipeline::DeviceKind::kCuda) {
      backend = make_cuda_mirror_backend(compute_->native_handle());
    }
    if (backend) {
      const int64_t budget =
          options_.kv_device_bytes > 0 ? options_.kv_device_bytes : backend->available_bytes() / 2;
      kv_mirror_ = std::make_unique<KvDeviceMirror>(std::move(backend), budget);
      kv_pool_->set_mirror(kv_mirror_.get());
    }
  }
  compute_->synchronize();
}

Generator::~Generator() {
  if (compute_) compute_->synchronize();
  if (h2d_) h2d_->synchronize();
  if (kv_pool_) kv_pool_->set_mirror(nullptr);  // batches may outlive the twin
}

int64_t Generator::resident_stages_within(int64_t budget) const {
  const pipeline::StagePlan& plan = store_.plan();
  const int64_t n = plan.num_stages();
  if (budget < 0) return n;
  const int64_t elem = dev_.compute_dtype() == at::kBFloat16 ? 2 : 4;
  int64_t all = 0;
  for (const pipeline::Stage& s : plan.stages) all += s.numel * elem;
  if (all <= budget) return n;
  // Streaming the rest needs the slots too.
  int64_t left = budget - options_.num_slots * plan.slot_numel * elem, k = 0;
  while (k < n && plan.stages[static_cast<size_t>(k)].numel * elem <= left) {
    left -= plan.stages[static_cast<size_t>(k)].numel * elem;
    ++k;
  }
  return k;
}

std::string Generator::describe() const {
  const int64_t n = store_.plan().num_stages();
  int64_t resident = 0;
  for (int64_t s = 0; s < n; ++s) resident += streamer_->is_resident(s) ? 1 : 0;
  return dev_.describe() + ", " + std::to_string(resident) + "/" + std::to_string(n) +
         " stages resident" +
         (resident < n ? ", " + std::to_string(options_.num_slots) + " streaming slots"
                       : std::string()) +
         ", kv cache " + options_.kv.name() +
         (kv_mirror_
              ? (kv_mirror_->active() ? ", KV pages on the device" : ", KV pages on the host")
              : std::string());
}

at::Tensor Generator::block_prefill(const model::BlockParams& w, const at::Tensor& x,
                                    SequenceKv& kv, int64_t layer) {
  const int64_t T = x.size(0), NH = cfg_.num_heads, NKV = cfg_.num_kv_heads, D = cfg_.head_dim;
  const at::Tensor h = rmsnorm(x, w.attn_norm, cfg_.rms_norm_eps);
  const at::Tensor qkv = linear(h, w.wqkv, w.bqkv);  // [T, (NH+2NKV)D]
  auto heads = [&](int64_t offset, int64_t H) {
    return qkv.narrow(1, offset, H * D).view({1, T, H, D}).permute({0, 2, 1, 3});
  };
  at::Tensor q = at::empty({1, NH, T, D}, x.options());
  at::Tensor k = at::empty({1, NKV, T, D}, x.options());
  autograd::rope_forward(q, heads(0, NH), rope_.cos, rope_.sin);
  autograd::rope_forward(k, heads(NH * D, NKV), rope_.cos, rope_.sin);
  const at::Tensor v = heads((NH + NKV) * D, NKV).contiguous();
  at::Tensor att = at::empty({1, T, NH * D}, x.options());
  at::Tensor lse = at::empty({1, NH, T}, x.options().dtype(autograd::acc_dtype(x.scalar_type())));
  autograd::attention_forward(att, lse, q, k, v);

  at::Tensor col;  // h2o: attention each key received, summed over queries and the group's heads
  if (options_.kv.h2o) {
    const at::Tensor qf = q[0].to(at::kFloat), kf = k[0].to(at::kFloat);
    const int64_t Hq = NH / NKV;
    const at::Tensor kk = kf.repeat_interleave(Hq, 0);  // [NH,T,D]
    at::Tensor p = at::matmul(qf, kk.transpose(1, 2)) / std::sqrt(double(D));
    const at::Tensor future = at::ones({T, T}, p.options().dtype(at::kBool)).triu(1);
    p = at::exp(p.masked_fill(future, -INFINITY) - lse[0].to(at::kFloat).unsqueeze(-1));
    col = host_f32(p.sum(1).view({NKV, Hq, T}).sum(1));  // [NKV,T]
  }
  const at::Tensor kh = host_f32(k[0].permute({1, 0, 2}));  // [T][NKV][D]
  const at::Tensor vh = host_f32(v[0].permute({1, 0, 2}));
  kv.prefill(layer, kh.data_ptr<float>(), vh.data_ptr<float>(), T,
             col.defined() ? col.data_ptr<float>() : nullptr);
  const at::Tensor x2 = x + linear(att.view({T, NH * D}), w.wo, w.bo);
  return mlp_residual(w, x2, cfg_);
}

at::Tensor Generator::block_decode(const model::BlockParams& w, const at::Tensor& x,
                                   const std::vector<SequenceKv*>& kv, const at::Tensor& pos,
                                   int64_t layer, bool consecutive) {
  const int64_t n = x.size(0), NH = cfg_.num_heads, NKV = cfg_.num_kv_heads, D = cfg_.head_dim;
  const at::Tensor h = rmsnorm(x, w.attn_norm, cfg_.rms_norm_eps);
  const at::Tensor qkv = linear(h, w.wqkv, w.bqkv);  // [n, (NH+2NKV)D]
  auto heads = [&](int64_t offset, int64_t H) {
    return qkv.narrow(1, offset, H * D).view({n, 1, H, D}).permute({0, 2, 1, 3});
  };
  autograd::TokenPositions tp;
  tp.pos = pos;  // [n,1]: each row's own position
  at::Tensor q = at::empty({n, NH, 1, D}, x.options());
  at::Tensor k = at::empty({n, NKV, 1, D}, x.options());
  autograd::rope_forward(q, heads(0, NH), rope_.cos, rope_.sin, tp);
  autograd::rope_forward(k, heads(NH * D, NKV), rope_.cos, rope_.sin, tp);
  const at::Tensor kh = host_f32(k);  // [n][NKV][D]
  const at::Tensor vh = host_f32(qkv.narrow(1, (NH + NKV) * D, NKV * D));
  // Successive tokens of one sequence (extend): each attends before the next enters the cache,
  // on the host. A batch: its tokens enter, then one attention, on the device's twin of the
  // pages where there is one.
  at::Tensor qh, out, att;
  if (consecutive) {
    qh = host_f32(q);  // [n][NH][D]
    out = at::empty({n, NH * D}, at::kFloat);
  }
  for (int64_t i = 0; i < n; ++i) {
    kv[static_cast<size_t>(i)]->append(layer, kh.data_ptr<float>() + i * NKV * D,
                                       vh.data_ptr<float>() + i * NKV * D);
    if (consecutive) {
      attend(layer, {kv[static_cast<size_t>(i)]}, qh.data_ptr<float>() + i * NH * D,
             out.data_ptr<float>() + i * NH * D, cfg_);
    }
  }
  if (kv_mirror_ && !kv_mirror_->active() && !kv_mirror_noted_) {
    std::fprintf(stderr, "ramstream: %s\n", kv_mirror_->reason().c_str());
    kv_mirror_noted_ = true;
  }
  if (!consecutive && kv_mirror_ && kv_mirror_->active()) {
    const at::Tensor qd = q.to(at::kFloat).contiguous();  // [n][NH][1][D] on the device
    at::Tensor od = at::empty({n, NH * D}, qd.options());
    if (kv_mirror_->attend(layer, kv, qd.data_ptr<float>(), od.data_ptr<float>(), cfg_)) {
      att = od.to(x.scalar_type());
    }
  }
  if (!att.defined()) {
    if (!consecutive) {
      qh = host_f32(q);
      out = at::empty({n, NH * D}, at::kFloat);
      attend(layer, kv, qh.data_ptr<float>(), out.data_ptr<float>(), cfg_);
    }
    att = out.to(x.device(), x.scalar_type());
  }
  const at::Tensor x2 = x + linear(att, w.wo, w.bo);
  return mlp_residual(w, x2, cfg_);
}

void Generator::head_logits(const pipeline::SlotViews& w, const at::Tensor& x, DecodeBatch& batch,
                            const std::vector<int64_t>& rows) {
  const at::Tensor h = rmsnorm(x, w.final_norm, cfg_.rms_norm_eps);
  const at::Tensor logits = host_f32(linear(h, w.lm_head, at::Tensor()));  // [n,V]
  const int64_t V = cfg_.vocab_size;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::copy(logits.data_ptr<float>() + static_cast<int64_t>(i) * V,
              logits.data_ptr<float>() + static_cast<int64_t>(i + 1) * V,
              batch.logits_.begin() + rows[i] * V);
  }
}

DecodeBatch Generator::prefill(const std::vector<std::vector<int32_t>>& prompts, int64_t context,
                               const std::vector<int64_t>& row_context) {
  if (prompts.empty()) throw std::invalid_argument("Generator::prefill: no prompts");
  if (cfg_.max_position_embeddings > 0 && context > cfg_.max_position_embeddings) {
    throw std::invalid_argument("context of " + std::to_string(context) +
                                " tokens exceeds the model's " +
                                std::to_string(cfg_.max_position_embeddings));
  }
  if (cfg_.sliding_window > 0 && context > cfg_.sliding_window) {
    throw std::invalid_argument("context of " + std::to_string(context) +
                                " tokens exceeds the sliding window (" +
                                std::to_string(cfg_.sliding_window) + "), which is not supported");
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) {
      throw std::invalid_argument("prompt " + std::to_string(i) + " is empty");
    }
    if (static_cast<int64_t>(prompts[i].size()) > context) {
      throw std::invalid_argument("prompt " + std::to_string(i) + " has " +
                                  std::to_string(prompts[i].size()) +
                                  " tokens, more than the context of " + std::to_string(context));
    }
  }
  const auto scope = dev_.make_current(*compute_);
  if (!rope_.cos.defined() || rope_.cos.size(0) < context) {
    rope_ = autograd::make_rope_tables(cfg_, context, dev_.compute_dtype(), dev_.torch_device());
  }
  DecodeBatch batch;
  batch.context = context;
  batch.vocab_ = cfg_.vocab_size;
  const int64_t B = static_cast<int64_t>(prompts.size());
  batch.logits_.assign(static_cast<size_t>(B * cfg_.vocab_size), 0.0f);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t rc =
        row_context.empty() ? context : std::min(context, row_context[static_cast<size_t>(b)]);
    batch.kv.push_back(std::make_unique<SequenceKv>(options_.kv, cfg_, rc, kv_pool_));
    batch.pos.push_back(static_cast<int64_t>(prompts[static_cast<size_t>(b)].size()));
  }
  const pipeline::StagePlan& plan = store_.plan();
  std::vector<at::Tensor> x(static_cast<size_t>(B));
  int cur = streamer_->acquire(0, -1);
  for (int64_t s = 0; s < plan.num_stages(); ++s) {
    const int next = s + 1 < plan.num_stages() ? streamer_->acquire(s + 1, cur) : -1;
    const pipeline::SlotViews& w = streamer_->begin_use(cur, *compute_);
    const pipeline::Stage& st = plan.stages[static_cast<size_t>(s)];
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor& xb = x[static_cast<size_t>(b)];
      if (st.kind == pipeline::StageKind::kEmbedding) {
        const auto& p = prompts[static_cast<size_t>(b)];
        const at::Tensor ids =
            at::tensor(std::vector<int64_t>(p.begin(), p.end()), at::kLong).to(dev_.torch_device());
        xb = at::empty({ids.size(0), cfg_.hidden_size}, w.embedding.options());
        autograd::embedding_forward(xb, ids, w.embedding);
      } else if (st.kind == pipeline::StageKind::kBlock) {
        xb = block_prefill(w.block, xb, *batch.kv[static_cast<size_t>(b)], st.layer);
      } else {
        head_logits(w, xb.narrow(0, xb.size(0) - 1, 1), batch, {b});
      }
    }
    streamer_->end_use(cur, *compute_);
    cur = next;
  }
  return batch;
}

void Generator::decode(DecodeBatch& batch, const std::vector<int32_t>& tokens,
                       const std::vector<int64_t>& rows) {
  if (tokens.size() != rows.size()) {
    throw std::invalid_argument("Generator::decode: tokens and rows differ in length");
  }
  if (rows.empty()) return;
  for (int64_t r : rows) {
    if (r < 0 || r >= batch.size()) throw std::invalid_argument("Generator::decode: bad row");
    if (!batch.kv[static_cast<size_t>(r)]) {
      throw std::invalid_argument("Generator::decode: row " + std::to_string(r) + " was released");
    }
    if (batch.pos[static_cast<size_t>(r)] >= batch.context) {
      throw std::invalid_argument("Generator::decode: row " + std::to_string(r) +
                                  " reached its context of " + std::to_string(batch.context));
    }
  }
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t mb = std::max<int64_t>(1, options_.micro_batch);
  std::vector<DecodeRows> micro;
  for (int64_t first = 0; first < n; first += mb) {
    DecodeRows m;
    for (int64_t i = first; i < std::min(n, first + mb); ++i) {
      const int64_t r = rows[static_cast<size_t>(i)];
      m.rows.push_back(r);
      m.kv.push_back(batch.kv[static_cast<size_t>(r)].get());
      m.ids.push_back(tokens[static_cast<size_t>(i)]);
      m.pos.push_back(batch.pos[static_cast<size_t>(r)]);
    }
    micro.push_back(std::move(m));
  }
  run_stages(micro, batch, /*consecutive=*/false);
  for (int64_t r : rows) batch.pos[static_cast<size_t>(r)] += 1;
}

void Generator::extend(DecodeBatch& batch, int64_t row, const std::vector<int32_t>& tokens) {
  if (row < 0 || row >= batch.size() || !batch.kv[static_cast<size_t>(row)]) {
    throw std::invalid_argument("Generator::extend: bad or released row " + std::to_string(row));
  }
  if (tokens.empty()) return;
  const int64_t p = batch.pos[static_cast<size_t>(row)];
  if (p + static_cast<int64_t>(tokens.size()) > batch.context) {
    throw std::invalid_argument("Generator::extend: " + std::to_string(tokens.size()) +
                                " tokens at position " + std::to_string(p) +
                                " pass the context of " + std::to_string(batch.context));
  }
  DecodeRows m;
  for (size_t i = 0; i < tokens.size(); ++i) {
    m.rows.push_back(row);
    m.kv.push_back(batch.kv[static_cast<size_t>(row)].get());
    m.ids.push_back(tokens[i]);
    m.pos.push_back(p + static_cast<int64_t>(i));
  }
  std::vector<DecodeRows> micro;
  micro.push_back(std::move(m));
  run_stages(micro, batch, /*consecutive=*/true);
  batch.pos[static_cast<size_t>(row)] += static_cast<int64_t>(tokens.size());
}

void Generator::run_stages(std::vector<DecodeRows>& micro, DecodeBatch& batch, bool consecutive) {
  const auto scope = dev_.make_current(*compute_);
  const pipeline::StagePlan& plan = store_.plan();
  std::vector<at::Tensor> ids(micro.size()), pos(micro.size()), x(micro.size());
  for (size_t i = 0; i < micro.size(); ++i) {
    const int64_t k = static_cast<int64_t>(micro[i].ids.size());
    ids[i] = at::tensor(micro[i].ids, at::kLong).to(dev_.torch_device());
    pos[i] = at::tensor(micro[i].pos, at::kLong).view({k, 1}).to(dev_.torch_device());
  }
  int cur = streamer_->acquire(0, -1);
  for (int64_t s = 0; s < plan.num_stages(); ++s) {
    const int next = s + 1 < plan.num_stages() ? streamer_->acquire(s + 1, cur) : -1;
    const pipeline::SlotViews& w = streamer_->begin_use(cur, *compute_);
    const pipeline::Stage& st = plan.stages[static_cast<size_t>(s)];
    for (size_t i = 0; i < micro.size(); ++i) {
      if (st.kind == pipeline::StageKind::kEmbedding) {
        x[i] = at::empty({ids[i].size(0), cfg_.hidden_size}, w.embedding.options());
        autograd::embedding_forward(x[i], ids[i], w.embedding);
      } else if (st.kind == pipeline::StageKind::kBlock) {
        x[i] = block_decode(w.block, x[i], micro[i].kv, pos[i], st.layer, consecutive);
      } else if (consecutive) {  // one sequence: the logits of its last token
        head_logits(w, x[i].narrow(0, x[i].size(0) - 1, 1), batch, {micro[i].rows.back()});
      } else {
        head_logits(w, x[i], batch, micro[i].rows);
      }
    }
    streamer_->end_use(cur, *compute_);
    cur = next;
  }
}

GenerateResult Generator::generate(const std::vector<std::vector<int32_t>>& prompts,
                                   const GenerateOptions& options) {
  const std::string bad = validate(options.sampling);
  if (!bad.empty()) throw std::invalid_argument(bad);
  if (options.max_new_tokens < 1) {
    throw std::invalid_argument("--max-new-tokens must be >= 1, got " +
                                std::to_string(options.max_new_tokens));
  }
  int64_t longest = 0;
  for (const auto& p : prompts)
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  int64_t context = longest + options.max_new_tokens;
  if (cfg_.max_position_embeddings > 0 && context > cfg_.max_position_embeddings) {
    if (longest >= cfg_.max_position_embeddings) {
      throw std::invalid_argument("prompt of " + std::to_string(longest) +
                                  " tokens does not fit the model's context of " +
                                  std::to_string(cfg_.max_position_embeddings));
    }
    context = cfg_.max_position_embeddings;  // rows stop at the context ("length")
  }
  std::vector<int64_t> row_context;
  for (const auto& p : prompts) {
    row_context.push_back(
        std::min(context, static_cast<int64_t>(p.size()) + options.max_new_tokens));
  }
  const auto t0 = Clock::now();
  DecodeBatch batch = prefill(prompts, context, row_context);
  const double prefill_s = seconds_since(t0);
  std::vector<std::vector<int32_t>> history(prompts.begin(), prompts.end());
  GenerateResult res = sample_loop(batch, history, options, /*release=*/true);
  res.prefill_s = prefill_s;
  for (const auto& p : prompts) res.prompt_tokens += static_cast<int64_t>(p.size());
  return res;
}

GenerateResult Generator::generate_on(DecodeBatch& batch,
                                      std::vector<std::vector<int32_t>>& history,
                                      const GenerateOptions& options) {
  const std::string bad = validate(options.sampling);
  if (!bad.empty()) throw std::invalid_argument(bad);
  if (history.size() != static_cast<size_t>(batch.size())) {
    throw std::invalid_argument("Generator::generate_on: one history per row");
  }
  return sample_loop(batch, history, options, /*release=*/false);
}

GenerateResult Generator::sample_loop(DecodeBatch& batch,
                                      std::vector<std::vector<int32_t>>& history,
                                      const GenerateOptions& options, bool release) {
  GenerateResult res;
  int64_t peak_pages = kv_pool_->pages_in_use();
  const int64_t B = batch.size();
  res.tokens.resize(static_cast<size_t>(B));
  res.stop.assign(static_cast<size_t>(B), "length");
  std::vector<Sampler> samplers;
  for (int64_t b = 0; b < B; ++b) samplers.emplace_back(options.sampling, static_cast<uint64_t>(b));
  std::vector<int64_t> active;
  for (int64_t b = 0; b < B; ++b) {
    if (batch.kv[static_cast<size_t>(b)]) active.push_back(b);
  }
  const auto t1 = Clock::now();
  const int64_t weight_bytes_before = weight_bytes_loaded();
  for (int64_t step = 0; !active.empty(); ++step) {
    std::vector<int64_t> next_rows;
    std::vector<int32_t> next_tokens;
    for (int64_t r : active) {
      const int32_t tok = samplers[static_cast<size_t>(r)].next(batch.logits(r), batch.vocab(),
                                                                history[static_cast<size_t>(r)]);
      res.tokens[static_cast<size_t>(r)].push_back(tok);
      history[static_cast<size_t>(r)].push_back(tok);
      ++res.new_tokens;
      bool go_on = true;
      if (options.on_token && !options.on_token(r, tok)) {
        res.stop[static_cast<size_t>(r)] = "stop";
        go_on = false;
      }
      if (go_on && !options.ignore_eos &&
          std::find(options.stop_ids.begin(), options.stop_ids.end(), tok) !=
              options.stop_ids.end()) {
        res.stop[static_cast<size_t>(r)] = "eos";
        go_on = false;
      }
      const bool room = static_cast<int64_t>(res.tokens[static_cast<size_t>(r)].size()) <
                            options.max_new_tokens &&
                        batch.position(r) < batch.context;
      if (go_on && room) {
        next_rows.push_back(r);
        next_tokens.push_back(tok);
      } else {
        res.kv_tokens += batch.position(r);
        res.kv_bytes += batch.kv[static_cast<size_t>(r)]->bytes();
        if (release) batch.release(r);  // its pages go to the rows still running
      }
    }
    active = next_rows;
    if (active.empty()) break;
    decode(batch, next_tokens, active);
    ++res.decode_steps;
    peak_pages = std::max(peak_pages, kv_pool_->pages_in_use());
  }
  res.decode_s = seconds_since(t1);
  res.decode_weight_bytes = weight_bytes_loaded() - weight_bytes_before;
  res.kv_pages = peak_pages;
  return res;
}

}  // namespace ramstream::inference
