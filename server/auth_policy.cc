#include "server/auth_policy.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace optd::server {
namespace {

// Names in messages and logs are escaped: a group name is the caller's text.
std::string Quoted(absl::string_view name) { return absl::StrCat("'", absl::CHexEscape(name), "'"); }

std::string Prefixes(const TokenGrant& grant) {
  std::vector<std::string> quoted;
  for (const std::string& p : grant.prefixes) quoted.push_back(Quoted(p));
  return absl::StrJoin(quoted, ", ");
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--token_file=", path, " cannot be read"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("--token_file=", path, ": read error"));
  return text.str();
}

}  // namespace

absl::string_view ActionName(Action action) {
  switch (action) {
    case Action::kStep: return "Step";
    case Action::kPullWeights: return "PullWeights";
    case Action::kSubscribe: return "Subscribe";
    case Action::kGetGroup: return "GetGroup";
    case Action::kListGroups: return "ListGroups";
    case Action::kExportState: return "ExportState";
    case Action::kCreateGroup: return "CreateGroup";
    case Action::kDeleteGroup: return "DeleteGroup";
    case Action::kUploadWeights: return "UploadWeights";
    case Action::kUpdateHyperparameters: return "UpdateHyperparameters";
    case Action::kSaveCheckpoint: return "SaveCheckpoint";
    case Action::kRestoreCheckpoint: return "RestoreCheckpoint";
    case Action::kImportState: return "ImportState";
    case Action::kColocate: return "Colocate";
  }
  return "unknown";
}

Role RequiredRole(Action action) {
  switch (action) {
    case Action::kStep:
    case Action::kPullWeights:
    case Action::kSubscribe:
    case Action::kGetGroup:
    case Action::kListGroups:
    case Action::kExportState:
    case Action::kColocate:
      return Role::kTrain;
    default:
      return Role::kAdmin;
  }
}

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(const AuthOptions& options,
                                                               Metrics* metrics) {
  std::unique_ptr<Authorizer> a(new Authorizer(options, metrics));
  if (!a->enabled()) return a;
  if (absl::Status s = a->Reload(); !s.ok()) return s;
  if (options.refresh > absl::ZeroDuration()) {
    a->watcher_ = std::thread([p = a.get()] { p->WatchTokenFile(); });
  }
  return a;
}

Authorizer::~Authorizer() {
  stop_.Notify();
  if (watcher_.joinable()) watcher_.join();
}

absl::Status Authorizer::Reload() {
  auto text = ReadFile(options_.token_file);
  if (!text.ok()) return text.status();
  {
    absl::MutexLock lock(&mu_);
    if (table_ != nullptr && *text == loaded_text_) return absl::OkStatus();
  }
  auto table = TokenTable::Parse(*text);
  if (!table.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--token_file=", options_.token_file, ": ", table.status().message()));
  }
  absl::MutexLock lock(&mu_);
  const bool first = table_ == nullptr;
  table_ = *std::move(table);
  loaded_text_ = *std::move(text);
  std::fprintf(stderr, "optd: %s --token_file: %zu tokens\n", first ? "loaded" : "reloaded",
               table_->size());
  return absl::OkStatus();
}

void Authorizer::WatchTokenFile() {
  while (!stop_.WaitForNotificationWithTimeout(options_.refresh)) {
    if (absl::Status s = Reload(); !s.ok()) {
      std::fprintf(stderr, "optd: keeping the previous tokens: %s\n", s.ToString().c_str());
    }
  }
}

absl::StatusOr<Caller> Authorizer::Authenticate(
    std::optional<absl::string_view> authorization) const {
  if (!enabled()) {
    static const Caller* const kEveryone =
        new Caller(std::make_shared<TokenGrant>(TokenGrant{Role::kAdmin, {""}, 0}));
    return *kEveryone;
  }
  constexpr absl::string_view kScheme = "bearer ";
  if (!authorization.has_value() || authorization->size() <= kScheme.size() ||
      !absl::StartsWithIgnoreCase(*authorization, kScheme)) {
    metrics_->RecordAuthFailure(AuthFailure::kMissingToken);
    return absl::UnauthenticatedError(
        "this server requires a bearer token: call metadata 'authorization: Bearer <token>'");
  }
  const absl::string_view token =
      absl::StripAsciiWhitespace(authorization->substr(kScheme.size()));
  std::shared_ptr<const TokenTable> table;
  {
    absl::MutexLock lock(&mu_);
    table = table_;
  }
  Caller caller = table->Find(token);
  if (caller == nullptr) {
    metrics_->RecordAuthFailure(AuthFailure::kUnknownToken);
    return absl::UnauthenticatedError("the bearer token is not valid");
  }
  return caller;
}

absl::Status Authorizer::Deny(const Caller& caller, AuthFailure reason,
                              std::string message) const {
  metrics_->RecordAuthFailure(reason);
  if (enabled()) {
    // Which credential was refused, for the operator (never the token itself).
    absl::StrAppend(&message, " (token file line ", caller->line, ")");
  }
  return absl::PermissionDeniedError(std::move(message));
}

absl::Status Authorizer::CheckRole(const Caller& caller, Action action) const {
  if (RequiredRole(action) == Role::kAdmin && caller->role != Role::kAdmin) {
    return Deny(caller, AuthFailure::kWrongRole,
                absl::StrCat(ActionName(action), " needs role admin; this token has role ",
                             RoleName(caller->role)));
  }
  return absl::OkStatus();
}

absl::Status Authorizer::Check(const Caller& caller, Action action, absl::string_view group) const {
  if (absl::Status s = CheckRole(caller, action); !s.ok()) return s;
  if (!caller->Covers(group)) {
    return Deny(caller, AuthFailure::kOutOfScope,
                absl::StrCat(ActionName(action), ": group ", Quoted(group),
                             " is outside the prefixes of this ", RoleName(caller->role),
                             " token (", Prefixes(*caller), ")"));
  }
  return absl::OkStatus();
}

absl::Status Authorizer::CheckCheckpoint(const Caller& caller, Action action,
                                         absl::string_view name) const {
  if (absl::Status s = CheckRole(caller, action); !s.ok()) return s;
  if (!caller->Covers(name)) {
    return Deny(caller, AuthFailure::kOutOfScope,
                absl::StrCat(ActionName(action), ": checkpoint name ", Quoted(name),
                             " does not begin with a prefix of this ", RoleName(caller->role),
                             " token (", Prefixes(*caller), ")"));
  }
  return absl::OkStatus();
}

absl::Status Authorizer::CheckEveryGroup(const Caller& caller, Action action) const {
  if (absl::Status s = CheckRole(caller, action); !s.ok()) return s;
  if (!caller->CoversAll()) {
    return Deny(caller, AuthFailure::kOutOfScope,
                absl::StrCat(ActionName(action), " of every group needs a token for every group "
                             "('*'); this ", RoleName(caller->role), " token has prefixes ",
                             Prefixes(*caller), ": list the groups"));
  }
  return absl::OkStatus();
}

}  // namespace optd::server
