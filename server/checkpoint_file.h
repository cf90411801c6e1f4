// Checkpoint files: every group of a server (metadata, hyperparameters, weights, optimizer
// states, step counters) in one file, written atomically and checked on load.
//
// Note [File format, version 1]
// All integers are little-endian two's complement, floats are IEEE-754 binary32 bit patterns,
// strings are u32 length + bytes (no terminator).
//
//   file        := header group* footer
//   header      := "OPTDCKPT" (8 bytes) | u32 format_version (= 1) | u32 flags (= 0)
//   group       := u32 tag "GRP1" | u64 meta_len | meta (meta_len bytes) | tensor_data*
//                  (one tensor_data per tensor of meta, in the same order)
//   meta        := str name | i32 num_workers | i32 mode | i64 sync_timeout_ms
//                  | i64 max_staleness | i64 version | u32 n | i64 worker_steps[n]
//                  | options | u32 num_tensors | tensor_spec[num_tensors]
//   options     := f32 lr | f32 beta1 | f32 beta2 | f32 eps | f32 weight_decay | u8 amsgrad
//                  | i32 optim_bits | i64 min_8bit_size | i32 percentile_clipping | u8 block_wise
//   tensor_spec := str name | u8 dtype (core::DType value) | u32 rank | i64 dims[rank]
//   tensor_data := u32 tag "TNS1" | u64 weight_bytes (= numel * dtype size) | weights
//                  | i64 step | u8 eight_bit | array state1 (u8) | array state2 (u8)
//                  | array absmax1 (f32) | array absmax2 (f32) | array state1_f32 (f32)
//                  | array state2_f32 (f32) | array gnorm_vec (f32)
//   array       := u64 count | count elements
//   footer      := "OPTDEND1" (8 bytes) | u64 num_groups | u64 file_size
//                  | u32 crc32c of bytes [0, file_size - 4)
//
// The arrays are core::TensorState's, in the reference's state_dict layout (qmap1/qmap2 are
// constants and not stored). The footer comes last because the writer streams: it does not know
// the sizes when it starts, and a file cut short loses its footer, which the reader notices first.
// A reader checks the whole file's checksum before it parses anything, and every length against
// the bytes left in the file before it allocates, so a corrupted length cannot make it allocate
// more than the file holds.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "optd/core/engine.h"
#include "optd/core/group_spec.h"

namespace optd::server {

// Service-level metadata of a group, saved beside its tensors.
struct GroupRecord {
  std::string name;
  core::GroupSpec spec;           // tensors + hyperparameters
  int32_t num_workers = 1;
  int32_t mode = 1;               // optd.v1.SyncMode value
  int64_t sync_timeout_ms = 60000;
  int64_t max_staleness = 0;
  int64_t version = 0;            // updates applied
  std::vector<int64_t> worker_steps;  // last applied step per worker (retry dedup)
};

// Writes a checkpoint to "<path>.tmp-<pid>-<random>" in the destination's directory; Commit()
// adds the footer, fsyncs, renames onto `path` and fsyncs the directory, so `path` holds either
// the previous file or the complete new one, even across a crash. Destroying a writer that was
// not committed removes the temporary file.
//
// Memory: beyond one tensor's exported state, a writer holds a 1 MiB write buffer and a 4 MiB
// weight staging buffer.
//
// Thread safety: not thread-safe; one thread drives a writer.
class CheckpointWriter {
 public:
  // IO errors (e.g. the directory does not exist: NotFound) name the path.
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(const std::string& path);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Appends one group: the metadata of `record` with the tensors and hyperparameters of
  // group.spec() (the live ones; record.spec is not used), then per tensor its weights (read with
  // ReadParam in bounded chunks) and its ExportState. REQUIRES: no step runs on `group` meanwhile.
  // After an error the writer is unusable and Commit() returns that error.
  [[nodiscard]] absl::Status AddGroup(const GroupRecord& record, const core::ParamGroup& group);

  // Finishes the file as described above. Returns the file size in bytes. Call at most once.
  [[nodiscard]] absl::StatusOr<int64_t> Commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  class Sink;
  CheckpointWriter(std::string path, std::string temp_path, int fd);
  absl::Status WriteTensor(const core::ParamGroup& group, int tensor);

  const std::string path_;
  const std::string temp_path_;
  std::unique_ptr<Sink> sink_;
  int64_t num_groups_ = 0;
  bool committed_ = false;
  absl::Status status_;  // first error; sticky
};

// Reads a checkpoint file written by CheckpointWriter.
//
// Thread safety: const methods may be called from several threads at once (reads use pread).
class CheckpointReader {
 public:
  // Validates magic, version, footer, the checksum of the whole file and every length before
  // anything is used. A missing file: NotFound; a file cut short or corrupted: DataLoss naming
  // the path and what is wrong; a newer format version: FailedPrecondition.
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(const std::string& path);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const std::string& path() const { return path_; }
  int64_t file_size() const { return file_size_; }
  const std::vector<GroupRecord>& groups() const { return groups_; }

  // Writes the weights, states and step counters of group `index` into `group`, which the caller
  // created from groups()[index].spec with the engine of its choice. InvalidArgument when `index`
  // is out of range or group's tensors (names, dtypes, shapes) differ from the saved ones.
  // Streams the weights in 4 MiB pieces; holds one tensor's state at a time.
  [[nodiscard]] absl::Status RestoreGroup(size_t index, core::ParamGroup* group) const;

  // Where one tensor's data lies in the file (offsets in bytes). Public for the parser only.
  struct ArrayLocation {
    int64_t offset = 0;
    int64_t count = 0;
  };
  struct TensorLocation {
    int64_t weights_offset = 0;
    int64_t weight_bytes = 0;
    int64_t step = 0;
    bool eight_bit = false;
    ArrayLocation state1, state2, absmax1, absmax2, state1_f32, state2_f32, gnorm_vec;
  };

 private:
  CheckpointReader(std::string path, int fd, int64_t file_size);
  absl::Status Parse();
  absl::Status ReadAt(int64_t offset, void* dst, int64_t n) const;

  const std::string path_;
  const int fd_;
  const int64_t file_size_;
  std::vector<GroupRecord> groups_;
  std::vector<std::vector<TensorLocation>> tensors_;  // [group][tensor]
};

}  // namespace optd::server
