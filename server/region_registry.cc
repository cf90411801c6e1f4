#include "server/region_registry.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/limits.h"

namespace optd::server {

class RegionRegistry::Ticket final : public RegionTicket {
 public:
  Ticket(RegionRegistry* registry, std::string client, int64_t bytes)
      : registry_(registry), client_(std::move(client)), bytes_(bytes) {}
  ~Ticket() override { registry_->Release(client_, bytes_); }

 private:
  RegionRegistry* const registry_;
  const std::string client_;
  const int64_t bytes_;
};

absl::StatusOr<std::unique_ptr<RegionTicket>> RegionRegistry::Admit(const std::string& client,
                                                                    int64_t bytes) {
  if (limits_.max_regions == 0) {
    return absl::FailedPreconditionError(
        "this server does not serve colocated regions (--max_regions=0)");
  }
  if (bytes < 1 || bytes > limits_.max_region_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("open.bytes must be in [1, ",
                                                   limits_.max_region_bytes,
                                                   "] (--max_region_bytes), got ", bytes));
  }
  int open_now = 0;
  {
    absl::MutexLock lock(&mu_);
    if (admitted_ >= limits_.max_regions) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the server holds ", admitted_, " colocated regions, its limit (--max_regions); close "
          "one or use the gRPC path"));
    }
    int& mine = per_client_[client];
    if (mine >= limits_.max_regions_per_client) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this client holds ", mine, " colocated regions, the limit per client "
          "(--max_regions_per_client)"));
    }
    if (bytes > limits_.max_region_total_bytes - admitted_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "a region of ", bytes, " bytes does not fit: the open regions hold ", admitted_bytes_,
          " of --max_region_total_bytes=", limits_.max_region_total_bytes));
    }
    ++mine;
    ++admitted_;
    admitted_bytes_ += bytes;
    open_now = admitted_;
  }
  metrics_->SetColocatedRegions(open_now);
  return std::unique_ptr<RegionTicket>(std::make_unique<Ticket>(this, client, bytes));
}

void RegionRegistry::Release(const std::string& client, int64_t bytes) {
  int open_now = 0;
  {
    absl::MutexLock lock(&mu_);
    --admitted_;
    admitted_bytes_ -= bytes;
    if (auto it = per_client_.find(client); it != per_client_.end() && --it->second <= 0) {
      per_client_.erase(it);
    }
    open_now = admitted_;
  }
  metrics_->SetColocatedRegions(open_now);
}

RegionRegistry::~RegionRegistry() {
  std::map<std::string, std::shared_ptr<ColocatedRegion>> left;
  {
    absl::MutexLock lock(&mu_);
    left.swap(regions_);
  }
  left.clear();  // the last references release their tickets into the counters, still alive
}

void RegionRegistry::Insert(std::shared_ptr<ColocatedRegion> region) {
  absl::MutexLock lock(&mu_);
  regions_[region->id()] = std::move(region);
}

void RegionRegistry::Remove(const std::string& id) {
  std::shared_ptr<ColocatedRegion> last;  // released outside the lock: it may unmap
  {
    absl::MutexLock lock(&mu_);
    if (auto it = regions_.find(id); it != regions_.end()) {
      last = std::move(it->second);
      regions_.erase(it);
    }
  }
}

absl::StatusOr<std::shared_ptr<ColocatedRegion>> RegionRegistry::Find(
    const std::string& id, const std::string& group, const std::string& principal,
    const char* field) const {
  if (id.size() != 32 || id.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " must be a region id from Colocate (32 lowercase hex digits), got '",
        PrintableName(id, 64), "'"));
  }
  std::shared_ptr<ColocatedRegion> region;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = regions_.find(id); it != regions_.end()) region = it->second;
  }
  if (region == nullptr) {
    return absl::NotFoundError(absl::StrCat(field, " ", id,
                                            " is not an open region (its Colocate stream ended, "
                                            "or it never existed)"));
  }
  if (region->owner().principal != principal) {
    return absl::PermissionDeniedError(
        absl::StrCat(field, " ", id, " was opened by another caller"));
  }
  if (region->owner().group != group) {
    return absl::InvalidArgumentError(absl::StrCat(field, " ", id, " belongs to group '",
                                                   region->owner().group, "', not '", group,
                                                   "'"));
  }
  return region;
}

int RegionRegistry::open() const {
  absl::MutexLock lock(&mu_);
  return admitted_;
}

}  // namespace optd::server
