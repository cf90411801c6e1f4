// Who may call what: bearer tokens (auth_tokens.h) checked against the roles and group-name
// prefixes of docs/security.md. The service adapters authenticate each call once, from its
// `authorization` metadata, and check each group as soon as they know it: unary requests at
// once, streams on the message that names the group (auth_streams.h).
//
// Note [Roles]
// train: Step, PullWeights, Subscribe, GetGroup, ListGroups (only groups in scope),
//        ExportState, Colocate (a region for the steps of a group; docs/colocated.md). These read a group or advance it by the optimizer's own rule; ExportState
//        is a read like PullWeights (a trainer saving its own state_dict needs it).
// admin: everything train may, plus CreateGroup, DeleteGroup, UploadWeights (it overwrites the
//        weights, as ImportState overwrites the state), UpdateHyperparameters, SaveCheckpoint,
//        RestoreCheckpoint, ImportState.
// Both only on groups their prefixes cover. A checkpoint file name must be covered too (the
// files of all tenants share one directory); a checkpoint of "every group" (SaveCheckpoint or
// RestoreCheckpoint with no groups listed) needs a token that covers every group ('*'), except
// that SaveCheckpoint from a narrower admin saves the groups it covers.
// Scope is checked before the group is looked up, so a token learns nothing about groups outside
// its prefixes, not even whether they exist.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/auth_tokens.h"
#include "server/metrics.h"

namespace optd::server {

// The service's methods, by the role they need (Note [Roles]).
enum class Action {
  kStep,
  kPullWeights,
  kSubscribe,
  kGetGroup,
  kListGroups,
  kExportState,
  kCreateGroup,
  kDeleteGroup,
  kUploadWeights,
  kUpdateHyperparameters,
  kSaveCheckpoint,
  kRestoreCheckpoint,
  kImportState,
  kColocate,
};
absl::string_view ActionName(Action action);  // the RPC's name, e.g. "DeleteGroup"
Role RequiredRole(Action action);

// The credential of one call: what its token grants.
using Caller = std::shared_ptr<const TokenGrant>;

struct AuthOptions {
  // Token file (Note [Token file]); empty = no authentication: every caller is an admin of every
  // group (for loopback and development only, docs/security.md).
  std::string token_file;
  // How often the token file is read again; a changed file replaces the tokens (a file that no
  // longer parses is logged and the old tokens stay). Zero = never.
  absl::Duration refresh = absl::Seconds(60);
};

// Thread safety: thread-safe.
class Authorizer {
 public:
  // Loads the token file (InvalidArgument or NotFound naming the flag when it cannot be read or
  // parsed) and starts its watcher. `metrics` counts the failures and must outlive this.
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(const AuthOptions& options,
                                                            Metrics* metrics);
  ~Authorizer();
  Authorizer(const Authorizer&) = delete;
  Authorizer& operator=(const Authorizer&) = delete;

  bool enabled() const { return !options_.token_file.empty(); }

  // The caller behind an `authorization` metadata value ("Bearer <token>"; nullopt: the call
  // carried none). Unauthenticated when missing, malformed or unknown (counted).
  // Without a token file: an admin of every group, whatever the call carried.
  absl::StatusOr<Caller> Authenticate(std::optional<absl::string_view> authorization) const;

  // PermissionDenied (counted) unless the caller's role allows `action` and its prefixes cover
  // `group`. The message names the action, the group and the role.
  absl::Status Check(const Caller& caller, Action action, absl::string_view group) const;
  // The role part of Check alone (actions that do not name one group).
  absl::Status CheckRole(const Caller& caller, Action action) const;
  // For a checkpoint file `name`: role, and `name` covered by the prefixes.
  absl::Status CheckCheckpoint(const Caller& caller, Action action, absl::string_view name) const;
  // For `action` on every group (a checkpoint without a group list): role, and a token that
  // covers every group.
  absl::Status CheckEveryGroup(const Caller& caller, Action action) const;

 private:
  Authorizer(const AuthOptions& options, Metrics* metrics) : options_(options), metrics_(metrics) {}
  // Reads and parses the token file; installs it when its text changed.
  absl::Status Reload();
  void WatchTokenFile();
  absl::Status Deny(const Caller& caller, AuthFailure reason, std::string message) const;

  const AuthOptions options_;
  Metrics* const metrics_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const TokenTable> table_ ABSL_GUARDED_BY(mu_);
  std::string loaded_text_ ABSL_GUARDED_BY(mu_);  // only the watcher thread compares it
  absl::Notification stop_;
  std::thread watcher_;
};

}  // namespace optd::server
