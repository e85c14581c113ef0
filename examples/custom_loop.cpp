// A custom training loop on the public API: loads a Hugging Face model folder into a parameter
// store, streams it through an Engine on the CPU (or CUDA with --cuda), and trains it to copy
// a fixed token sequence, printing loss and grad norm per step.
//
//   build/bin/custom_loop tests/fixtures/hf/llama_gqa [--steps 30] [--cuda]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <ramstream/ramstream.h>

namespace rs = ramstream;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: custom_loop MODEL_DIR [--steps N] [--cuda]\n");
    return 2;
  }
  const std::string dir = argv[1];
  int steps = 30;
  bool cuda = false;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
      steps = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--cuda") == 0)
      cuda = true;
  }

  rs::Result<rs::model::ModelConfig> cfg_or = rs::model::load_model_config(dir + "/config.json");
  if (!cfg_or.ok()) {
    std::fprintf(stderr, "%s\n", cfg_or.error().message.c_str());
    return 1;
  }
  const rs::model::ModelConfig cfg = cfg_or.value();
  rs::model::ModelParams weights = rs::model::allocate_model_params(cfg, at::kFloat);
  const rs::Status st = rs::checkpoint::load_hf_weights(dir, cfg, weights);
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", st.error().message.c_str());
    return 1;
  }

  // The device decides the store layout: fp32 grads on the CPU, bf16 working copies on CUDA.
  std::unique_ptr<rs::pipeline::Device> device =
      cuda ? rs::pipeline::make_cuda_device(0) : rs::pipeline::make_cpu_device({});
  rs::pipeline::ParamStoreOptions store_opts;
  store_opts.working_copy_bf16 = cuda;
  store_opts.pin = cuda;
  rs::pipeline::ParamStore store(rs::pipeline::plan_stages(cfg), cfg, store_opts);
  store.load(weights);

  rs::pipeline::EngineOptions opts;
  opts.max_grad_norm = 1.0;
  opts.adamw.lr = 3e-3f;
  const int64_t B = 2, T = 16;
  rs::pipeline::Engine engine(*device, store, opts, B, T);
  std::printf("model %s: %.2fM parameters, %.2f host bytes/param, device %s\n", dir.c_str(),
              store.num_params() / 1e6, store.bytes_per_param(), device->describe().c_str());

  // Task: continue the sequence 0, 1, 2, ... modulo the vocabulary (two micro-batches).
  at::Tensor ids = (at::arange(B * T, at::kLong).view({B, T}) * 3) % cfg.vocab_size;
  const at::Tensor targets = rs::autograd::next_token_targets(ids);
  double first = 0, last = 0;
  for (int step = 1; step <= steps; ++step) {
    rs::pipeline::StepResult s = engine.train_step({ids, ids}, {targets, targets});
    if (step == 1) first = s.loss();
    last = s.loss();
    std::printf("step %3d  loss %.4f  grad norm %.4f\n", step, s.loss(), s.grad_norm());
  }
  engine.synchronize();
  std::printf("loss %.4f -> %.4f\n", first, last);
  return last < first ? 0 : 1;
}
