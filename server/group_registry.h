// The service's groups by name.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/group.h"

namespace optd::server {

// Thread safety: thread-safe. Groups are shared: a step that found a group keeps using it even
// if the group is deleted or replaced meanwhile (its result is then simply dropped).
class GroupRegistry {
 public:
  // NotFound naming the group.
  absl::StatusOr<std::shared_ptr<Group>> Find(const std::string& name) const;
  // AlreadyExists naming the group.
  absl::Status Insert(std::shared_ptr<Group> group);
  // Inserts or replaces; the replaced group's subscribers are closed.
  void Replace(std::shared_ptr<Group> group);
  // NotFound naming the group.
  absl::Status Remove(const std::string& name);
  std::vector<std::shared_ptr<Group>> List() const;

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Group>> groups_ ABSL_GUARDED_BY(mu_);
};

}  // namespace optd::server
