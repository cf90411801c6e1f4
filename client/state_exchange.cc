// Client::ExportState and Client::ImportState: a group's optimizer state in the reference's
// state_dict layout, as protobuf StateChunk streams on the typed stub.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "client/internal/client_impl.h"
#include "client/internal/status.h"
#include "grpcpp/support/sync_stream.h"

namespace optd::client {

using internal::FromGrpc;

absl::StatusOr<std::vector<std::pair<std::string, TensorStateArrays>>> Client::ExportState(
    const std::string& group, const std::vector<std::string>& tensors) {
  v1::ExportStateRequest req;
  req.set_group(group);
  for (const std::string& t : tensors) req.add_tensors(t);
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  std::unique_ptr<grpc::ClientReader<v1::StateChunk>> reader(
      impl_->stub().ExportState(&ctx, req));
  std::vector<std::pair<std::string, TensorStateArrays>> out;
  v1::StateChunk c;
  while (reader->Read(&c)) {
    if (out.empty() || out.back().first != c.tensor()) {
      out.emplace_back(c.tensor(), TensorStateArrays());
    }
    TensorStateArrays& t = out.back().second;
    if (c.key() == "step") {
      if (c.data().size() >= sizeof(int64_t)) {
        std::memcpy(&t.step, c.data().data(), sizeof(int64_t));
      }
      continue;
    }
    if (t.arrays.empty() || t.arrays.back().first != c.key()) {
      StateArray a;
      a.type = static_cast<StateElementType>(c.type());
      a.shape.assign(c.shape().begin(), c.shape().end());
      t.arrays.emplace_back(c.key(), std::move(a));
    }
    StateArray& a = t.arrays.back().second;
    const size_t elem = static_cast<size_t>(StateElementSize(a.type));
    const size_t at = static_cast<size_t>(c.offset()) * elem;
    if (a.bytes.size() < at + c.data().size()) a.bytes.resize(at + c.data().size());
    std::memcpy(a.bytes.data() + at, c.data().data(), c.data().size());
  }
  absl::Status s = FromGrpc(reader->Finish(), impl_->target);
  if (!s.ok()) return s;
  return out;
}

absl::Status Client::ImportState(
    const std::string& group,
    const std::vector<std::pair<std::string, TensorStateArrays>>& states) {
  grpc::ClientContext ctx;
  impl_->PrepareContext(&ctx);
  v1::ImportStateResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::StateChunk>> writer(
      impl_->stub().ImportState(&ctx, &resp));
  bool first = true;
  auto send = [&](v1::StateChunk& c) {
    if (first) c.set_group(group);
    first = false;
    return writer->Write(c);
  };
  bool open = true;
  for (const auto& [tensor, st] : states) {
    if (!open) break;
    v1::StateChunk step;
    step.set_tensor(tensor);
    step.set_key("step");
    step.set_type(v1::STATE_ELEMENT_TYPE_INT64);
    step.set_data(std::string(reinterpret_cast<const char*>(&st.step), sizeof(int64_t)));
    open = send(step);
    for (const auto& [key, a] : st.arrays) {
      const size_t elem = static_cast<size_t>(StateElementSize(a.type));
      const size_t per = static_cast<size_t>(impl_->options.chunk_bytes) / elem * elem;
      for (size_t at = 0; open && (at < a.bytes.size() || at == 0); at += per) {
        v1::StateChunk c;
        c.set_tensor(tensor);
        c.set_key(key);
        c.set_type(static_cast<v1::StateElementType>(a.type));
        for (int64_t d : a.shape) c.add_shape(d);
        c.set_offset(static_cast<int64_t>(at / elem));
        c.set_data(a.bytes.data() + at, std::min(per, a.bytes.size() - at));
        open = send(c);
        if (a.bytes.empty()) break;
      }
    }
  }
  if (first) {
    v1::StateChunk c;
    send(c);
  }
  writer->WritesDone();
  return FromGrpc(writer->Finish(), impl_->target);
}

}  // namespace optd::client
