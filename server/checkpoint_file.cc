#include "server/checkpoint_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/checkpoint_crc32c.h"
#include "server/checkpoint_format.h"

namespace optd::server {

using checkpoint_internal::Crc32cExtend;
using checkpoint_internal::kFooterMagic;
using checkpoint_internal::kFooterSize;
using checkpoint_internal::kFormatVersion;
using checkpoint_internal::kGroupTag;
using checkpoint_internal::kHeaderSize;
using checkpoint_internal::kMagic;
using checkpoint_internal::kTensorTag;
using checkpoint_internal::Put;

namespace {

constexpr size_t kWriteBufferBytes = size_t{1} << 20;
// Weights move between the engine and the file in pieces of this size, so a checkpoint of a
// 10 GB group needs 4 MiB of staging, not 10 GB.
constexpr int64_t kWeightChunkBytes = int64_t{4} << 20;

absl::Status ErrnoError(int err, absl::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(err, absl::StrCat(what, " ", path));
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::Status FsyncDirectory(const std::string& path) {
  const std::string dir = DirName(path);
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "opening directory", dir);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) return ErrnoError(err, "fsync of directory", dir);
  return absl::OkStatus();
}

bool SameTensors(const core::GroupSpec& a, const core::GroupSpec& b) {
  if (a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const core::TensorSpec& x = a.tensors[i];
    const core::TensorSpec& y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape) return false;
  }
  return true;
}

}  // namespace

// Buffered appends to a file descriptor, keeping the running CRC-32C and size of everything
// written. Large appends bypass the buffer.
class CheckpointWriter::Sink {
 public:
  Sink(int fd, std::string path) : fd_(fd), path_(std::move(path)) {
    buffer_.reserve(kWriteBufferBytes);
  }
  ~Sink() {
    if (fd_ >= 0) close(fd_);
  }

  absl::Status Append(const void* data, size_t n) {
    crc_ = Crc32cExtend(crc_, data, n);
    size_ += static_cast<int64_t>(n);
    if (buffer_.size() + n <= kWriteBufferBytes) {
      buffer_.append(static_cast<const char*>(data), n);
      return absl::OkStatus();
    }
    absl::Status st = Flush();
    if (!st.ok()) return st;
    if (n < kWriteBufferBytes) {
      buffer_.append(static_cast<const char*>(data), n);
      return absl::OkStatus();
    }
    return WriteAll(data, n);
  }
  absl::Status Append(absl::string_view s) { return Append(s.data(), s.size()); }
  // Appends without adding the bytes to the checksum (the checksum field itself).
  absl::Status AppendUnchecked(const void* data, size_t n) {
    size_ += static_cast<int64_t>(n);
    buffer_.append(static_cast<const char*>(data), n);
    return absl::OkStatus();
  }

  absl::Status Flush() {
    absl::Status st = WriteAll(buffer_.data(), buffer_.size());
    buffer_.clear();
    return st;
  }
  // Flushes, fsyncs and closes.
  absl::Status Close() {
    absl::Status st = Flush();
    if (!st.ok()) return st;
    if (fsync(fd_) != 0) return ErrnoError(errno, "fsync of", path_);
    int fd = std::exchange(fd_, -1);
    if (close(fd) != 0) return ErrnoError(errno, "closing", path_);
    return absl::OkStatus();
  }

  uint32_t crc() const { return crc_; }
  int64_t size() const { return size_; }

 private:
  absl::Status WriteAll(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(errno, "writing", path_);
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return absl::OkStatus();
  }

  int fd_;
  const std::string path_;
  std::string buffer_;
  uint32_t crc_ = 0;
  int64_t size_ = 0;
};

CheckpointWriter::CheckpointWriter(std::string path, std::string temp_path, int fd)
    : path_(std::move(path)),
      temp_path_(std::move(temp_path)),
      sink_(std::make_unique<Sink>(fd, temp_path_)) {}

CheckpointWriter::~CheckpointWriter() {
  if (!committed_) {
    sink_.reset();  // closes the descriptor
    unlink(temp_path_.c_str());
  }
}

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Create(
    const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("checkpoint path is empty");
  // mkostemp picks the unique suffix, so concurrent writers of one path never share a temp file.
  std::string temp = absl::StrCat(path, ".tmp-", getpid(), "-XXXXXX");
  int fd = mkostemp(temp.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "creating a temporary file for checkpoint", path);
  fchmod(fd, 0644);  // mkostemp creates 0600; checkpoints are read by other tools too
  auto writer = std::unique_ptr<CheckpointWriter>(new CheckpointWriter(path, temp, fd));
  std::string header(kMagic, sizeof(kMagic));
  Put<uint32_t>(&header, kFormatVersion);
  Put<uint32_t>(&header, 0);  // flags
  absl::Status st = writer->sink_->Append(header);
  if (!st.ok()) return st;
  return writer;
}

absl::Status CheckpointWriter::AddGroup(const GroupRecord& record,
                                        const core::ParamGroup& group) {
  if (!status_.ok()) return status_;
  if (committed_) return absl::FailedPreconditionError("checkpoint writer already committed");
  std::string meta;
  checkpoint_internal::EncodeMeta(record, group.spec(), &meta);
  std::string head;
  Put<uint32_t>(&head, kGroupTag);
  Put<uint64_t>(&head, meta.size());
  status_ = sink_->Append(head);
  if (status_.ok()) status_ = sink_->Append(meta);
  for (int t = 0; status_.ok() && t < group.num_tensors(); ++t) status_ = WriteTensor(group, t);
  if (!status_.ok()) {
    return absl::Status(status_.code(), absl::StrCat("saving group '", record.name, "' to ",
                                                     temp_path_, ": ", status_.message()));
  }
  ++num_groups_;
  return absl::OkStatus();
}

absl::Status CheckpointWriter::WriteTensor(const core::ParamGroup& group, int tensor) {
  const core::TensorSpec& spec = group.spec().tensors[tensor];
  const int64_t numel = spec.numel();
  const int64_t elem = static_cast<int64_t>(core::DTypeSize(spec.dtype));
  std::string head;
  Put<uint32_t>(&head, kTensorTag);
  Put<uint64_t>(&head, static_cast<uint64_t>(numel * elem));
  absl::Status st = sink_->Append(head);
  if (!st.ok()) return st;

  const int64_t chunk = std::min<int64_t>(numel, kWeightChunkBytes / elem);
  std::vector<char> staging(static_cast<size_t>(chunk * elem));
  for (int64_t off = 0; off < numel; off += chunk) {
    const int64_t n = std::min(chunk, numel - off);
    core::TensorView view{staging.data(), spec.dtype, n, core::MemoryKind::kHost};
    st = group.ReadParam(tensor, off, view);
    if (!st.ok()) return st;
    st = sink_->Append(staging.data(), static_cast<size_t>(n * elem));
    if (!st.ok()) return st;
  }

  absl::StatusOr<core::TensorState> state = group.ExportState(tensor);
  if (!state.ok()) return state.status();
  std::string fixed;
  Put<int64_t>(&fixed, state->step);
  Put<uint8_t>(&fixed, state->eight_bit ? 1 : 0);
  st = sink_->Append(fixed);
  auto put_array = [&](const auto& v) {
    if (!st.ok()) return;
    std::string count;
    Put<uint64_t>(&count, v.size());
    st = sink_->Append(count);
    if (st.ok()) st = sink_->Append(v.data(), v.size() * sizeof(v[0]));
  };
  put_array(state->state1);
  put_array(state->state2);
  put_array(state->absmax1);
  put_array(state->absmax2);
  put_array(state->state1_f32);
  put_array(state->state2_f32);
  put_array(state->gnorm_vec);
  return st;
}

absl::StatusOr<int64_t> CheckpointWriter::Commit() {
  if (!status_.ok()) return status_;
  if (committed_) return absl::FailedPreconditionError("checkpoint writer already committed");
  std::string footer(kFooterMagic, sizeof(kFooterMagic));
  Put<uint64_t>(&footer, static_cast<uint64_t>(num_groups_));
  const int64_t file_size = sink_->size() + kFooterSize;
  Put<uint64_t>(&footer, static_cast<uint64_t>(file_size));
  status_ = sink_->Append(footer);
  if (status_.ok()) {
    std::string crc;
    Put<uint32_t>(&crc, sink_->crc());
    status_ = sink_->AppendUnchecked(crc.data(), crc.size());
  }
  if (status_.ok()) status_ = sink_->Close();
  if (status_.ok() && rename(temp_path_.c_str(), path_.c_str()) != 0) {
    status_ = ErrnoError(errno, absl::StrCat("renaming ", temp_path_, " to"), path_);
  }
  if (!status_.ok()) return status_;
  committed_ = true;
  // The rename is durable only once the directory entry is on disk.
  status_ = FsyncDirectory(path_);
  if (!status_.ok()) return status_;
  return file_size;
}

// ---------------------------------------------------------------------------------------------

CheckpointReader::CheckpointReader(std::string path, int fd, int64_t file_size)
    : path_(std::move(path)), fd_(fd), file_size_(file_size) {}

CheckpointReader::~CheckpointReader() { close(fd_); }

absl::Status CheckpointReader::ReadAt(int64_t offset, void* dst, int64_t n) const {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t r = pread(fd_, p, static_cast<size_t>(n), offset);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "reading", path_);
    }
    if (r == 0) {
      return absl::DataLossError(absl::StrCat(path_, ": unexpected end of file at byte ", offset));
    }
    p += r;
    n -= r;
    offset += r;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "opening checkpoint", path);
  struct stat st_buf;
  if (fstat(fd, &st_buf) != 0) {
    int err = errno;
    close(fd);
    return ErrnoError(err, "stat of checkpoint", path);
  }
  if (!S_ISREG(st_buf.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a regular file"));
  }
  auto reader = std::unique_ptr<CheckpointReader>(new CheckpointReader(path, fd, st_buf.st_size));
  absl::Status st = reader->Parse();
  if (!st.ok()) return st;
  return reader;
}

absl::Status CheckpointReader::Parse() {
  auto loss = [&](absl::string_view what) {
    return absl::DataLossError(absl::StrCat("checkpoint ", path_, ": ", what));
  };
  if (file_size_ < kHeaderSize + kFooterSize) {
    return loss(absl::StrCat("file is ", file_size_, " bytes, shorter than a header and footer (",
                             kHeaderSize + kFooterSize, "); cut short?"));
  }
  char header[kHeaderSize];
  absl::Status st = ReadAt(0, header, kHeaderSize);
  if (!st.ok()) return st;
  if (std::memcmp(header, kMagic, sizeof(kMagic)) != 0) {
    return loss("bad magic: not an optd checkpoint file");
  }
  uint32_t version = 0;
  std::memcpy(&version, header + 8, 4);
  if (version != kFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", path_, " has format version ", version, "; this build reads version ",
        kFormatVersion));
  }

  char footer[kFooterSize];
  st = ReadAt(file_size_ - kFooterSize, footer, kFooterSize);
  if (!st.ok()) return st;
  if (std::memcmp(footer, kFooterMagic, sizeof(kFooterMagic)) != 0) {
    return loss(absl::StrCat("no footer at the end of the file (", file_size_,
                             " bytes): cut short or overwritten"));
  }
  uint64_t num_groups = 0, recorded_size = 0;
  uint32_t recorded_crc = 0;
  std::memcpy(&num_groups, footer + 8, 8);
  std::memcpy(&recorded_size, footer + 16, 8);
  std::memcpy(&recorded_crc, footer + 24, 4);
  if (recorded_size != static_cast<uint64_t>(file_size_)) {
    return loss(absl::StrCat("footer records ", recorded_size, " bytes but the file has ",
                             file_size_));
  }

  // Checksum of everything before the checksum field, before any length is trusted.
  {
    std::vector<char> buf(kWriteBufferBytes);
    uint32_t crc = 0;
    const int64_t end = file_size_ - 4;
    for (int64_t off = 0; off < end;) {
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(buf.size()), end - off);
      st = ReadAt(off, buf.data(), n);
      if (!st.ok()) return st;
      crc = Crc32cExtend(crc, buf.data(), static_cast<size_t>(n));
      off += n;
    }
    if (crc != recorded_crc) {
      return loss(absl::StrCat("checksum mismatch (CRC-32C of the file is ", crc,
                               ", the footer records ", recorded_crc, "): corrupted"));
    }
  }

  // Walk the records. Every length is checked against the bytes left before the footer, so
  // nothing is allocated beyond what the file holds.
  const int64_t body_end = file_size_ - kFooterSize;
  int64_t pos = kHeaderSize;
  auto left = [&] { return body_end - pos; };
  auto read_u = [&](auto* v, absl::string_view field) -> absl::Status {
    if (left() < static_cast<int64_t>(sizeof(*v))) {
      return loss(absl::StrCat(field, " at byte ", pos, " runs past the end of the data"));
    }
    absl::Status s = ReadAt(pos, v, sizeof(*v));
    pos += sizeof(*v);
    return s;
  };
  if (num_groups > static_cast<uint64_t>(left() / 12)) {
    return loss(absl::StrCat("footer claims ", num_groups, " groups, more than the file can hold"));
  }
  for (uint64_t g = 0; g < num_groups; ++g) {
    const std::string where = absl::StrCat("checkpoint ", path_, ", group #", g);
    uint32_t tag = 0;
    uint64_t meta_len = 0;
    if (st = read_u(&tag, "group tag"); !st.ok()) return st;
    if (tag != kGroupTag) return loss(absl::StrCat("group #", g, ": bad record tag at byte ", pos - 4));
    if (st = read_u(&meta_len, "group metadata length"); !st.ok()) return st;
    if (meta_len > static_cast<uint64_t>(left())) {
      return loss(absl::StrCat("group #", g, ": metadata length ", meta_len, " exceeds the ",
                               left(), " bytes left"));
    }
    std::string meta(meta_len, '\0');
    if (st = ReadAt(pos, meta.data(), static_cast<int64_t>(meta_len)); !st.ok()) return st;
    pos += static_cast<int64_t>(meta_len);
    GroupRecord record;
    if (st = checkpoint_internal::DecodeMeta(meta, where, &record); !st.ok()) return st;

    std::vector<TensorLocation> locations(record.spec.tensors.size());
    for (size_t t = 0; t < record.spec.tensors.size(); ++t) {
      const core::TensorSpec& spec = record.spec.tensors[t];
      const std::string tname = absl::StrCat("group '", record.name, "' tensor '", spec.name, "'");
      TensorLocation& loc = locations[t];
      if (st = read_u(&tag, tname + " tag"); !st.ok()) return st;
      if (tag != kTensorTag) return loss(absl::StrCat(tname, ": bad record tag at byte ", pos - 4));
      uint64_t weight_bytes = 0;
      if (st = read_u(&weight_bytes, tname + " weight length"); !st.ok()) return st;
      const uint64_t expected =
          static_cast<uint64_t>(spec.numel()) * core::DTypeSize(spec.dtype);
      if (weight_bytes != expected) {
        return loss(absl::StrCat(tname, ": weights are ", weight_bytes, " bytes, expected ",
                                 expected));
      }
      if (weight_bytes > static_cast<uint64_t>(left())) {
        return loss(absl::StrCat(tname, ": weights (", weight_bytes, " bytes) exceed the ",
                                 left(), " bytes left"));
      }
      loc.weights_offset = pos;
      loc.weight_bytes = static_cast<int64_t>(weight_bytes);
      pos += loc.weight_bytes;
      uint8_t eight_bit = 0;
      if (st = read_u(&loc.step, tname + " step"); !st.ok()) return st;
      if (st = read_u(&eight_bit, tname + " eight_bit"); !st.ok()) return st;
      loc.eight_bit = eight_bit != 0;
      struct {
        const char* name;
        ArrayLocation* loc;
        int64_t elem;
      } arrays[] = {{"state1", &loc.state1, 1},         {"state2", &loc.state2, 1},
                    {"absmax1", &loc.absmax1, 4},       {"absmax2", &loc.absmax2, 4},
                    {"state1_f32", &loc.state1_f32, 4}, {"state2_f32", &loc.state2_f32, 4},
                    {"gnorm_vec", &loc.gnorm_vec, 4}};
      for (auto& a : arrays) {
        uint64_t count = 0;
        if (st = read_u(&count, absl::StrCat(tname, " ", a.name, " count")); !st.ok()) return st;
        if (count > static_cast<uint64_t>(left() / a.elem)) {
          return loss(absl::StrCat(tname, ": ", a.name, " claims ", count,
                                   " entries, more than the ", left(), " bytes left"));
        }
        a.loc->offset = pos;
        a.loc->count = static_cast<int64_t>(count);
        pos += a.loc->count * a.elem;
      }
    }
    groups_.push_back(std::move(record));
    tensors_.push_back(std::move(locations));
  }
  if (pos != body_end) {
    return loss(absl::StrCat(body_end - pos, " unexpected bytes after the last group"));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::RestoreGroup(size_t index, core::ParamGroup* group) const {
  if (index >= groups_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("group index ", index, " out of range: ",
                                                   path_, " holds ", groups_.size(), " groups"));
  }
  const GroupRecord& record = groups_[index];
  if (!SameTensors(record.spec, group->spec())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group '", record.name, "' in ", path_,
        ": the target group's tensors (names, dtypes, shapes) differ from the saved ones"));
  }
  auto context = [&](const absl::Status& s, const std::string& tensor) {
    return absl::Status(s.code(), absl::StrCat("restoring group '", record.name, "' tensor '",
                                               tensor, "' from ", path_, ": ", s.message()));
  };
  for (size_t t = 0; t < record.spec.tensors.size(); ++t) {
    const core::TensorSpec& spec = record.spec.tensors[t];
    const TensorLocation& loc = tensors_[index][t];
    const int64_t elem = static_cast<int64_t>(core::DTypeSize(spec.dtype));
    const int64_t numel = spec.numel();
    const int64_t chunk = std::min<int64_t>(numel, kWeightChunkBytes / elem);
    std::vector<char> staging(static_cast<size_t>(chunk * elem));
    for (int64_t off = 0; off < numel; off += chunk) {
      const int64_t n = std::min(chunk, numel - off);
      absl::Status st = ReadAt(loc.weights_offset + off * elem, staging.data(), n * elem);
      if (st.ok()) {
        st = group->WriteParam(static_cast<int>(t), off,
                               core::ConstTensorView{staging.data(), spec.dtype, n,
                                                     core::MemoryKind::kHost});
      }
      if (!st.ok()) return context(st, spec.name);
    }

    core::TensorState state;
    state.step = loc.step;
    state.eight_bit = loc.eight_bit;
    absl::Status st;
    auto read_array = [&](const ArrayLocation& a, auto* v) {
      if (!st.ok()) return;
      v->resize(static_cast<size_t>(a.count));
      st = ReadAt(a.offset, v->data(), a.count * static_cast<int64_t>(sizeof((*v)[0])));
    };
    read_array(loc.state1, &state.state1);
    read_array(loc.state2, &state.state2);
    read_array(loc.absmax1, &state.absmax1);
    read_array(loc.absmax2, &state.absmax2);
    read_array(loc.state1_f32, &state.state1_f32);
    read_array(loc.state2_f32, &state.state2_f32);
    read_array(loc.gnorm_vec, &state.gnorm_vec);
    if (st.ok()) st = group->ImportState(static_cast<int>(t), state);
    // ImportState carries the step counter; set it explicitly in case an engine keeps it apart.
    if (st.ok() && group->GetStep(static_cast<int>(t)) != loc.step) {
      st = group->SetStep(static_cast<int>(t), loc.step);
    }
    if (!st.ok()) return context(st, spec.name);
  }
  return absl::OkStatus();
}

}  // namespace optd::server
