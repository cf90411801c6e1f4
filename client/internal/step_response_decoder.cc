// DecodeStepResponse and DecodeWeightsMessage: a small protobuf wire-format reader over gRPC's
// slices, so that the payload of a weight chunk goes from the received slices straight into the
// caller's buffer.
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/internal/wire.h"
#include "grpcpp/support/slice.h"

namespace optd::client::internal {
namespace {

constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;

// Sequential reader over a list of slices. Thread safety: none.
class SliceReader {
 public:
  explicit SliceReader(const std::vector<grpc::Slice>* slices) : slices_(slices) {
    for (const grpc::Slice& s : *slices) remaining_ += s.size();
  }
  size_t remaining() const { return remaining_; }

  bool ReadByte(uint8_t* b) {
    if (remaining_ == 0) return false;
    Normalize();
    *b = (*slices_)[index_].begin()[pos_];
    Advance(1);
    return true;
  }
  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!ReadByte(&b)) return false;
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  // Copies the next n bytes to dst (dst may be null to skip them).
  bool Read(size_t n, char* dst) {
    if (n > remaining_) return false;
    while (n > 0) {
      Normalize();
      const grpc::Slice& s = (*slices_)[index_];
      const size_t take = std::min(n, s.size() - pos_);
      if (dst != nullptr) {
        std::memcpy(dst, s.begin() + pos_, take);
        dst += take;
      }
      Advance(take);
      n -= take;
    }
    return true;
  }
  bool ReadString(size_t n, std::string* out) {
    if (n > remaining_) return false;
    out->resize(n);
    return Read(n, out->data());
  }
  bool Skip(int wire_type) {
    uint64_t v;
    switch (wire_type) {
      case kVarint: return ReadVarint(&v);
      case kFixed64: return Read(8, nullptr);
      case kFixed32: return Read(4, nullptr);
      case kLengthDelimited: return ReadVarint(&v) && Read(v, nullptr);
      default: return false;
    }
  }

 private:
  void Normalize() {
    while (pos_ >= (*slices_)[index_].size()) {
      ++index_;
      pos_ = 0;
    }
  }
  void Advance(size_t n) {
    pos_ += n;
    remaining_ -= n;
  }

  const std::vector<grpc::Slice>* slices_;
  size_t index_ = 0;
  size_t pos_ = 0;
  size_t remaining_ = 0;
};

absl::Status Malformed(const char* what) {
  return absl::DataLossError(absl::StrCat("malformed message from the server: ", what));
}

// Decodes a TensorChunk of `length` bytes; the payload goes straight into its buffer.
absl::Status DecodeChunk(SliceReader* r, size_t length, const BufferMap& out, int64_t* elements) {
  const size_t end = r->remaining() - length;
  v1::TensorChunk header;  // tensor, offset, dtype; data only when it precedes the header
  bool have_data = false;
  std::string early_data;
  while (r->remaining() > end) {
    uint64_t tag;
    if (!r->ReadVarint(&tag)) return Malformed("chunk tag");
    const int field = static_cast<int>(tag >> 3), type = static_cast<int>(tag & 7);
    uint64_t v = 0;
    if (field == 1 && type == kLengthDelimited) {
      std::string name;
      if (!r->ReadVarint(&v) || !r->ReadString(v, &name)) return Malformed("chunk tensor");
      header.set_tensor(std::move(name));
    } else if (field == 2 && type == kVarint) {
      if (!r->ReadVarint(&v)) return Malformed("chunk offset");
      header.set_offset(static_cast<int64_t>(v));
    } else if (field == 3 && type == kVarint) {
      if (!r->ReadVarint(&v)) return Malformed("chunk dtype");
      header.set_dtype(static_cast<v1::DType>(v));
    } else if (field == 15 && type == kLengthDelimited) {
      if (!r->ReadVarint(&v) || v > r->remaining() - end) return Malformed("chunk data");
      if (r->remaining() - v == end && !header.tensor().empty()) {
        // The usual case: the header came first. Check it, then copy slices -> buffer.
        v1::TensorChunk probe = header;
        auto it = out.find(header.tensor());
        if (it == out.end() || static_cast<int>(header.dtype()) != static_cast<int>(it->second->dtype)) {
          std::string data;
          if (!r->ReadString(v, &data)) return Malformed("chunk data");
          probe.set_data(std::move(data));
          return WriteChunk(probe, out, elements);  // produces the precise error
        }
        const MutableBuffer& dst = *it->second;
        const int size = DTypeSize(dst.dtype);
        const int64_t n = static_cast<int64_t>(v) / size;
        if (static_cast<int64_t>(v) % size != 0 || header.offset() < 0 ||
            header.offset() + n > dst.numel) {
          std::string data;
          if (!r->ReadString(v, &data)) return Malformed("chunk data");
          probe.set_data(std::move(data));
          return WriteChunk(probe, out, elements);
        }
        if (!r->Read(v, static_cast<char*>(dst.data) + header.offset() * size)) {
          return Malformed("chunk data");
        }
        *elements += n;
        return absl::OkStatus();
      }
      if (!r->ReadString(v, &early_data)) return Malformed("chunk data");
      have_data = true;
    } else if (!r->Skip(type)) {
      return Malformed("chunk field");
    }
  }
  if (r->remaining() != end) return Malformed("chunk length");
  if (!have_data) {
    if (header.tensor().empty()) return Malformed("chunk without tensor");
    return absl::OkStatus();  // an empty chunk
  }
  header.set_data(std::move(early_data));
  return WriteChunk(header, out, elements);
}

}  // namespace

absl::Status DecodeStepResponse(const grpc::ByteBuffer& message, const BufferMap& out,
                                DecodedStepResponse* decoded) {
  std::vector<grpc::Slice> slices;
  if (!message.Dump(&slices).ok()) return Malformed("unreadable buffer");
  SliceReader r(&slices);
  while (r.remaining() > 0) {
    uint64_t tag, length;
    if (!r.ReadVarint(&tag)) return Malformed("tag");
    const int field = static_cast<int>(tag >> 3), type = static_cast<int>(tag & 7);
    if (field == 1 && type == kLengthDelimited) {  // weights
      if (!r.ReadVarint(&length) || length > r.remaining()) return Malformed("weights length");
      absl::Status s = DecodeChunk(&r, length, out, &decoded->weight_elements);
      if (!s.ok()) return s;
    } else if (field == 2 && type == kLengthDelimited) {  // done
      std::string bytes;
      if (!r.ReadVarint(&length) || !r.ReadString(length, &bytes) ||
          !decoded->done.ParseFromString(bytes)) {
        return Malformed("done");
      }
      decoded->has_done = true;
    } else if (!r.Skip(type)) {
      return Malformed("field");
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeWeightsMessage(const grpc::ByteBuffer& message, const BufferMap& out,
                                  DecodedWeightsMessage* decoded) {
  std::vector<grpc::Slice> slices;
  if (!message.Dump(&slices).ok()) return Malformed("unreadable buffer");
  SliceReader r(&slices);
  while (r.remaining() > 0) {
    uint64_t tag, v;
    if (!r.ReadVarint(&tag)) return Malformed("tag");
    const int field = static_cast<int>(tag >> 3), type = static_cast<int>(tag & 7);
    if (field == 1 && type == kVarint) {  // version
      if (!r.ReadVarint(&v)) return Malformed("version");
      decoded->version = static_cast<int64_t>(v);
    } else if (field == 2 && type == kLengthDelimited) {  // chunk
      if (!r.ReadVarint(&v) || v > r.remaining()) return Malformed("chunk length");
      absl::Status s = DecodeChunk(&r, v, out, &decoded->weight_elements);
      if (!s.ok()) return s;
    } else if (field == 3 && type == kVarint) {  // version_complete
      if (!r.ReadVarint(&v)) return Malformed("version_complete");
      decoded->version_complete = v != 0;
    } else if (!r.Skip(type)) {
      return Malformed("field");
    }
  }
  return absl::OkStatus();
}

}  // namespace optd::client::internal
