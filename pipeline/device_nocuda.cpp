// device.h's CUDA entry points in a build without a CUDA libtorch.
#include <stdexcept>

#include "pipeline/device.h"

namespace ramstream::pipeline {

std::unique_ptr<Device> make_cuda_device(int) {
  throw std::runtime_error(
      "this ramstream was built without CUDA (configure with a CUDA toolkit and a CUDA libtorch, "
      "e.g. -DCMAKE_PREFIX_PATH=$(python3 -c 'import "
      "torch;print(torch.utils.cmake_prefix_path)'))");
}

bool cuda_device_available() {
  return false;
}

}  // namespace ramstream::pipeline
