// The two fixed 256-entry quantization tables of bitsandbytes' 8-bit optimizers, as constants
// (re-deriving them in float differs from the reference by 1-2 ulp on 42 entries).
#pragma once

namespace optd::core {

// Signed dynamic-tree map, for the first moment. Sorted ascending; index 127 is 0.
extern const float kSignedQuantMap[256];
// Unsigned dynamic-tree map, for the second moment. Sorted ascending; index 0 is 0.
extern const float kUnsignedQuantMap[256];

}  // namespace optd::core
