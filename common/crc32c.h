/* CRC32C (Castagnoli), as used by iSCSI and ext4: reflected polynomial
 * 0x82F63B78, initial value ~0, final xor ~0. crc32c("123456789") is
 * 0xE3069283. Every metadata block on disk carries one.
 */
#ifndef COMMON_CRC32C_H
#define COMMON_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC of a whole buffer. */
uint32_t crc32c(const void *buf, size_t len);

/* Continue a CRC: crc32c_update(crc32c(a), b) == crc32c(a ++ b). */
uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len);

#endif
