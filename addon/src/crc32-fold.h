// zlib's CRC-32 (the IEEE polynomial, reflected), folded with carry-less multiplies where the CPU has them.
#pragma once
#include <cstddef>
#include <cstdint>

namespace shoal {

// The CRC-32 of buf[0..len) continuing from `crc` (0 to start), exactly as zlib's crc32(crc, buf, len).
uint32_t Crc32(uint32_t crc, const uint8_t* buf, size_t len);

}  // namespace shoal
