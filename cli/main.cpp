// The `ramstream` command line: thin parsing over the library.
//
//   ramstream run RECIPE [key.sub=value ...]       # train: a recipe file or a bundled name
//   ramstream ls                                    # the bundled recipes, one line each
//   ramstream show RECIPE [key.sub=value ...]      # the resolved recipe: every key, its value,
//                                                   #   default and meaning (valid YAML)
//   ramstream cp NAME DEST                          # copy a bundled recipe to edit it
//   ramstream validate RECIPE [key.sub=value ...]  # keys, values and the files it names; at most
//                                                   #   50 problems shown, the rest counted; exit 1
//   ramstream inspect --model DIR|FILE.gguf         # architecture, memory per mode, checks
//   ramstream convert --from FILE.gguf --to DIR [--dtype bf16|fp16|fp32]   # GGUF -> HF folder
//   ramstream convert --from DIR --to FILE.gguf [--type f32|f16|bf16|q8_0] # HF folder -> GGUF
//   ramstream generate --model M --prompt TEXT [--kv-cache kivi2] [--temperature 0.7] ...
//   ramstream chat --model M [--system TEXT]       # interactive, the model's chat template
//   ramstream eval --model M --data FILE | --tasks FILE [--kv-cache ...] [--context N] [--json]
//   ramstream --version
//
// An unknown command lists the commands. Whatever goes wrong ends in one line on stderr naming
// the command and, where known, the file, and a non-zero exit (2: the command line or the recipe
// is wrong), never in a signal: exceptions that escape a command are caught here.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "dist/env.h"
#include "dist/launch.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"
#include "util/runtime_defaults.h"
#include "util/torch_compat.h"
#include "util/user_file.h"

namespace rs = ramstream;

namespace {

// A path from the command line in a message: whole unless it is absurdly long.
std::string shown_path(const std::string& path) {
  return path.size() <= 4096 ? path : rs::quote_bounded(path, 200);
}

// " (rank N)" inside a job of several processes (dist/env.h), else "": every rank reports its own
// errors, so each line says whose it is.
std::string rank_label() {
  rs::Result<rs::dist::DistEnv> env = rs::dist::dist_env_from(rs::dist::environ_map());
  if (!env.ok() || !env.value().distributed()) return "";
  return " (rank " + std::to_string(env.value().rank) + ")";
}

int run(const std::string& recipe_name, const std::vector<std::string>& overrides) {
  rs::Result<rs::trainer::Recipe> recipe = rs::trainer::load_recipe(recipe_name, overrides);
  if (!recipe.ok()) {
    std::fprintf(stderr, "ramstream run: %s\n", recipe.error().message.c_str());
    return 2;
  }
  const std::vector<std::string> missing = rs::trainer::recipe_path_problems(recipe.value());
  for (const std::string& p : missing) {
    std::fprintf(stderr, "ramstream run: %s: %s\n", recipe.value().source.c_str(), p.c_str());
  }
  if (!missing.empty()) return 1;
  const std::string who = "ramstream run" + rank_label();
  rs::Result<std::unique_ptr<rs::trainer::Trainer>> trainer =
      rs::trainer::Trainer::create(recipe.value());
  if (!trainer.ok()) {
    std::fprintf(stderr, "%s: %s\n", who.c_str(), trainer.error().message.c_str());
    return 1;
  }
  rs::Result<rs::trainer::TrainSummary> sum = trainer.value()->train();
  if (!sum.ok()) {
    std::fprintf(stderr, "%s: %s\n", who.c_str(), sum.error().message.c_str());
    return 1;
  }
  // Data parallel: rank 0 speaks for the job.
  if (rank_label().empty() || rank_label() == " (rank 0)") {
    std::fputs(rs::trainer::summary_text(sum.value()).c_str(), stdout);
  }
  return sum.value().exit_status();  // 130 / 143 after Ctrl-C / SIGTERM (saved first)
}

int list_recipes() {
  size_t width = 0;
  for (const rs::trainer::BundledRecipe& r : rs::trainer::bundled_recipes()) {
    width = std::max(width, r.name.size());
  }
  for (const rs::trainer::BundledRecipe& r : rs::trainer::bundled_recipes()) {
    std::printf("%-*s  %s\n", static_cast<int>(width), r.name.c_str(),
                rs::trainer::recipe_description(r).c_str());
  }
  std::printf(
      "\n`ramstream show NAME` prints every key of one, `ramstream cp NAME FILE` copies it.\n");
  return 0;
}

int show(const std::string& recipe_name, const std::vector<std::string>& overrides) {
  rs::Result<rs::trainer::Recipe> recipe = rs::trainer::load_recipe(recipe_name, overrides);
  if (!recipe.ok()) {
    std::fprintf(stderr, "ramstream show: %s\n", recipe.error().message.c_str());
    return 2;
  }
  std::fputs(rs::trainer::describe_recipe(recipe.value()).c_str(), stdout);
  // Shown anyway: a recipe is often looked at before its files are in place.
  for (const std::string& p : rs::trainer::recipe_path_problems(recipe.value())) {
    std::fprintf(stderr, "ramstream show: warning: %s\n", p.c_str());
  }
  return 0;
}

bool is_folder(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path.empty() ? "." : path, ec);
}

// Writes `text` to a new file `dest`: never over an existing file, nor through a symlink.
int write_new_file(const std::string& dest, const std::string& text) {
  const int fd = ::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    if (err == EEXIST) {
      std::fprintf(stderr, "ramstream cp: %s exists; not overwriting it\n",
                   shown_path(dest).c_str());
    } else if (err == ENOENT && !is_folder(std::filesystem::path(dest).parent_path())) {
      const std::string parent = std::filesystem::path(dest).parent_path().string();
      std::fprintf(stderr, "ramstream cp: cannot create %s: no folder %s\n",
                   shown_path(dest).c_str(), shown_path(parent.empty() ? "." : parent).c_str());
    } else {
      std::fprintf(stderr, "ramstream cp: cannot create %s: %s\n", shown_path(dest).c_str(),
                   std::strerror(err));
    }
    return 1;
  }
  size_t done = 0;
  int err = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    ::unlink(dest.c_str());
    std::fprintf(stderr, "ramstream cp: cannot write %s: %s\n", shown_path(dest).c_str(),
                 std::strerror(err));
    return 1;
  }
  return 0;
}

int copy_recipe(const std::string& name, std::string dest) {
  const std::vector<rs::trainer::BundledRecipe>& all = rs::trainer::bundled_recipes();
  const auto it =
      std::find_if(all.begin(), all.end(), [&](const auto& r) { return r.name == name; });
  if (it == all.end()) {
    std::fprintf(stderr, "ramstream cp: no bundled recipe %s (see `ramstream ls`)\n",
                 rs::quote_bounded(name).c_str());
    return 1;
  }
  std::error_code ec;  // a symlink loop or an unreadable folder: open() below says what it is
  if (std::filesystem::is_directory(dest, ec)) dest += "/" + name + ".yaml";
  if (write_new_file(dest, it->text) != 0) return 1;
  std::printf("wrote %s\n", shown_path(dest).c_str());
  // The copy is a user's recipe: its relative paths now resolve against the working directory.
  rs::Result<rs::trainer::Recipe> bundled = rs::trainer::load_recipe(name, {});
  rs::Result<rs::trainer::Recipe> copied = rs::trainer::parse_recipe(it->text, dest, {});
  if (bundled.ok() && copied.ok()) {
    const std::pair<const char*, std::string rs::trainer::Recipe::*> paths[] = {
        {"model.path", &rs::trainer::Recipe::model_path},
        {"data.path", &rs::trainer::Recipe::data_path},
        {"data.val_path", &rs::trainer::Recipe::val_path}};
    for (const auto& [key, field] : paths) {
      if (bundled.value().*field != copied.value().*field) {
        std::printf(
            "note: %s '%s' is now relative to the working directory; the bundled one is %s\n", key,
            (copied.value().*field).c_str(), (bundled.value().*field).c_str());
      }
    }
  }
  return 0;
}

int validate(const std::string& file, const std::vector<std::string>& overrides) {
  const rs::trainer::RecipeCheck check = rs::trainer::validate_recipe(file, overrides);
  for (const std::string& p : check.problems) std::fprintf(stderr, "%s\n", p.c_str());
  if (check.total > check.problems.size()) {
    std::fprintf(stderr, "... and %zu more problems\n", check.total - check.problems.size());
  }
  if (check.ok()) {
    std::printf("%s: ok\n", shown_path(file).c_str());
    return 0;
  }
  std::fprintf(stderr, "%s: %zu problem%s\n", shown_path(file).c_str(), check.total,
               check.total == 1 ? "" : "s");
  return 1;
}

// "unknown command 'x'" (CLI11 would say "The following argument was not expected") and the list.
int no_such_command(const CLI::App& app, const char* given) {
  std::string list;
  size_t width = 0;
  const auto commands = app.get_subcommands([](const CLI::App*) { return true; });
  for (const CLI::App* c : commands) width = std::max(width, c->get_name().size());
  for (const CLI::App* c : commands) {
    list += "  " + c->get_name() + std::string(width + 2 - c->get_name().size(), ' ') +
            c->get_description() + "\n";
  }
  if (given == nullptr) {
    std::fprintf(stderr, "ramstream: a command is required. The commands:\n%s", list.c_str());
  } else {
    std::fprintf(stderr, "ramstream: unknown command %s. The commands:\n%s",
                 rs::quote_bounded(given).c_str(), list.c_str());
  }
  std::fprintf(stderr, "`ramstream COMMAND --help` shows a command's options.\n");
  return 2;
}

// What failed, for the one line printed when an exception escapes a command.
struct Context {
  std::string command = "ramstream";
  std::string file;
};

int cli_main(int argc, char** argv, Context& context) {
  CLI::App app{"ramstream: RAM-centric LLM training and inference"};
  app.set_version_flag("--version", std::string("ramstream 0.1 (libtorch ") +
                                        std::to_string(TORCH_VERSION_MAJOR) + "." +
                                        std::to_string(TORCH_VERSION_MINOR) + ")");
  app.require_subcommand(1);
  std::string recipe;
  std::vector<std::string> overrides;
  CLI::App* run_cmd =
      app.add_subcommand("run", "train with a recipe (a YAML file or a bundled name)");
  run_cmd->add_option("recipe", recipe, "recipe file, or the name of a bundled recipe")->required();
  run_cmd->add_option("overrides", overrides, "key.sub=value overrides, applied in order");
  CLI::App* ls_cmd = app.add_subcommand("ls", "list the bundled recipes");
  CLI::App* show_cmd = app.add_subcommand(
      "show", "print a resolved recipe: every key with its value, default and meaning");
  show_cmd->add_option("recipe", recipe, "recipe file, or the name of a bundled recipe")
      ->required();
  show_cmd->add_option("overrides", overrides, "key.sub=value overrides, applied in order");
  std::string cp_name, cp_dest;
  CLI::App* cp_cmd = app.add_subcommand("cp", "copy a bundled recipe to a file to edit");
  cp_cmd->add_option("name", cp_name, "bundled recipe name")->required();
  cp_cmd->add_option("dest", cp_dest, "destination file or folder")->required();
  CLI::App* validate_cmd =
      app.add_subcommand("validate", "check a recipe's keys, values and the files it names");
  validate_cmd->add_option("recipe", recipe, "recipe file or bundled name")->required();
  validate_cmd->add_option("overrides", overrides, "key.sub=value overrides, applied in order");
  std::string model_dir;
  CLI::App* inspect_cmd =
      app.add_subcommand("inspect", "architecture, parameter counts and memory needs of a model");
  inspect_cmd->add_option("--model", model_dir, "a Hugging Face model folder or a .gguf file")
      ->required();
  rs::cli::ConvertArgs convert_args;
  CLI::App* convert_cmd = app.add_subcommand(
      "convert", "convert a GGUF (llama.cpp) model to a Hugging Face folder, or back");
  convert_cmd->add_option("--from", convert_args.from, "a .gguf file, or a Hugging Face folder")
      ->required();
  convert_cmd->add_option("--to", convert_args.to, "the folder (or .gguf file) to write")
      ->required();
  convert_cmd->add_option("--dtype", convert_args.dtype,
                          "GGUF -> folder weights: bf16 (default), fp16 or fp32");
  convert_cmd->add_option("--type", convert_args.type,
                          "folder -> GGUF weights: f16 (default), f32, bf16 or q8_0");
  convert_cmd->add_flag("--force", convert_args.force,
                        "replace a --to that exists and is not a previous ramstream output");

  // generate / chat / eval share the model, device and cache options.
  rs::cli::GenerateArgs gen;
  rs::cli::ChatArgs chat;
  rs::cli::EvalArgs ev;
  auto inference_options = [](CLI::App* c, rs::cli::InferenceArgs& a) {
    c->add_option("--model", a.model,
                  "a Hugging Face folder (also a training output, out/<run>/step_N) or .gguf file")
        ->required();
    c->add_option("--device", a.device, "auto (CUDA when present), cpu or cuda")
        ->capture_default_str();
    c->add_option("--kv-cache", a.kv_cache,
                  "bf16 (fp32 on the CPU), kivi2, kivi4, h2o, kivi2+h2o, kivi4+h2o")
        ->capture_default_str();
    c->add_option("--kv-group", a.kv_group,
                  "KIVI group size G (tokens per key group, channels "
                  "per value group; a multiple of 32)")
        ->capture_default_str();
    c->add_option("--plan", a.plan,
                  "none, or auto | time | energy | balanced: the planner picks the decode "
                  "micro-batch and predicts the run's time and energy next to the measured ones")
        ->capture_default_str();
    c->add_option("--plan-hardware", a.plan_hardware,
                  "the planner's hardware profile: auto (probe, cached), a YAML file or a bundled "
                  "name")
        ->capture_default_str();
    c->add_option("--kv-residual", a.kv_residual, "KIVI full-precision window R (a multiple of G)")
        ->capture_default_str();
    c->add_option("--kv-sink", a.kv_sink,
                  "KIVI: the first N tokens of each sequence stay in full precision (attention "
                  "sinks)")
        ->capture_default_str();
    c->add_option("--kv-value-fit", a.kv_value_fit,
                  "KIVI values: minmax (KIVI: each group's range) or mse (least-squares scale "
                  "and minimum, never a larger error; our addition, off by default)")
        ->capture_default_str();
    c->add_option("--kv-key-outliers", a.kv_key_outliers,
                  "KIVI keys: per channel and group of G tokens, the N values farthest from the "
                  "mean stay exact (fp16 residuals, 24 bits each; dense-and-sparse, our "
                  "addition, off by default)")
        ->capture_default_str();
    c->add_option("--kv-budget", a.kv_budget,
                  "H2O: fraction of the context kept per KV head, half heavy hitters, half "
                  "recent")
        ->capture_default_str();
    c->add_option("--kv-device-memory", a.kv_device_memory,
                  "CUDA: device memory for a twin of the KV pages, so decode attention runs on "
                  "the device: auto (up to half of what is free), off, or GiB; past it, attention "
                  "goes back to the host pages (h2o always attends on the host)")
        ->capture_default_str();
    c->add_option("--weights-device-memory", a.weights_device_gib,
                  "CUDA: GiB of device memory for the weights; the first layers that fit stay "
                  "resident, the rest stream through the slots every step (default: no limit)")
        ->capture_default_str();
    c->add_option("--kv-memory", a.kv_memory_gib,
                  "GiB of KV pages at most (0: as much as host RAM allows); running out is an "
                  "error naming it")
        ->capture_default_str();
    c->add_option("--batch-size", a.batch_size,
                  "sequences run together (decode is layer-major "
                  "over them)")
        ->capture_default_str();
    c->add_flag("--json", a.json, "the last stdout line is one JSON object with the figures");
  };
  auto sampling_options = [](CLI::App* c, rs::cli::SamplingArgs& a) {
    c->add_option("--max-new-tokens", a.max_new_tokens, "tokens generated at most per prompt")
        ->capture_default_str();
    c->add_option("--temperature", a.temperature, "0 = greedy")->capture_default_str();
    c->add_option("--top-k", a.top_k, "sample among the k most likely (0 = all)")
        ->capture_default_str();
    c->add_option("--top-p", a.top_p, "sample from the smallest set reaching this probability")
        ->capture_default_str();
    c->add_option("--repetition-penalty", a.repetition_penalty, "> 1 discourages repeats")
        ->capture_default_str();
    c->add_option("--seed", a.seed, "same seed, same tokens")->capture_default_str();
    c->add_option("--stop", a.stop, "stop when this text appears (repeatable)");
    c->add_flag("--ignore-eos", a.ignore_eos, "always generate --max-new-tokens (benchmarks)");
  };
  CLI::App* generate_cmd = app.add_subcommand(
      "generate", "generate text from prompts (offloaded, with compressed KV caches)");
  inference_options(generate_cmd, gen.inf);
  sampling_options(generate_cmd, gen.sampling);
  generate_cmd->add_option("--prompt", gen.prompt, "the prompt text");
  generate_cmd->add_option("--prompt-file", gen.prompt_file, "a file holding the prompt");
  generate_cmd->add_option("--batch-file", gen.batch_file,
                           "JSONL prompts ({\"prompt\": ...} or {\"messages\": [...]}, "
                           "optional \"id\"); writes JSONL results");
  generate_cmd->add_option("--output", gen.output, "write the JSONL results here, not stdout");
  generate_cmd->add_flag("--raw", gen.raw, "send prompts as they are (no chat template)");
  CLI::App* chat_cmd = app.add_subcommand(
      "chat", "talk to an instruct model: multi-turn, its chat template, /reset, /exit");
  inference_options(chat_cmd, chat.inf);
  sampling_options(chat_cmd, chat.sampling);
  chat_cmd->add_option("--system", chat.system, "a system message for the conversation");
  CLI::App* eval_cmd = app.add_subcommand(
      "eval",
      "perplexity of a text through the decode path, or exact match on chat tasks. Each window's "
      "first context-stride tokens are prefilled and the rest fed one by one through the cache, "
      "so the compressed cache predicts every scored token: stricter than the teacher-forced "
      "fake quantisation most papers report");
  inference_options(eval_cmd, ev.inf);
  eval_cmd->add_option("--data", ev.data, "text (.txt) or JSONL with \"text\" for perplexity");
  eval_cmd->add_option("--tasks", ev.tasks,
                       "JSONL chat tasks (last message = the expected answer) for exact match");
  eval_cmd->add_option("--context", ev.context, "tokens per window")->capture_default_str();
  eval_cmd->add_option("--stride", ev.stride, "tokens scored per window (default context/2)");
  eval_cmd->add_option("--max-windows", ev.max_windows, "windows at most (0 = all)");
  eval_cmd->add_option("--max-examples", ev.max_examples, "tasks at most (0 = all)");
  eval_cmd->add_option("--max-new-tokens", ev.max_new_tokens, "tokens per task answer")
      ->capture_default_str();
  eval_cmd->get_option("--batch-size")->description("windows or tasks run together");

  rs::cli::PlanArgs plan;
  CLI::App* plan_cmd = app.add_subcommand(
      "plan",
      "choose the engine's settings (micro-batch, accumulation, slots, resident layers, "
      "checkpoints, optimizer threads; for inference batch split and KV cache): the Pareto front "
      "of predicted time, energy and memory, and the plan of the objective");
  plan_cmd
      ->add_option("--model", plan.model, "a Hugging Face folder, a .gguf file or a config.json")
      ->required();
  plan_cmd->add_option("--mode", plan.mode, "train or infer")->capture_default_str();
  plan_cmd
      ->add_option("--hardware", plan.hardware,
                   "auto (probe this machine, cached), a profile YAML file, or a bundled "
                   "profile name")
      ->capture_default_str();
  plan_cmd->add_option("--objective", plan.objective, "time, energy or balanced")
      ->capture_default_str();
  plan_cmd
      ->add_option("--device", plan.device, "auto (the GPU when the profile has one), cpu, cuda")
      ->capture_default_str();
  plan_cmd
      ->add_option("--search", plan.search,
                   "auto (exhaustive up to 4096 plans, else PGSAM), exhaustive or pgsam")
      ->capture_default_str();
  plan_cmd->add_option("--seed", plan.seed, "PGSAM's seed (same seed, same plan)")
      ->capture_default_str();
  plan_cmd->add_option("--save-hardware", plan.save_hardware,
                       "write the hardware profile used (e.g. the probe's) to this YAML file");
  plan_cmd->add_flag("--json", plan.json, "the last stdout line is one JSON object");
  plan_cmd->add_option("--seq-len", plan.seq_len, "train: tokens per row")->capture_default_str();
  plan_cmd
      ->add_option("--tokens-per-step", plan.tokens_per_step,
                   "train: tokens per optimizer step (a multiple of --seq-len)")
      ->capture_default_str();
  plan_cmd->add_option("--compute", plan.compute, "train on the CPU: auto, fp32 or bf16")
      ->capture_default_str();
  plan_cmd->add_flag("!--no-clip", plan.clip, "train: without global-norm clipping");
  plan_cmd->add_option("--batch", plan.batch, "infer: prompts decoded together")
      ->capture_default_str();
  plan_cmd->add_option("--prompt-tokens", plan.prompt_tokens, "infer: tokens per prompt")
      ->capture_default_str();
  plan_cmd->add_option("--new-tokens", plan.new_tokens, "infer: tokens generated per prompt")
      ->capture_default_str();
  plan_cmd
      ->add_option("--kv-cache", plan.kv_cache,
                   "infer: bf16, kivi4, kivi2, a comma list to choose from, or auto "
                   "(bf16,kivi4)")
      ->capture_default_str();
  plan_cmd->add_option("--kv-group", plan.kv_group, "infer: KIVI group size")
      ->capture_default_str();
  plan_cmd->add_option("--kv-residual", plan.kv_residual, "infer: KIVI full-precision window")
      ->capture_default_str();

  rs::dist::LaunchOptions launch;
  std::string master;
  CLI::App* launch_cmd =
      app.add_subcommand("launch",
                         "start N processes of a data-parallel job on this node (as torchrun): "
                         "ramstream launch --nproc 2 -- run RECIPE ...");
  launch_cmd
      ->add_option("--nproc", launch.nproc,
                   "processes on this node; 0: one per GPU, else one per NUMA node")
      ->capture_default_str();
  launch_cmd->add_option("--nnodes", launch.nnodes, "nodes in the job")->capture_default_str();
  launch_cmd->add_option("--node-rank", launch.node_rank, "this node's index, 0 hosts the store")
      ->capture_default_str();
  launch_cmd->add_option("--master", master,
                         "HOST:PORT of node 0's store (default: this machine, a free port)");
  launch_cmd
      ->add_option("--timeout", launch.timeout_s,
                   "seconds a collective may take before the job fails naming the rank")
      ->capture_default_str();
  launch_cmd
      ->add_option("--grace", launch.grace_s,
                   "after a rank fails, seconds the others get to exit on their own")
      ->capture_default_str();

  if (argc < 2) return no_such_command(app, nullptr);
  if (std::string(argv[1]) == "launch") {
    // Everything after `--` is the command each process runs (this binary's arguments).
    int split = argc;
    for (int i = 2; i < argc; ++i) {
      if (std::string(argv[i]) == "--") {
        split = i;
        break;
      }
    }
    CLI11_PARSE(app, split, argv);
    context.command = "ramstream launch";
    if (!master.empty()) {
      const size_t colon = master.rfind(':');
      if (colon == std::string::npos || colon == 0) {
        std::fprintf(stderr, "ramstream launch: --master '%s' is not HOST:PORT\n", master.c_str());
        return 2;
      }
      launch.master_addr = master.substr(0, colon);
      try {
        launch.master_port = std::stoi(master.substr(colon + 1));
      } catch (const std::exception&) {
        std::fprintf(stderr, "ramstream launch: --master '%s': the port is not a number\n",
                     master.c_str());
        return 2;
      }
    }
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
      std::fprintf(stderr, "ramstream launch: cannot find this executable (/proc/self/exe)\n");
      return 1;
    }
    launch.program = {std::string(self, static_cast<size_t>(n))};
    for (int i = split + 1; i < argc; ++i) launch.program.emplace_back(argv[i]);
    if (launch.program.size() == 1) {
      std::fprintf(stderr,
                   "ramstream launch: nothing to launch: give the command after `--`, "
                   "e.g. ramstream launch --nproc 2 -- run tiny-debug\n");
      return 2;
    }
    const std::string problem = rs::dist::check_launch_options(launch);
    if (!problem.empty()) {
      std::fprintf(stderr, "ramstream launch: %s\n", problem.c_str());
      return 2;
    }
    return rs::dist::launch(launch, stderr);
  }
  if (argv[1][0] != '-') {
    const auto named =
        app.get_subcommands([&](const CLI::App* c) { return c->get_name() == argv[1]; });
    if (named.empty()) return no_such_command(app, argv[1]);
  }
  CLI11_PARSE(app, argc, argv);
  for (const CLI::App* c : app.get_subcommands()) context.command = "ramstream " + c->get_name();
  if (*run_cmd || *show_cmd || *validate_cmd) context.file = recipe;
  if (*cp_cmd) context.file = cp_dest;
  if (*inspect_cmd) context.file = model_dir;
  if (*convert_cmd) context.file = convert_args.from;
  if (*generate_cmd) context.file = gen.inf.model;
  if (*chat_cmd) context.file = chat.inf.model;
  if (*eval_cmd) context.file = ev.inf.model;
  if (*plan_cmd) context.file = plan.model;

  if (*run_cmd) return run(recipe, overrides);
  if (*ls_cmd) return list_recipes();
  if (*show_cmd) return show(recipe, overrides);
  if (*cp_cmd) return copy_recipe(cp_name, cp_dest);
  if (*validate_cmd) return validate(recipe, overrides);
  if (*inspect_cmd) return rs::cli::inspect_command(model_dir);
  if (*convert_cmd) return rs::cli::convert_command(convert_args);
  if (*generate_cmd) return rs::cli::generate_command(gen);
  if (*chat_cmd) return rs::cli::chat_command(chat);
  if (*eval_cmd) return rs::cli::eval_command(ev);
  if (*plan_cmd) return rs::cli::plan_command(plan);
  return 0;
}

// An exception that escapes on another thread ends in std::terminate: one line and exit 1 rather
// than an abort.
[[noreturn]] void exit_on_terminate() {
  std::string what = "no exception";
  if (const std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
      what = "an exception of unknown type";
    }
  }
  std::fprintf(stderr, "ramstream: internal error: %s\n", rs::quote_bounded(what, 300).c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  ramstream::apply_runtime_defaults(argv);  // may re-execute with OMP_* / OPENBLAS_* defaults
  std::set_terminate(exit_on_terminate);
  Context context;
  const auto fail = [&](const std::string& what) {
    const std::string file = context.file.empty() ? "" : shown_path(context.file) + ": ";
    std::fprintf(stderr, "%s: %s%s\n", context.command.c_str(), file.c_str(),
                 rs::quote_bounded(what, 300).c_str());
    return 1;
  };
  try {
    return cli_main(argc, argv, context);
  } catch (const std::filesystem::filesystem_error& e) {
    // Name the path the operation failed on, which may be a file inside the one given.
    const std::string path = e.path1().empty() ? "" : shown_path(e.path1().string()) + ": ";
    std::fprintf(stderr, "%s: %s%s\n", context.command.c_str(), path.c_str(),
                 e.code().message().c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "%s: %sout of memory\n", context.command.c_str(),
                 context.file.empty() ? "" : (shown_path(context.file) + ": ").c_str());
    return 1;
  } catch (const std::exception& e) {
    return fail(e.what());
  } catch (...) {
    return fail("an exception of unknown type");
  }
}
