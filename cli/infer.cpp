// `ramstream generate`, `chat` and `eval`: thin drivers over inference/session.h.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "inference/evaluate.h"
#include "inference/session.h"
#include "planner/planner.h"
#include "util/json_read.h"
#include "util/user_file.h"

namespace ramstream::cli {
namespace {

using inference::GenerateOptions;
using inference::GenerateResult;
using inference::Session;

std::unique_ptr<Session> open(const InferenceArgs& a, const char* command) {
  Result<inference::KvCacheConfig> kv =
      inference::KvCacheConfig::parse(a.kv_cache, a.kv_group, a.kv_residual, a.kv_budget);
  if (!kv.ok()) throw std::invalid_argument(kv.error().message);
  if (a.batch_size < 1) {
    throw std::invalid_argument("--batch-size must be >= 1, got " + std::to_string(a.batch_size));
  }
  inference::SessionOptions o;
  o.kv = kv.value();
  o.kv.sink = a.kv_sink;
  Result<kernels::QuantFit> fit = inference::parse_value_fit(a.kv_value_fit);
  if (!fit.ok()) throw std::invalid_argument(fit.error().message);
  o.kv.value_fit = fit.value();
  o.kv.key_outliers = a.kv_key_outliers;
  o.device = a.device;
  o.micro_batch = a.batch_size;
  if (a.kv_memory_gib < 0) {
    throw std::invalid_argument("--kv-memory must be >= 0 GiB, got " +
                                std::to_string(a.kv_memory_gib));
  }
  o.kv_max_bytes = static_cast<int64_t>(a.kv_memory_gib * double(1ull << 30));
  if (a.kv_device_memory == "auto") {
    o.kv_device_bytes = -1;
  } else if (a.kv_device_memory == "off") {
    o.kv_device_bytes = 0;
  } else {
    char* end = nullptr;
    const double gib = std::strtod(a.kv_device_memory.c_str(), &end);
    if (end == a.kv_device_memory.c_str() || *end != '\0' || !(gib > 0)) {
      throw std::invalid_argument("--kv-device-memory '" + a.kv_device_memory +
                                  "': give auto, off or a number of GiB > 0");
    }
    o.kv_device_bytes = static_cast<int64_t>(gib * double(1ull << 30));
  }
  if (a.weights_device_gib < 0 && a.weights_device_gib != -1) {
    throw std::invalid_argument("--weights-device-memory must be >= 0 GiB (or -1: no limit), got " +
                                std::to_string(a.weights_device_gib));
  }
  if (a.weights_device_gib >= 0) {
    o.weight_device_bytes = static_cast<int64_t>(a.weights_device_gib * double(1ull << 30));
  }
  Result<std::unique_ptr<Session>> s = inference::open_session(a.model, o);
  if (!s.ok()) throw std::runtime_error(s.error().message);
  std::fprintf(stderr, "%s: %s\n", command, s.value()->describe().c_str());
  return std::move(s).value();
}

// --plan: the planner's decode micro-batch for this batch, set on the session's generator, and
// its prediction of the run, printed next to the measured figures. The session fixes the rest
// (the cache kind, and on CUDA the resident stages: all that fit, which is also what the planner
// picks for time).
struct RunPrediction {
  bool has = false;
  planner::Prediction predicted;
};

RunPrediction plan_inference(const InferenceArgs& a, Session& s, int64_t batch,
                             int64_t prompt_tokens, int64_t new_tokens, const char* command) {
  RunPrediction out;
  if (a.plan == "none") return out;
  planner::Objective objective = planner::Objective::kTime;
  if (a.plan != "auto" && !planner::parse_objective(a.plan, &objective)) {
    throw std::invalid_argument("--plan '" + a.plan +
                                "': expected none, auto, time, energy or balanced");
  }
  Result<planner::HardwareProfile> hw = planner::hardware_profile_for(a.plan_hardware, {});
  if (!hw.ok())
    throw std::runtime_error("--plan-hardware " + a.plan_hardware + ": " + hw.error().message);
  planner::InferWorkload w;
  w.model = s.config();
  w.batch = std::max<int64_t>(1, batch);
  w.prompt_tokens = std::max<int64_t>(1, prompt_tokens);
  w.new_tokens = new_tokens;
  w.use_gpu = s.device().kind() == pipeline::DeviceKind::kCuda;
  const inference::KvCacheConfig& kv = s.generator().options().kv;
  planner::InferSettings base;
  base.kv = kv.bits == 4   ? planner::KvKind::kKivi4
            : kv.bits == 2 ? planner::KvKind::kKivi2
                           : planner::KvKind::kFull;
  base.kv_group = kv.group;
  base.kv_residual = kv.residual;
  base.kv_key_outliers = kv.key_outliers;
  Result<planner::InferPlan> plan = planner::plan_infer(hw.value(), w, objective, {base.kv}, base);
  if (!plan.ok()) throw std::runtime_error("--plan " + a.plan + ": " + plan.error().message);
  const planner::InferCandidate& c = plan.value().chosen;
  s.generator().set_micro_batch(c.settings.micro_batch);
  std::fprintf(stderr,
               "%s: plan %s (%s) on %s: %s; predicted %.2f s (prefill %.2f, decode %.2f), "
               "%.1f new tokens/s, %.1f J (modelled)%s\n",
               command, a.plan.c_str(), planner::objective_name(objective), hw.value().name.c_str(),
               planner::describe(c.settings, w.use_gpu).c_str(), c.predicted.step_s,
               c.predicted.prefill_s, c.predicted.decode_s, c.predicted.tokens_per_s(),
               c.predicted.energy_j,
               kv.h2o ? "; h2o eviction is not modelled (an upper bound)" : "");
  out.has = true;
  out.predicted = c.predicted;
  return out;
}

void add_prediction(nlohmann::json& j, const RunPrediction& p) {
  if (!p.has) return;
  j["predicted_s"] = p.predicted.step_s;
  j["predicted_prefill_s"] = p.predicted.prefill_s;
  j["predicted_decode_s"] = p.predicted.decode_s;
  j["predicted_energy_j"] = p.predicted.energy_j;
  j["predicted_tokens_per_s"] = p.predicted.tokens_per_s();
}

GenerateOptions generate_options(const SamplingArgs& a, const Session& s) {
  GenerateOptions g;
  g.max_new_tokens = a.max_new_tokens;
  g.sampling.temperature = static_cast<float>(a.temperature);
  g.sampling.top_k = a.top_k;
  g.sampling.top_p = static_cast<float>(a.top_p);
  g.sampling.repetition_penalty = static_cast<float>(a.repetition_penalty);
  g.sampling.seed = a.seed;
  g.stop_ids = s.stop_ids();
  g.ignore_eos = a.ignore_eos;
  const std::string bad = inference::validate(g.sampling);
  if (!bad.empty()) throw std::invalid_argument(bad);
  return g;
}

// Decodes one row's tokens as they come: prints what is new (never half a character), and
// finds stop strings.
struct TextStream {
  const data::Tokenizer* tok = nullptr;
  const std::vector<int32_t>* stop_ids = nullptr;
  const std::vector<std::string>* stop = nullptr;
  std::vector<int32_t> ids;
  std::string text;    // decoded so far (cut at a stop string once one is found)
  size_t printed = 0;  // bytes of `text` already written
  bool stopped = false;

  // Returns false once a stop string has appeared.
  bool add(int32_t id) {
    if (std::find(stop_ids->begin(), stop_ids->end(), id) != stop_ids->end()) return true;
    ids.push_back(id);
    text = tok->decode(ids, /*skip_special=*/true);
    for (const std::string& s : *stop) {
      const size_t at = text.find(s);
      if (!s.empty() && at != std::string::npos) {
        text.resize(at);
        stopped = true;
      }
    }
    return !stopped;
  }
  // The part that is complete: not a trailing replacement character of a cut UTF-8 sequence,
  // nor (while going on) the start of a stop string.
  void flush(std::FILE* out, bool final) {
    size_t end = text.size();
    static const std::string kCut = "\xEF\xBF\xBD";
    if (!final && end >= 3 && text.compare(end - 3, 3, kCut) == 0) end -= 3;
    if (!final) {
      for (const std::string& s : *stop) {
        for (size_t k = std::min(s.size() - 1, end); k > 0; --k) {
          if (text.compare(end - k, k, s, 0, k) == 0) {
            end -= k;
            break;
          }
        }
      }
    }
    if (end > printed) {
      std::fwrite(text.data() + printed, 1, end - printed, out);
      std::fflush(out);
      printed = end;
    }
  }
};

// Threads the GEMMs and our loops use: OMP_NUM_THREADS as util/runtime_defaults.h sets it.
int64_t thread_count() {
  const char* v = std::getenv("OMP_NUM_THREADS");
  return v ? std::atoll(v) : 0;
}

nlohmann::json run_summary(const GenerateResult& r, const InferenceArgs& a, int64_t prompts) {
  const int64_t rows = static_cast<int64_t>(r.tokens.size());
  const double decode_tps = r.decode_s > 0 ? double(r.new_tokens - rows) / r.decode_s : 0.0;
  return {{"prompts", prompts},
          {"batch", std::min<int64_t>(a.batch_size, prompts)},
          {"prompt_tokens", r.prompt_tokens},
          {"new_tokens", r.new_tokens},
          {"prefill_s", r.prefill_s},
          {"decode_s", r.decode_s},
          {"prefill_tokens_per_s", r.prefill_s > 0 ? double(r.prompt_tokens) / r.prefill_s : 0.0},
          {"decode_tokens_per_s", decode_tps},
          {"decode_weight_bytes_per_step",
           r.decode_steps > 0 ? double(r.decode_weight_bytes) / double(r.decode_steps) : 0.0},
          {"kv_cache", a.kv_cache},
          {"kv_bytes_per_token", r.kv_tokens > 0 ? double(r.kv_bytes) / double(r.kv_tokens) : 0.0},
          {"kv_pages_peak", r.kv_pages},
          {"threads", thread_count()}};
}

struct Prompt {
  nlohmann::json id;
  std::vector<int32_t> ids;
};

// Calls fn(object, "path:line") for every non-blank line of the JSONL file `path`; errors name
// the file and line.
template <class F>
void for_each_jsonl_object(const std::string& path, const char* what, F fn) {
  Result<std::string> text = read_user_file(path, what, int64_t{1} << 31);
  if (!text.ok()) throw std::runtime_error(text.error().message);
  const std::string& t = text.value();
  size_t begin = 0;
  int64_t line = 0;
  while (begin < t.size()) {
    size_t end = t.find('\n', begin);
    if (end == std::string::npos) end = t.size();
    ++line;
    const std::string row = t.substr(begin, end - begin);
    begin = end + 1;
    if (row.find_first_not_of(" \t\r") == std::string::npos) continue;
    Result<nlohmann::json> j = parse_json(row, path, {}, line);
    if (!j.ok()) throw std::runtime_error(j.error().message);
    const std::string where = path + ":" + std::to_string(line);
    if (!j.value().is_object()) throw std::runtime_error(where + ": expected an object per line");
    if (!fn(j.value(), where)) break;
  }
}

std::vector<data::ChatMessage> messages_of(const nlohmann::json& v, const std::string& where) {
  if (!v["messages"].is_array()) throw std::runtime_error(where + ": 'messages' must be a list");
  std::vector<data::ChatMessage> msgs;
  for (const auto& m : v["messages"]) {
    if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() ||
        !m["content"].is_string()) {
      throw std::runtime_error(where + ": each message needs string 'role' and 'content'");
    }
    msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return msgs;
}

std::vector<Prompt> read_batch_file(const std::string& path, const Session& s, bool raw) {
  std::vector<Prompt> out;
  for_each_jsonl_object(
      path, "a JSONL file of prompts", [&](const nlohmann::json& v, const std::string& where) {
        Prompt p;
        p.id = v.contains("id") ? v["id"] : nlohmann::json(static_cast<int64_t>(out.size()));
        if (v.contains("messages")) {
          p.ids = s.encode_chat(messages_of(v, where));
        } else if (v.contains("prompt") && v["prompt"].is_string()) {
          const std::string prompt = v["prompt"].get<std::string>();
          p.ids =
              raw || !s.has_chat_format() ? s.encode(prompt) : s.encode_chat({{"user", prompt}});
        } else {
          throw std::runtime_error(where + ": expected a string 'prompt' or a list 'messages'");
        }
        out.push_back(std::move(p));
        return true;
      });
  if (out.empty()) throw std::runtime_error(path + ": no prompts");
  return out;
}

std::string strip(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

int generate_command(const GenerateArgs& a) {
  const int given = !a.prompt.empty() + !a.prompt_file.empty() + !a.batch_file.empty();
  if (given != 1) {
    throw std::invalid_argument("give exactly one of --prompt, --prompt-file, --batch-file");
  }
  std::unique_ptr<Session> s = open(a.inf, "ramstream generate");
  GenerateOptions go = generate_options(a.sampling, *s);
  std::vector<Prompt> prompts;
  if (!a.batch_file.empty()) {
    prompts = read_batch_file(a.batch_file, *s, a.raw);
  } else {
    std::string text = a.prompt;
    if (!a.prompt_file.empty()) {
      Result<std::string> t = read_user_file(a.prompt_file, "a prompt file", int64_t{1} << 30);
      if (!t.ok()) throw std::runtime_error(t.error().message);
      text = t.value();
    }
    Prompt p;
    p.id = 0;
    p.ids = a.raw || !s->has_chat_format() ? s->encode(text) : s->encode_chat({{"user", text}});
    prompts.push_back(std::move(p));
  }
  const int64_t ctx = s->config().max_position_embeddings;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (ctx > 0 && static_cast<int64_t>(prompts[i].ids.size()) >= ctx) {
      throw std::invalid_argument(
          (a.batch_file.empty() ? std::string("the prompt")
                                : a.batch_file + " prompt " + prompts[i].id.dump()) +
          " has " + std::to_string(prompts[i].ids.size()) +
          " tokens: no room left in the model's context of " + std::to_string(ctx));
    }
  }
  int64_t prompt_tokens = 0;
  for (const Prompt& p : prompts) prompt_tokens += int64_t(p.ids.size());
  const int64_t first_batch = std::min<int64_t>(a.inf.batch_size, int64_t(prompts.size()));
  const RunPrediction predicted =
      plan_inference(a.inf, *s, first_batch, prompt_tokens / std::max<size_t>(1, prompts.size()),
                     a.sampling.max_new_tokens, "ramstream generate");
  const bool stream = a.batch_file.empty() && a.output.empty();
  std::FILE* results = stdout;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> out_file(nullptr, std::fclose);
  if (!a.output.empty()) {
    out_file.reset(std::fopen(a.output.c_str(), "w"));
    if (!out_file) throw std::runtime_error(a.output + ": cannot create");
    results = out_file.get();
  }
  GenerateResult total;
  const int64_t n = static_cast<int64_t>(prompts.size());
  for (int64_t first = 0; first < n; first += a.inf.batch_size) {
    const int64_t B = std::min(a.inf.batch_size, n - first);
    std::vector<std::vector<int32_t>> ids;
    for (int64_t i = 0; i < B; ++i) ids.push_back(prompts[static_cast<size_t>(first + i)].ids);
    std::vector<TextStream> rows(static_cast<size_t>(B));
    for (TextStream& r : rows) {
      r.tok = &s->tokenizer();
      r.stop_ids = &go.stop_ids;
      r.stop = &a.sampling.stop;
    }
    go.on_token = [&](int64_t row, int32_t id) {
      TextStream& r = rows[static_cast<size_t>(row)];
      const bool go_on = r.add(id);
      if (stream) r.flush(stdout, false);
      return go_on;
    };
    if (n > B) {
      std::fprintf(stderr, "ramstream generate: prompts %lld-%lld of %lld\n", (long long)first + 1,
                   (long long)(first + B), (long long)n);
    }
    const GenerateResult r = s->generator().generate(ids, go);
    for (int64_t i = 0; i < B; ++i) {
      TextStream& t = rows[static_cast<size_t>(i)];
      if (stream) {
        t.flush(stdout, true);
        std::fputc('\n', stdout);
        continue;
      }
      const nlohmann::json row = {{"id", prompts[static_cast<size_t>(first + i)].id},
                                  {"text", t.text},
                                  {"prompt_tokens", ids[static_cast<size_t>(i)].size()},
                                  {"new_tokens", r.tokens[static_cast<size_t>(i)].size()},
                                  {"stop", r.stop[static_cast<size_t>(i)]}};
      std::fprintf(results, "%s\n", row.dump().c_str());
    }
    total.tokens.insert(total.tokens.end(), r.tokens.begin(), r.tokens.end());
    total.prompt_tokens += r.prompt_tokens;
    total.new_tokens += r.new_tokens;
    total.prefill_s += r.prefill_s;
    total.decode_s += r.decode_s;
    total.kv_bytes += r.kv_bytes;
    total.kv_tokens += r.kv_tokens;
    total.kv_pages = std::max(total.kv_pages, r.kv_pages);
  }
  nlohmann::json sum = run_summary(total, a.inf, n);
  sum["kv_page_bytes"] = s->generator().kv_pool().page_bytes();
  if (predicted.has) {
    // The planner predicts one batch of max_new_tokens per prompt: compare per batch.
    const double batches = std::ceil(double(n) / double(std::max<int64_t>(1, first_batch)));
    std::fprintf(stderr,
                 "ramstream generate: measured %.2f s per batch (prefill %.2f, decode %.2f), "
                 "predicted %.2f s (prefill %.2f, decode %.2f)\n",
                 (total.prefill_s + total.decode_s) / batches, total.prefill_s / batches,
                 total.decode_s / batches, predicted.predicted.step_s,
                 predicted.predicted.prefill_s, predicted.predicted.decode_s);
    add_prediction(sum, predicted);
  }
  std::fprintf(stderr, "ramstream generate: %s\n", s->generator().kv_pool().describe().c_str());
  std::fprintf(stderr,
               "ramstream generate: %lld new tokens, prefill %.2f s (%.1f tokens/s), "
               "decode %.2f s (%.1f tokens/s), KV %.0f bytes/token\n",
               (long long)total.new_tokens, total.prefill_s,
               sum["prefill_tokens_per_s"].get<double>(), total.decode_s,
               sum["decode_tokens_per_s"].get<double>(), sum["kv_bytes_per_token"].get<double>());
  if (a.inf.json) std::printf("%s\n", sum.dump().c_str());
  return 0;
}

int chat_command(const ChatArgs& a) {
  std::unique_ptr<Session> s = open(a.inf, "ramstream chat");
  if (!s->has_chat_format()) {
    throw std::invalid_argument(a.inf.model +
                                ": the model has no chat template, so `chat` cannot format turns "
                                "(use `ramstream generate --raw` for a base model)");
  }
  GenerateOptions go = generate_options(a.sampling, *s);
  const bool tty = ::isatty(STDIN_FILENO) != 0;
  std::vector<data::ChatMessage> convo;
  if (!a.system.empty()) convo.push_back({"system", a.system});
  if (tty) std::fprintf(stderr, "/reset starts over, /exit (or Ctrl-D) ends.\n");
  // The conversation's cache is kept between turns. The cache holds the tokens of `cached_text`
  // (the rendered conversation up to the end of the last reply's content) except `pending` (a
  // reply's last token, sampled but not fed). A new turn renders the conversation again and feeds
  // only what follows cached_text (extend): the end-of-turn marker, the user's message, the
  // assistant header. The reply goes into the conversation exactly as decoded, so the rendering
  // continues the cached text; when it does not (a stop string cut the reply), the conversation
  // is prefilled again.
  const int64_t model_ctx = s->config().max_position_embeddings;
  const int64_t chat_ctx = model_ctx > 0 ? model_ctx : 4096;
  inference::Generator& gen = s->generator();
  std::unique_ptr<inference::DecodeBatch> cache;
  std::string cached_text;
  std::vector<int32_t> pending, seen;  // seen: every token of the conversation so far
  std::string line;
  int64_t turn = 0;
  while (true) {
    if (tty) {
      std::fprintf(stderr, "> ");
      std::fflush(stderr);
    }
    if (!std::getline(std::cin, line)) break;
    const std::string msg = strip(line);
    if (msg.empty()) continue;
    if (msg == "/exit" || msg == "/quit") break;
    if (msg == "/reset") {
      convo.resize(a.system.empty() ? 0 : 1);
      cache.reset();
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    convo.push_back({"user", msg});
    const std::string text = data::render_generation_prompt(s->chat_format(), convo);
    const bool reuse = cache && text.size() > cached_text.size() &&
                       text.compare(0, cached_text.size(), cached_text) == 0;
    std::vector<int32_t> feed;  // reuse: the tokens to add to the cache
    if (reuse) {
      feed = pending;
      const std::vector<int32_t> rest = s->tokenizer().encode(text.substr(cached_text.size()));
      feed.insert(feed.end(), rest.begin(), rest.end());
    } else {
      seen = s->encode_chat(convo);
    }
    const int64_t length = reuse ? cache->position(0) + static_cast<int64_t>(feed.size())
                                 : static_cast<int64_t>(seen.size());
    if (length >= chat_ctx) {
      std::fprintf(stderr,
                   "ramstream chat: the conversation has %lld tokens, the model's context "
                   "is %lld: /reset to start over\n",
                   (long long)length, (long long)chat_ctx);
      convo.pop_back();
      continue;
    }
    TextStream t;
    t.tok = &s->tokenizer();
    t.stop_ids = &go.stop_ids;
    t.stop = &a.sampling.stop;
    go.on_token = [&](int64_t, int32_t id) {
      const bool more = t.add(id);
      t.flush(stdout, false);
      return more;
    };
    go.sampling.seed = a.sampling.seed + static_cast<uint64_t>(turn++);
    const auto t0 = std::chrono::steady_clock::now();
    if (reuse) {
      gen.extend(*cache, 0, feed);
      seen.insert(seen.end(), feed.begin(), feed.end());
    } else {
      cache = std::make_unique<inference::DecodeBatch>(gen.prefill({seen}, chat_ctx));
    }
    const double prefill_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const size_t computed = reuse ? feed.size() : seen.size();
    std::vector<std::vector<int32_t>> history = {seen};
    const GenerateResult r = gen.generate_on(*cache, history, go);
    t.flush(stdout, true);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    const std::vector<int32_t>& reply = r.tokens[0];
    const bool ended = !reply.empty() && std::find(go.stop_ids.begin(), go.stop_ids.end(),
                                                   reply.back()) != go.stop_ids.end();
    seen.insert(seen.end(), reply.begin(), reply.end() - (ended || reply.empty() ? 0 : 1));
    if (ended) seen.pop_back();  // the end marker comes back with the next rendering
    convo.push_back({"assistant", t.text});
    if (t.stopped || cache->position(0) >= chat_ctx) {
      cache.reset();  // the cache holds more than the conversation says: prefill next time
    } else {
      cached_text = text + t.text;
      pending.assign(reply.end() - (ended || reply.empty() ? 0 : 1), reply.end());
    }
    std::fprintf(stderr, "(%zu prompt tokens computed in %.2f s%s; %lld tokens, %.1f tokens/s)\n",
                 computed, prefill_s, reuse ? ", the rest from the kept cache" : "",
                 (long long)r.new_tokens,
                 r.decode_s > 0 ? double(r.new_tokens - 1) / r.decode_s : 0.0);
  }
  return 0;
}

int eval_command(const EvalArgs& a) {
  if (a.data.empty() == a.tasks.empty()) {
    throw std::invalid_argument("give one of --data (perplexity) or --tasks (exact match)");
  }
  std::unique_ptr<Session> s = open(a.inf, "ramstream eval");
  nlohmann::json out = {
      {"kv_cache", a.inf.kv_cache},         {"kv_group", a.inf.kv_group},
      {"kv_residual", a.inf.kv_residual},   {"kv_sink", a.inf.kv_sink},
      {"kv_value_fit", a.inf.kv_value_fit}, {"kv_key_outliers", a.inf.kv_key_outliers},
      {"kv_budget", a.inf.kv_budget}};
  if (!a.data.empty()) {
    Result<std::string> text = read_user_file(a.data, "a text or JSONL file", int64_t{1} << 31);
    if (!text.ok()) throw std::runtime_error(text.error().message);
    std::string body = text.value();
    if (a.data.size() > 6 && a.data.compare(a.data.size() - 6, 6, ".jsonl") == 0) {
      body.clear();
      for_each_jsonl_object(a.data, "a JSONL file of texts",
                            [&](const nlohmann::json& v, const std::string& where) {
                              if (!v.contains("text") || !v["text"].is_string()) {
                                throw std::runtime_error(where + ": expected a string 'text'");
                              }
                              if (!body.empty()) body += "\n\n";
                              body += v["text"].get<std::string>();
                              return true;
                            });
    }
    const std::vector<int32_t> ids = s->encode(body);
    const int64_t ctx = s->config().max_position_embeddings;
    if (ctx > 0 && a.context > ctx) {
      throw std::invalid_argument("--context " + std::to_string(a.context) +
                                  " exceeds the model's context of " + std::to_string(ctx));
    }
    const std::string bad = s->generator().options().kv.validate(s->config().head_dim, a.context);
    if (!bad.empty()) throw std::invalid_argument(bad);
    inference::PerplexityOptions po;
    po.context = a.context;
    po.stride = a.stride;
    po.max_windows = a.max_windows;
    po.batch = a.inf.batch_size;
    const int64_t stride = a.stride > 0 ? a.stride : a.context / 2;
    const RunPrediction predicted =
        plan_inference(a.inf, *s, a.inf.batch_size, a.context - stride, stride, "ramstream eval");
    auto last = std::chrono::steady_clock::now();
    po.progress = [&](int64_t done, int64_t total) {
      const auto now = std::chrono::steady_clock::now();
      if (done < total && now - last < std::chrono::seconds(10)) return;
      last = now;
      std::fprintf(stderr, "ramstream eval: %lld/%lld tokens scored\n", (long long)done,
                   (long long)total);
    };
    const inference::PerplexityResult r = inference::perplexity(s->generator(), ids, po);
    const double tps = r.seconds > 0 ? double(r.tokens) / r.seconds : 0.0;
    std::printf(
        "perplexity %.4f over %lld tokens (%lld windows of %lld, %lld scored each through "
        "the decode path), KV %.1f bytes/token, %.1f tokens/s\n",
        r.perplexity(), (long long)r.tokens, (long long)r.windows, (long long)a.context,
        (long long)(a.stride > 0 ? a.stride : a.context / 2), r.kv_bytes_per_token, tps);
    out.update({{"perplexity", r.perplexity()},
                {"nll", r.tokens > 0 ? r.nll_sum / double(r.tokens) : 0.0},
                {"tokens", r.tokens},
                {"text_tokens", ids.size()},
                {"windows", r.windows},
                {"context", a.context},
                {"stride", a.stride > 0 ? a.stride : a.context / 2},
                {"kv_bytes_per_token", r.kv_bytes_per_token},
                {"tokens_per_s", tps},
                {"seconds", r.seconds}});
    if (predicted.has) {
      // One prediction per batch of windows (prefill context - stride, decode stride).
      const double batches =
          std::ceil(double(r.windows) / double(std::max<int64_t>(1, a.inf.batch_size)));
      const double predicted_s = batches * predicted.predicted.step_s;
      std::fprintf(stderr,
                   "ramstream eval: measured %.2f s (%.1f tokens/s), predicted %.2f s (%.1f "
                   "tokens/s)\n",
                   r.seconds, tps, predicted_s,
                   predicted_s > 0 ? double(r.tokens) / predicted_s : 0.0);
      add_prediction(out, predicted);
      out["predicted_s"] = predicted_s;
      out["predicted_tokens_per_s"] = predicted_s > 0 ? double(r.tokens) / predicted_s : 0.0;
    }
  } else {
    std::vector<std::vector<int32_t>> prompts;
    std::vector<std::string> expected;
    for_each_jsonl_object(
        a.tasks, "a JSONL file of chat tasks",
        [&](const nlohmann::json& v, const std::string& where) {
          if (a.max_examples > 0 && static_cast<int64_t>(prompts.size()) >= a.max_examples) {
            return false;
          }
          if (!v.contains("messages")) {
            throw std::runtime_error(where + ": expected 'messages'");
          }
          std::vector<data::ChatMessage> msgs = messages_of(v, where);
          if (msgs.size() < 2 || msgs.back().role != "assistant") {
            throw std::runtime_error(where + ": the last message must be the assistant's answer");
          }
          expected.push_back(strip(msgs.back().content));
          msgs.pop_back();
          prompts.push_back(s->encode_chat(msgs));
          return true;
        });
    if (prompts.empty()) throw std::runtime_error(a.tasks + ": no tasks");
    GenerateOptions go;
    go.max_new_tokens = a.max_new_tokens;
    go.stop_ids = s->stop_ids();
    int64_t correct = 0, done = 0;
    double seconds = 0;
    const int64_t n = static_cast<int64_t>(prompts.size());
    for (int64_t first = 0; first < n; first += a.inf.batch_size) {
      const int64_t B = std::min(a.inf.batch_size, n - first);
      std::vector<std::vector<int32_t>> chunk(prompts.begin() + first, prompts.begin() + first + B);
      const GenerateResult r = s->generator().generate(chunk, go);
      seconds += r.prefill_s + r.decode_s;
      for (int64_t i = 0; i < B; ++i) {
        std::vector<int32_t> ids = r.tokens[static_cast<size_t>(i)];
        while (!ids.empty() &&
               std::find(go.stop_ids.begin(), go.stop_ids.end(), ids.back()) != go.stop_ids.end()) {
          ids.pop_back();
        }
        const std::string got = strip(s->tokenizer().decode(ids, /*skip_special=*/true));
        correct += got == expected[static_cast<size_t>(first + i)] ? 1 : 0;
      }
      done += B;
      std::fprintf(stderr, "ramstream eval: %lld/%lld examples, %lld exact\n", (long long)done,
                   (long long)n, (long long)correct);
    }
    std::printf("exact match %.1f%% (%lld/%lld)\n", 100.0 * double(correct) / double(n),
                (long long)correct, (long long)n);
    out.update({{"exact_match", double(correct) / double(n)},
                {"correct", correct},
                {"examples", n},
                {"seconds", seconds}});
  }
  if (a.inf.json) std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace ramstream::cli
