// Process allocator settings for bulk transfers.
//
// Note [glibc malloc and gRPC's receive buffers]
// gRPC allocates its receive buffers with malloc, a few hundred KB to several MB each, and frees
// them as soon as their bytes were copied out. Under glibc's defaults those blocks are mapped
// and unmapped (or trimmed) again and again, so every received MB is faulted in and zeroed by
// the kernel anew: on the development VM a third of the receive time went to page faults
// (docs/wire.md), and perf of the wire benchmark on 2026-12-01 showed the client's clear_page
// and fault handling above its own copying. Raising glibc's mmap and trim thresholds keeps
// freed blocks in the heap for the next receive. This is a setting of the whole process (the
// trainer that loads the client), made once, and only under glibc; ClientOptions::tune_malloc
// = false leaves the allocator alone. It changes no result, only how much memory the process
// keeps after a burst (up to about a transfer's worth).
#pragma once

namespace optd::client::internal {

// Applies the settings above once per process (later calls do nothing).
void TuneMallocForBulkTransfers();

}  // namespace optd::client::internal
