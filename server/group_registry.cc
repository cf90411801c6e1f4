#include "server/group_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace optd::server {

absl::StatusOr<std::shared_ptr<Group>> GroupRegistry::Find(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = groups_.find(name);
  if (it == groups_.end()) return absl::NotFoundError(absl::StrCat("group '", name, "' not found"));
  return it->second;
}

absl::Status GroupRegistry::Insert(std::shared_ptr<Group> group) {
  absl::MutexLock lock(&mu_);
  const std::string& name = group->name();
  if (groups_.count(name) != 0) {
    return absl::AlreadyExistsError(absl::StrCat("group '", name, "' already exists"));
  }
  groups_.emplace(name, std::move(group));
  return absl::OkStatus();
}

void GroupRegistry::Replace(std::shared_ptr<Group> group) {
  std::shared_ptr<Group> old;
  {
    absl::MutexLock lock(&mu_);
    auto& slot = groups_[group->name()];
    old = std::move(slot);
    slot = std::move(group);
  }
  if (old) old->CloseSubscribers();
}

absl::Status GroupRegistry::Remove(const std::string& name) {
  std::shared_ptr<Group> old;
  {
    absl::MutexLock lock(&mu_);
    auto it = groups_.find(name);
    if (it == groups_.end()) {
      return absl::NotFoundError(absl::StrCat("group '", name, "' not found"));
    }
    old = std::move(it->second);
    groups_.erase(it);
  }
  old->CloseSubscribers();
  return absl::OkStatus();
}

std::vector<std::shared_ptr<Group>> GroupRegistry::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Group>> out;
  for (const auto& [name, g] : groups_) out.push_back(g);
  return out;
}

}  // namespace optd::server
