// ramstream's public C++ API: one include for programs that drive the library.
//
//   #include <ramstream/ramstream.h>
//   namespace rs = ramstream;
//   rs::model::ModelConfig cfg = rs::model::load_model_config(dir +
//   "/config.json").value_or_throw(); rs::pipeline::ParamStore
//   store(rs::pipeline::plan_stages(cfg), cfg, {});
//   ... load weights, build a Device and an Engine, call engine.train_step(ids, targets) ...
// See examples/custom_loop.cpp for a complete training loop on the Engine; trainer/trainer.h runs
// a whole recipe:
//   auto recipe = rs::trainer::load_recipe("smollm2-135m-full-sft", {"train.max_steps=20"});
//   auto trainer = rs::trainer::Trainer::create(recipe.value()).value_or_throw();
//   trainer->train();
// Offloaded inference (inference/session.h, generator.h, evaluate.h):
//   auto s = rs::inference::open_session("out/run/step_000110", {}).value_or_throw();
//   auto r = s->generator().generate({s->encode_chat({{"user", "Hi"}})}, {});
#pragma once

#include "autograd/model.h"
#include "checkpoint/hf_loader.h"
#include "checkpoint/safetensors.h"
#include "inference/evaluate.h"
#include "inference/generator.h"
#include "inference/session.h"
#include "kernels/adamw.h"
#include "model/config.h"
#include "model/hf_names.h"
#include "model/params.h"
#include "pipeline/device.h"
#include "pipeline/engine.h"
#include "pipeline/param_store.h"
#include "pipeline/stages.h"
#include "trainer/recipe.h"
#include "trainer/trainer.h"
