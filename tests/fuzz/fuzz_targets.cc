#include "tests/fuzz/fuzz_targets.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "optd/core/dtype.h"
#include "optd/core/engine.h"
#include "server/checkpoint_crc32c.h"
#include "server/checkpoint_file.h"
#include "server/chunk_checks.h"
#include "server/chunk_codec.h"
#include "server/convert.h"
#include "server/gradient_set.h"
#include "server/group.h"
#include "server/limits.h"
#include "server/metrics.h"
#include "tests/fuzz/fixed_group.h"

namespace optd::fuzz {
namespace {

using server::CheckedChunk;
using server::ChunkRef;
using server::Group;

// A property of what the server code returned does not hold: abort, so the fuzzer keeps the input.
void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz property violated: %s\n", what);
    std::abort();
  }
}

// Little-endian reads from the fuzz input; past the end they read zeros.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t left() const { return size_ - pos_; }
  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() { return static_cast<uint16_t>(U8() | (U8() << 8)); }
  // Up to n bytes (fewer at the end).
  std::string Take(size_t n) {
    n = std::min(n, left());
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// `bytes` as a ByteBuffer in slices whose lengths follow from `cut` (1 .. 64 bytes, varying), so
// that field tags, varints and payloads straddle slice boundaries. cut == 0: one slice.
grpc::ByteBuffer Sliced(const std::string& bytes, uint8_t cut) {
  std::vector<grpc::Slice> slices;
  if (cut == 0 || bytes.empty()) {
    slices.emplace_back(bytes.data(), bytes.size());
  } else {
    uint32_t state = cut;
    for (size_t off = 0; off < bytes.size();) {
      state = state * 1103515245u + 12345u;
      const size_t piece = std::min<size_t>(1 + (state >> 16) % 64, bytes.size() - off);
      slices.emplace_back(bytes.data() + off, piece);
      off += piece;
    }
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// Element count of a spec with overflow checked; -1 when a dim is negative or the product
// overflows int64.
int64_t SafeNumel(const core::TensorSpec& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

// Creating groups larger than this would only measure the allocator.
constexpr int64_t kMaxElementsToCreate = int64_t{1} << 20;

bool SmallEnough(const core::GroupSpec& spec) {
  int64_t total = 0;
  for (const core::TensorSpec& t : spec.tensors) {
    const int64_t n = SafeNumel(t);
    if (n < 0 || __builtin_add_overflow(total, n, &total)) return false;
  }
  return total <= kMaxElementsToCreate;
}

void CheckChunkResult(const Group& group, const ChunkRef& chunk,
                      const absl::StatusOr<CheckedChunk>& c) {
  if (!c.ok()) return;
  Require(c->tensor >= 0 && c->tensor < group.num_tensors(), "checked chunk names a tensor");
  const int64_t numel = group.tensor(c->tensor).numel();
  Require(c->offset >= 0 && c->n >= 0 && c->offset + c->n <= numel,
          "checked chunk lies inside its tensor");
  Require(static_cast<size_t>(c->n) * core::DTypeSize(c->dtype) == chunk.data.size(),
          "checked chunk's payload is n whole elements");
}

}  // namespace

int RequestValidationOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) {
    v1::CreateGroupRequest request;
    if (!request.ParseFromString(body)) return 0;
    absl::StatusOr<server::GroupRecord> record =
        server::RecordFromCreateRequest(request, server::Limits{});
    if (!record.ok()) return 0;
    Require(!record->name.empty(), "an accepted group has a name");
    Require(record->num_workers >= 1, "an accepted group has a worker");
    Require(static_cast<int64_t>(record->worker_steps.size()) == record->num_workers,
            "one step counter per worker");
    // Admission control (issue 9, "Bounds"): what is accepted is within the default limits.
    const server::Limits limits;
    Require(record->num_workers <= limits.max_workers, "num_workers within --max_workers");
    Require(record->name.size() <= static_cast<size_t>(limits.max_name_bytes),
            "group name within --max_name_bytes");
    Require(record->spec.tensors.size() <= static_cast<size_t>(limits.max_tensors_per_group),
            "tensors within --max_tensors_per_group");
    for (const core::TensorSpec& t : record->spec.tensors) {
      Require(t.name.size() <= static_cast<size_t>(limits.max_name_bytes),
              "tensor name within --max_name_bytes");
    }
    if (SmallEnough(record->spec)) {
      auto params = FixedGroup::Get().engine().CreateGroup(record->spec);
      (void)params;  // may still be refused (the engine validates too); must not crash
    }
    return 0;
  }
  std::string group_name;
  server::ChunkRef chunk;
  if (!server::DecodeUploadRequest(Sliced(body, 0), &group_name, &chunk).ok()) return 0;
  const Group& group = FixedGroup::Get().group();
  CheckChunkResult(group, chunk, server::CheckGradientChunk(group, chunk));
  CheckChunkResult(group, chunk, server::CheckUploadChunk(group, chunk));
  return 0;
}

int ChunkAssemblyOneInput(const uint8_t* data, size_t size) {
  FixedGroup& fixed = FixedGroup::Get();
  Group& group = fixed.group();
  server::GradientSet gradient(group.num_tensors(), &fixed.engine());
  Bytes in(data, size);
  bool any_gradient = false;
  while (in.left() >= 4) {
    const uint8_t kind = in.U8() % 4;
    const uint8_t cut = in.U8();
    const std::string message = in.Take(in.U16());
    const grpc::ByteBuffer buffer = Sliced(message, cut);
    if (kind <= 1) {
      server::StepRequestRef request;
      if (!server::DecodeStepRequest(buffer, &request).ok()) continue;
      if (request.kind != server::StepRequestRef::Kind::kGradient) continue;
      auto c = server::CheckGradientChunk(group, request.gradient);
      CheckChunkResult(group, request.gradient, c);
      if (!c.ok()) continue;
      auto dst = gradient.Reserve(group, *c, /*step=*/1);
      if (!dst.ok()) continue;
      // The one copy the step path makes, straight into the gradient buffer.
      request.gradient.data.CopyTo(*dst);
      any_gradient = true;
    } else if (kind == 2) {
      std::string name;
      server::ChunkRef chunk;
      if (!server::DecodeUploadRequest(buffer, &name, &chunk).ok()) continue;
      std::vector<uint8_t> copy(chunk.data.size());
      chunk.data.CopyTo(copy.data());
      if (!copy.empty()) {
        const size_t mid = copy.size() / 2;
        chunk.data.CopyRange(mid, copy.size() - mid, copy.data() + mid);
      }
    } else {
      v1::StateChunk header;
      server::Payload payload;
      if (!server::DecodeStateChunk(buffer, &header, &payload).ok()) continue;
      Require(header.data().empty(), "state payload kept out of the header");
      std::vector<uint8_t> copy(payload.size());
      payload.CopyTo(copy.data());
      const uint8_t* whole = payload.contiguous();
      if (whole != nullptr && !copy.empty()) {
        Require(std::memcmp(whole, copy.data(), copy.size()) == 0, "contiguous payload = copy");
      }
    }
  }
  if (any_gradient && gradient.CheckComplete(group, 1).ok()) {
    for (int t : gradient.Touched()) {
      Require(t >= 0 && t < group.num_tensors(), "touched tensor exists");
    }
    absl::MutexLock lock(&group.mu());
    // Gradients may hold NaN or Inf: the engine counts and skips them, it must not crash.
    (void)group.params().Step(gradient.Gradients(group), core::StepArgs{});
  }
  return 0;
}

int CheckpointLoadOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  constexpr size_t kFooterSize = 28;  // "OPTDEND1" | u64 num_groups | u64 file_size | u32 crc
  if (size >= kFooterSize && data[1] % 2 == 0) {
    const uint64_t file_size = size;
    std::memcpy(bytes.data() + size - 12, &file_size, 8);
    const uint32_t crc = server::checkpoint_internal::Crc32c(bytes.data(), size - 4);
    std::memcpy(bytes.data() + size - 4, &crc, 4);
  }
  char path[] = "/tmp/optd-fuzz-ckpt-XXXXXX";
  const int fd = mkstemp(path);
  Require(fd >= 0, "temporary file created");
  Require(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()),
          "temporary file written");
  close(fd);
  auto reader = server::CheckpointReader::Open(path);
  if (reader.ok()) {
    for (size_t i = 0; i < (*reader)->groups().size(); ++i) {
      const server::GroupRecord& record = (*reader)->groups()[i];
      // The server restores only records that pass the checks of a CreateGroup (default limits).
      const bool valid = server::ValidateRecord(record, server::Limits{}).ok();
      for (const core::TensorSpec& t : record.spec.tensors) {
        const int64_t n = SafeNumel(t);
        // A tensor's weights are stored in the file, so an accepted file cannot declare more
        // weight bytes than it holds.
        Require(n >= 0 && n <= (*reader)->file_size(), "accepted tensor fits in the file");
      }
      if (!valid || !SmallEnough(record.spec)) continue;
      auto params = FixedGroup::Get().engine().CreateGroup(record.spec);
      if (!params.ok()) continue;
      (void)(*reader)->RestoreGroup(i, params->get());
    }
  }
  unlink(path);
  return 0;
}

}  // namespace optd::fuzz
