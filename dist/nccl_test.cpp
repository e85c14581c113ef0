// The NCCL back-end on the GPU machine (label gpu; skips without a CUDA device): one process is
// world size 1 through NCCL (a FileStore carries the unique id), every collective on device
// buffers; with two or more GPUs, 2 processes through dist::launch are not run here (one GPU is
// what the lent machine has).
#include <cstdio>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "dist/nccl_communicator.h"
#include "pipeline/device.h"

namespace ramstream::dist {
namespace {

TEST(NcclCommunicator, WorldSizeOneOnTheDevice) {
  if (!nccl_available() || !pipeline::cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  DistEnv env;
  env.store_file = "/tmp/ramstream_nccl_test_" + std::to_string(getpid());
  env.timeout_s = 60;
  Result<std::unique_ptr<Communicator>> c = make_nccl_communicator(env, 0);
  ASSERT_TRUE(c.ok()) << c.error().message;
  Communicator& comm = *c.value();
  EXPECT_EQ(comm.backend(), "nccl");
  const auto cuda = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, 0);
  at::Tensor x = at::arange(1000, cuda);
  comm.all_reduce_sum(x.data_ptr(), 1000, DType::kFloat32, "sum")->wait();
  EXPECT_TRUE(at::equal(x.cpu(), at::arange(1000, at::kFloat)));
  at::Tensor out = at::zeros({1000}, cuda);
  comm.reduce_scatter_sum(x.data_ptr(), out.data_ptr(), 1000, DType::kFloat32, "rs")->wait();
  EXPECT_TRUE(at::equal(out.cpu(), x.cpu()));
  out.zero_();
  comm.all_gather(x.data_ptr(), out.data_ptr(), 1000, DType::kFloat32, "ag")->wait();
  EXPECT_TRUE(at::equal(out.cpu(), x.cpu()));
  at::Tensor d = at::full({3}, 2.5, cuda.dtype(at::kDouble));
  comm.broadcast(d.data_ptr(), 3, DType::kFloat64, 0, "bc")->wait();
  EXPECT_EQ(d.sum().item<double>(), 7.5);
  comm.barrier("barrier");
  std::remove(env.store_file.c_str());
}

}  // namespace
}  // namespace ramstream::dist
