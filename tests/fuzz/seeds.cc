#include "tests/fuzz/seeds.h"

#include <fstream>
#include <iterator>
#include <sstream>

#include "server/checkpoint_file.h"
#include "tests/fuzz/fixed_group.h"

namespace optd::fuzz {
namespace {

std::string Chunk(const char* tensor, int64_t offset, v1::DType dtype, size_t bytes) {
  v1::TensorChunk c;
  c.set_tensor(tensor);
  c.set_offset(offset);
  c.set_dtype(dtype);
  std::string data(bytes, '\0');
  for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<char>((i * 37 + 11) % 61);
  c.set_data(data);
  return c.SerializeAsString();
}

std::string Upload(const char* group, const char* tensor, int64_t offset, v1::DType dtype,
                   size_t bytes) {
  v1::UploadWeightsRequest r;
  r.set_group(group);
  r.mutable_chunk()->ParseFromString(Chunk(tensor, offset, dtype, bytes));
  return r.SerializeAsString();
}

std::string Gradient(const char* tensor, int64_t offset, v1::DType dtype, size_t bytes) {
  v1::StepRequest r;
  r.mutable_gradient()->ParseFromString(Chunk(tensor, offset, dtype, bytes));
  return r.SerializeAsString();
}

// One record of ChunkAssemblyOneInput's format.
std::string Record(uint8_t kind, uint8_t cut, const std::string& message) {
  std::string out;
  out.push_back(static_cast<char>(kind));
  out.push_back(static_cast<char>(cut));
  out.push_back(static_cast<char>(message.size() & 0xff));
  out.push_back(static_cast<char>(message.size() >> 8));
  return out + message;
}

}  // namespace

std::vector<std::string> RequestValidationSeeds() {
  std::vector<std::string> seeds;
  v1::CreateGroupRequest create = FixedGroup::Request();
  seeds.push_back(std::string(1, '\0') + create.SerializeAsString());
  create.set_num_workers(3);
  create.set_mode(v1::ASYNC);
  create.mutable_hyperparameters()->set_lr(0.01f);
  create.mutable_hyperparameters()->set_optim_bits(32);
  seeds.push_back(std::string(1, '\2') + create.SerializeAsString());
  seeds.push_back(std::string(1, '\1') + Upload("fuzz", "a", 0, v1::FLOAT32, 256 * 4));
  seeds.push_back(std::string(1, '\1') + Upload("fuzz", "a", 3840, v1::FLOAT32, 260 * 4));
  seeds.push_back(std::string(1, '\1') + Upload("fuzz", "b", 0, v1::BFLOAT16, 280 * 2));
  seeds.push_back(std::string(1, '\1') + Upload("", "c", 1, v1::FLOAT16, 4 * 2));
  return seeds;
}

std::vector<std::string> ChunkAssemblySeeds() {
  v1::StepRequest begin;
  begin.mutable_begin()->set_group("fuzz");
  begin.mutable_begin()->set_step(1);
  v1::StepRequest commit;
  commit.mutable_commit();
  v1::StateChunk state;
  state.set_tensor("a");
  state.set_key("state1");
  state.set_type(v1::STATE_ELEMENT_TYPE_FLOAT32);
  state.add_shape(16);
  state.set_data(std::string(64, '\x3f'));

  std::string step = Record(0, 0, begin.SerializeAsString());
  step += Record(1, 7, Gradient("a", 0, v1::FLOAT32, 2048 * 4));
  step += Record(1, 0, Gradient("a", 2048, v1::FLOAT32, 2052 * 4));
  step += Record(0, 3, Gradient("b", 0, v1::BFLOAT16, 280 * 2));
  step += Record(0, 1, Gradient("c", 0, v1::FLOAT16, 5 * 2));
  step += Record(1, 0, commit.SerializeAsString());
  std::string mixed = Record(2, 5, Upload("fuzz", "b", 0, v1::BFLOAT16, 280 * 2));
  mixed += Record(3, 9, state.SerializeAsString());
  mixed += Record(1, 2, Gradient("c", 0, v1::BFLOAT16, 5 * 2));
  return {step, mixed};
}

absl::StatusOr<std::vector<std::string>> CheckpointLoadSeeds(const std::string& dir) {
  FixedGroup& fixed = FixedGroup::Get();
  const std::string path = dir + "/fixed.ckpt";
  auto writer = server::CheckpointWriter::Create(path);
  if (!writer.ok()) return writer.status();
  {
    server::Group& group = fixed.group();
    absl::MutexLock lock(&group.mu());
    if (absl::Status s = (*writer)->AddGroup(group.record(), group.params()); !s.ok()) return s;
  }
  if (auto size = (*writer)->Commit(); !size.ok()) return size.status();
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(path.c_str());
  return std::vector<std::string>{bytes};
}

}  // namespace optd::fuzz
