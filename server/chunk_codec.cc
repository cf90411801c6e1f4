#include "server/chunk_codec.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace optd::server {
namespace {

constexpr int kWireVarint = 0;
constexpr int kWireFixed64 = 1;
constexpr int kWireLength = 2;
constexpr int kWireFixed32 = 5;

// TensorChunk fields.
constexpr int kChunkTensor = 1;
constexpr int kChunkOffset = 2;
constexpr int kChunkDType = 3;
constexpr int kChunkData = 15;
// StepRequest fields.
constexpr int kStepBegin = 1;
constexpr int kStepGradient = 2;
constexpr int kStepCommit = 3;
constexpr int kStepRegionGradient = 4;
// UploadWeightsRequest fields.
constexpr int kUploadGroup = 1;
constexpr int kUploadChunk = 2;
// StepResponse / WeightsMessage fields.
constexpr int kStepResponseWeights = 1;
constexpr int kWeightsVersion = 1;
constexpr int kWeightsChunk = 2;
constexpr int kWeightsComplete = 3;
// StateChunk's payload field.
constexpr int kStateData = 15;

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutTag(int field, int wire, std::string* out) {
  PutVarint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire), out);
}

absl::Status Malformed(const char* what) {
  return absl::DataLossError(absl::StrCat("malformed message: ", what));
}

}  // namespace

// Reads protobuf wire format from a sequence of slices without joining them.
// Thread safety: not thread-safe.
class MessageReader {
 public:
  explicit MessageReader(const grpc::ByteBuffer& message)
      : slices_(std::make_shared<std::vector<grpc::Slice>>()) {
    // Dump only takes references to the slices; no bytes are copied.
    (void)message.Dump(slices_.get());
    for (const grpc::Slice& s : *slices_) total_ += s.size();
    limit_ = total_;
    Advance(0);  // past leading empty slices
  }

  bool AtLimit() const { return pos_ >= limit_; }
  size_t limit() const { return limit_; }
  void set_limit(size_t limit) { limit_ = limit; }
  size_t pos() const { return pos_; }

  absl::Status ReadVarint(uint64_t* v) {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = 0;
      if (absl::Status s = ReadByte(&b); !s.ok()) return s;
      result |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        *v = result;
        return absl::OkStatus();
      }
    }
    return Malformed("varint longer than 10 bytes");
  }

  absl::Status ReadTag(int* field, int* wire) {
    uint64_t tag = 0;
    if (absl::Status s = ReadVarint(&tag); !s.ok()) return s;
    *field = static_cast<int>(tag >> 3);
    *wire = static_cast<int>(tag & 7);
    if (*field == 0) return Malformed("field number 0");
    return absl::OkStatus();
  }

  // Length of a length-delimited field, checked against what is left.
  absl::Status ReadLength(size_t* n) {
    uint64_t v = 0;
    if (absl::Status s = ReadVarint(&v); !s.ok()) return s;
    if (v > limit_ - pos_) return Malformed("length past the end of the message");
    *n = static_cast<size_t>(v);
    return absl::OkStatus();
  }

  absl::Status ReadString(size_t n, std::string* out) {
    out->resize(n);
    size_t done = 0;
    while (done < n) {
      const size_t take = std::min(n - done, (*slices_)[slice_].size() - offset_);
      std::memcpy(out->data() + done, (*slices_)[slice_].begin() + offset_, take);
      done += take;
      Advance(take);
    }
    return absl::OkStatus();
  }

  void ReadPayload(size_t n, Payload* out) {
    out->slices_ = slices_;
    out->pieces_.clear();
    out->size_ = n;
    size_t done = 0;
    while (done < n) {
      const size_t take = std::min(n - done, (*slices_)[slice_].size() - offset_);
      out->pieces_.push_back({slice_, offset_, take});
      done += take;
      Advance(take);
    }
  }

  absl::Status Skip(int wire) {
    switch (wire) {
      case kWireVarint: {
        uint64_t v = 0;
        return ReadVarint(&v);
      }
      case kWireFixed64:
        return SkipBytes(8);
      case kWireFixed32:
        return SkipBytes(4);
      case kWireLength: {
        size_t n = 0;
        if (absl::Status s = ReadLength(&n); !s.ok()) return s;
        return SkipBytes(n);
      }
      default:
        return Malformed("unsupported wire type");
    }
  }

  // Copies the bytes of the field whose tag was just read (tag re-encoded) to `out`, so that a
  // message without its payload field can be parsed by protobuf.
  absl::Status CopyField(int field, int wire, std::string* out) {
    PutTag(field, wire, out);
    const size_t start = pos_;
    uint64_t v = 0;
    switch (wire) {
      case kWireVarint:
        if (absl::Status s = ReadVarint(&v); !s.ok()) return s;
        PutVarint(v, out);
        return absl::OkStatus();
      case kWireFixed64:
      case kWireFixed32: {
        std::string bytes;
        const size_t n = wire == kWireFixed64 ? 8 : 4;
        if (n > limit_ - start) return Malformed("fixed field past the end");
        if (absl::Status s = ReadString(n, &bytes); !s.ok()) return s;
        out->append(bytes);
        return absl::OkStatus();
      }
      case kWireLength: {
        size_t n = 0;
        if (absl::Status s = ReadLength(&n); !s.ok()) return s;
        PutVarint(n, out);
        std::string bytes;
        if (absl::Status s = ReadString(n, &bytes); !s.ok()) return s;
        out->append(bytes);
        return absl::OkStatus();
      }
      default:
        return Malformed("unsupported wire type");
    }
  }

 private:
  absl::Status ReadByte(uint8_t* b) {
    if (pos_ >= limit_) return Malformed("truncated");
    *b = (*slices_)[slice_].begin()[offset_];
    Advance(1);
    return absl::OkStatus();
  }

  absl::Status SkipBytes(size_t n) {
    if (n > limit_ - pos_) return Malformed("field past the end of the message");
    while (n > 0) {
      const size_t take = std::min(n, (*slices_)[slice_].size() - offset_);
      Advance(take);
      n -= take;
    }
    return absl::OkStatus();
  }

  void Advance(size_t n) {
    pos_ += n;
    offset_ += n;
    while (slice_ < slices_->size() && offset_ == (*slices_)[slice_].size()) {
      ++slice_;
      offset_ = 0;
    }
  }

  std::shared_ptr<std::vector<grpc::Slice>> slices_;
  size_t total_ = 0;
  size_t limit_ = 0;
  size_t pos_ = 0;
  size_t slice_ = 0;
  size_t offset_ = 0;
};

void Payload::CopyRange(size_t offset, size_t n, void* dst) const {
  auto* out = static_cast<uint8_t*>(dst);
  for (const Piece& p : pieces_) {
    if (n == 0) break;
    if (offset >= p.size) {
      offset -= p.size;
      continue;
    }
    const size_t take = std::min(n, p.size - offset);
    std::memcpy(out, (*slices_)[p.slice].begin() + p.offset + offset, take);
    out += take;
    n -= take;
    offset = 0;
  }
}

const uint8_t* Payload::contiguous() const {
  if (pieces_.size() != 1) return nullptr;
  return (*slices_)[pieces_[0].slice].begin() + pieces_[0].offset;
}

namespace {

// Reads a TensorChunk of `n` bytes at the reader's position.
absl::Status ReadChunk(MessageReader& r, size_t n, ChunkRef* chunk) {
  const size_t outer = r.limit();
  r.set_limit(r.pos() + n);
  *chunk = ChunkRef();
  while (!r.AtLimit()) {
    int field = 0;
    int wire = 0;
    if (absl::Status s = r.ReadTag(&field, &wire); !s.ok()) return s;
    uint64_t v = 0;
    size_t len = 0;
    if (field == kChunkTensor && wire == kWireLength) {
      if (absl::Status s = r.ReadLength(&len); !s.ok()) return s;
      if (absl::Status s = r.ReadString(len, &chunk->tensor); !s.ok()) return s;
    } else if (field == kChunkOffset && wire == kWireVarint) {
      if (absl::Status s = r.ReadVarint(&v); !s.ok()) return s;
      chunk->offset = static_cast<int64_t>(v);
    } else if (field == kChunkDType && wire == kWireVarint) {
      if (absl::Status s = r.ReadVarint(&v); !s.ok()) return s;
      chunk->dtype = static_cast<v1::DType>(static_cast<int>(v));
    } else if (field == kChunkData && wire == kWireLength) {
      if (absl::Status s = r.ReadLength(&len); !s.ok()) return s;
      r.ReadPayload(len, &chunk->data);
    } else if (absl::Status s = r.Skip(wire); !s.ok()) {
      return s;
    }
  }
  r.set_limit(outer);
  return absl::OkStatus();
}

}  // namespace

absl::Status DecodeStepRequest(const grpc::ByteBuffer& message, StepRequestRef* out) {
  MessageReader r(message);
  out->kind = StepRequestRef::Kind::kNone;
  while (!r.AtLimit()) {
    int field = 0;
    int wire = 0;
    if (absl::Status s = r.ReadTag(&field, &wire); !s.ok()) return s;
    if (wire != kWireLength || (field != kStepBegin && field != kStepGradient &&
                                field != kStepCommit && field != kStepRegionGradient)) {
      if (absl::Status s = r.Skip(wire); !s.ok()) return s;
      continue;
    }
    size_t n = 0;
    if (absl::Status s = r.ReadLength(&n); !s.ok()) return s;
    if (field == kStepBegin) {
      std::string bytes;
      if (absl::Status s = r.ReadString(n, &bytes); !s.ok()) return s;
      out->begin.Clear();
      if (!out->begin.ParseFromString(bytes)) return Malformed("StepRequest.begin");
      out->kind = StepRequestRef::Kind::kBegin;
    } else if (field == kStepRegionGradient) {
      std::string bytes;
      if (absl::Status s = r.ReadString(n, &bytes); !s.ok()) return s;
      out->region_gradient.Clear();
      if (!out->region_gradient.ParseFromString(bytes)) {
        return Malformed("StepRequest.region_gradient");
      }
      out->kind = StepRequestRef::Kind::kRegionGradient;
    } else if (field == kStepGradient) {
      if (absl::Status s = ReadChunk(r, n, &out->gradient); !s.ok()) return s;
      out->kind = StepRequestRef::Kind::kGradient;
    } else {
      std::string ignored;
      if (absl::Status s = r.ReadString(n, &ignored); !s.ok()) return s;
      out->kind = StepRequestRef::Kind::kCommit;
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeUploadRequest(const grpc::ByteBuffer& message, std::string* group,
                                 ChunkRef* chunk) {
  MessageReader r(message);
  group->clear();
  *chunk = ChunkRef();
  while (!r.AtLimit()) {
    int field = 0;
    int wire = 0;
    if (absl::Status s = r.ReadTag(&field, &wire); !s.ok()) return s;
    size_t n = 0;
    if (field == kUploadGroup && wire == kWireLength) {
      if (absl::Status s = r.ReadLength(&n); !s.ok()) return s;
      if (absl::Status s = r.ReadString(n, group); !s.ok()) return s;
    } else if (field == kUploadChunk && wire == kWireLength) {
      if (absl::Status s = r.ReadLength(&n); !s.ok()) return s;
      if (absl::Status s = ReadChunk(r, n, chunk); !s.ok()) return s;
    } else if (absl::Status s = r.Skip(wire); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeStateChunk(const grpc::ByteBuffer& message, v1::StateChunk* header,
                              Payload* data) {
  MessageReader r(message);
  std::string rest;
  *data = Payload();
  while (!r.AtLimit()) {
    int field = 0;
    int wire = 0;
    if (absl::Status s = r.ReadTag(&field, &wire); !s.ok()) return s;
    if (field == kStateData && wire == kWireLength) {
      size_t n = 0;
      if (absl::Status s = r.ReadLength(&n); !s.ok()) return s;
      r.ReadPayload(n, data);
    } else if (absl::Status s = r.CopyField(field, wire, &rest); !s.ok()) {
      return s;
    }
  }
  header->Clear();
  if (!header->ParseFromString(rest)) return Malformed("StateChunk");
  return absl::OkStatus();
}

absl::Status DecodeMessage(const grpc::ByteBuffer& message, google::protobuf::MessageLite* out) {
  grpc::Slice single;
  if (!message.DumpToSingleSlice(&single).ok()) return Malformed("unreadable buffer");
  if (!out->ParseFromArray(single.begin(), static_cast<int>(single.size()))) {
    return Malformed(out->GetTypeName().c_str());
  }
  return absl::OkStatus();
}

namespace {

// The TensorChunk's fields before its payload (tensor, offset, dtype, data's tag and length),
// and the chunk's total serialized size.
std::string ChunkHeader(const OutChunk& c, size_t* chunk_size) {
  std::string h;
  PutTag(kChunkTensor, kWireLength, &h);
  PutVarint(c.tensor->size(), &h);
  h.append(*c.tensor);
  if (c.offset != 0) {
    PutTag(kChunkOffset, kWireVarint, &h);
    PutVarint(static_cast<uint64_t>(c.offset), &h);
  }
  PutTag(kChunkDType, kWireVarint, &h);
  PutVarint(static_cast<uint64_t>(c.dtype), &h);
  PutTag(kChunkData, kWireLength, &h);
  PutVarint(c.bytes, &h);
  *chunk_size = h.size() + c.bytes;
  return h;
}

void ReleaseKeepalive(void* p) { delete static_cast<Keepalive*>(p); }

// A ByteBuffer of `header` followed by `bytes` bytes at `data` (not copied).
grpc::ByteBuffer HeaderAndPayload(const std::string& header, const void* data, size_t bytes,
                                  const Keepalive& keepalive) {
  if (bytes == 0) {
    grpc::Slice one(header);
    return grpc::ByteBuffer(&one, 1);
  }
  grpc::Slice slices[2] = {
      grpc::Slice(header),
      grpc::Slice(const_cast<void*>(data), bytes, &ReleaseKeepalive, new Keepalive(keepalive))};
  return grpc::ByteBuffer(slices, 2);
}

}  // namespace

grpc::ByteBuffer EncodeStepWeights(const OutChunk& chunk) {
  size_t chunk_size = 0;
  const std::string inner = ChunkHeader(chunk, &chunk_size);
  std::string h;
  PutTag(kStepResponseWeights, kWireLength, &h);
  PutVarint(chunk_size, &h);
  h.append(inner);
  return HeaderAndPayload(h, chunk.data, chunk.bytes, chunk.keepalive);
}

grpc::ByteBuffer EncodeWeightsMessage(int64_t version, bool version_complete,
                                      const OutChunk& chunk) {
  size_t chunk_size = 0;
  const std::string inner = ChunkHeader(chunk, &chunk_size);
  std::string h;
  if (version != 0) {
    PutTag(kWeightsVersion, kWireVarint, &h);
    PutVarint(static_cast<uint64_t>(version), &h);
  }
  if (version_complete) {
    PutTag(kWeightsComplete, kWireVarint, &h);
    PutVarint(1, &h);
  }
  PutTag(kWeightsChunk, kWireLength, &h);
  PutVarint(chunk_size, &h);
  h.append(inner);
  return HeaderAndPayload(h, chunk.data, chunk.bytes, chunk.keepalive);
}

grpc::ByteBuffer EncodeStateChunk(const v1::StateChunk& header, const void* data, size_t bytes,
                                  Keepalive keepalive) {
  std::string h = header.SerializeAsString();
  PutTag(kStateData, kWireLength, &h);
  PutVarint(bytes, &h);
  return HeaderAndPayload(h, data, bytes, keepalive);
}

grpc::ByteBuffer EncodeMessage(const google::protobuf::MessageLite& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice one(bytes);
  return grpc::ByteBuffer(&one, 1);
}

}  // namespace optd::server
