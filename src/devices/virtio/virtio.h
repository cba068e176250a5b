// Constants from the virtio 1.x specification shared by the transport and the devices.
#pragma once

#include <cstdint>

namespace keel::virtio {

// Device status bits (2.1).
inline constexpr uint8_t kStatusAcknowledge = 1;
inline constexpr uint8_t kStatusDriver = 2;
inline constexpr uint8_t kStatusDriverOk = 4;
inline constexpr uint8_t kStatusFeaturesOk = 8;
inline constexpr uint8_t kStatusNeedsReset = 0x40;
inline constexpr uint8_t kStatusFailed = 0x80;

// Reserved feature bits (6).
inline constexpr int kFeatureRingIndirectDesc = 28;
inline constexpr int kFeatureRingEventIdx = 29;
inline constexpr int kFeatureVersion1 = 32;

constexpr uint64_t bit(int n) { return uint64_t{1} << n; }

// Device ids (5).
inline constexpr uint16_t kIdNet = 1;
inline constexpr uint16_t kIdBlock = 2;
inline constexpr uint16_t kIdConsole = 3;
inline constexpr uint16_t kIdEntropy = 4;

inline constexpr uint16_t kNoVector = 0xffff;  // VIRTIO_MSI_NO_VECTOR

}  // namespace keel::virtio
