#include "server/wire_step_sender.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace optd::server {
namespace {

v1::StepResponse* Fill(StepWeightsSender& sender, int64_t offset) {
  v1::StepResponse* m = sender.Next();
  m->mutable_weights()->set_offset(offset);
  m->mutable_weights()->set_data(std::string(static_cast<size_t>(offset % 7 + 1), 'x'));
  return m;
}

TEST(StepWeightsSenderTest, WritesInSubmissionOrderAndFlushWaitsForAll) {
  std::vector<int64_t> written;  // only the sender's thread appends; read after Flush
  StepWeightsSender sender([&](const v1::StepResponse& r) {
    written.push_back(r.weights().offset());
    return true;
  });
  for (int64_t i = 0; i < 100; ++i) ASSERT_TRUE(sender.Submit(Fill(sender, i)));
  ASSERT_TRUE(sender.Flush());
  ASSERT_EQ(written.size(), 100u);
  for (int64_t i = 0; i < 100; ++i) EXPECT_EQ(written[static_cast<size_t>(i)], i);
}

TEST(StepWeightsSenderTest, NothingIsWrittenAfterAFailedWrite) {
  std::vector<int64_t> written;
  StepWeightsSender sender([&](const v1::StepResponse& r) {
    written.push_back(r.weights().offset());
    return r.weights().offset() != 3;  // the client goes away at message 3
  });
  bool refused = false;
  for (int64_t i = 0; i < 50 && !refused; ++i) refused = !sender.Submit(Fill(sender, i));
  EXPECT_FALSE(sender.Flush());
  EXPECT_FALSE(sender.Submit(sender.Next()));
  ASSERT_EQ(written.size(), 4u);  // 0, 1, 2 and the failed 3
  EXPECT_EQ(written.back(), 3);
}

TEST(StepWeightsSenderTest, AtMostDepthMessagesExist) {
  absl::Notification release;
  std::atomic<int> writes{0};
  StepWeightsSender sender(
      [&](const v1::StepResponse&) {
        release.WaitForNotification();
        ++writes;
        return true;
      },
      /*depth=*/2);
  v1::StepResponse* a = sender.Next();
  v1::StepResponse* b = sender.Next();
  EXPECT_NE(a, b);
  ASSERT_TRUE(sender.Submit(a));
  ASSERT_TRUE(sender.Submit(b));
  // Both messages are queued or being written: a third Next would block until one is free.
  std::atomic<bool> got_third{false};
  std::thread t([&] {
    v1::StepResponse* c = sender.Next();
    got_third = true;
    EXPECT_TRUE(c == a || c == b);  // reused, not a new one
    sender.Submit(c);
  });
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(got_third.load());
  release.Notify();
  t.join();
  EXPECT_TRUE(sender.Flush());
  EXPECT_EQ(writes.load(), 3);
}

TEST(StepWeightsSenderTest, DestructorWritesWhatIsQueued) {
  std::atomic<int> writes{0};
  {
    StepWeightsSender sender([&](const v1::StepResponse&) {
      ++writes;
      return true;
    });
    for (int64_t i = 0; i < 5; ++i) sender.Submit(Fill(sender, i));
  }
  EXPECT_EQ(writes.load(), 5);
}

}  // namespace
}  // namespace optd::server
