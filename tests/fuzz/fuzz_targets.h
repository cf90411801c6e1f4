// The bodies of optd's libFuzzer harnesses, as plain functions so that one gtest binary can
// replay committed inputs through them in any build (gcc included), while the fuzzers built with
// clang call them from LLVMFuzzerTestOneInput (docs/testing.md).
//
// Each function accepts any bytes, returns 0 and must neither crash nor trip a sanitizer. They
// also check a few properties of what the server code returned (a decoded chunk's payload size
// matches its element count, a restored group reads back what the file holds), and abort when
// one does not hold, so the fuzzer reports it as a crash.
//
// Thread safety: not thread-safe (a fuzzer runs one input at a time; the small group the
// harnesses share is created once on first use).
#pragma once

#include <cstddef>
#include <cstdint>

namespace optd::fuzz {

// Request validation. Byte 0 picks the request:
//   even: bytes [1, n) are a CreateGroupRequest for RecordFromCreateRequest; a small valid
//         record is then created on the CPU engine;
//   odd:  bytes [1, n) are an UploadWeightsRequest, decoded and then checked by both
//         CheckGradientChunk and CheckUploadChunk against a fixed small group.
int RequestValidationOneInput(const uint8_t* data, size_t size);

// Chunk assembly: a sequence of records `u8 kind | u8 cut | u16 length | length bytes`; each is
// split into gRPC slices at positions derived from `cut` and decoded as a StepRequest (kind 0..1),
// UploadWeightsRequest (2) or StateChunk (3). Gradient chunks that pass CheckGradientChunk are
// reserved in one GradientSet and their payload copied in, as the step path does; a complete set
// is then applied to the CPU engine's copy of the fixed group.
int ChunkAssemblyOneInput(const uint8_t* data, size_t size);

// Checkpoint loading: the bytes are written to a temporary file and opened with
// CheckpointReader::Open; each group it lists that is small enough is created on the CPU engine
// and restored with RestoreGroup. When byte 1 is even (as in "OPTDCKPT"), the footer's file_size and CRC are set to
// match the bytes first, so that the parser behind the checksum is reached.
int CheckpointLoadOneInput(const uint8_t* data, size_t size);

}  // namespace optd::fuzz
