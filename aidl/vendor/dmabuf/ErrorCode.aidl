/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

/** Service-specific error codes of IDmaBufAllocator. */
@VintfStability
@Backing(type="int")
enum ErrorCode {
    UNKNOWN_HEAP = 1,
    INVALID_SIZE = 2,
    INVALID_NAME = 3,
    INVALID_FLAGS = 4,
    QUOTA_EXCEEDED = 5,
    NO_MEMORY = 6,
    NO_SUCH_PROCESS = 7,
    /** The reply would not fit in one binder transaction; use the paged method. @since 2 */
    REPORT_TOO_LARGE = 8,
    /** The snapshot named by a paged call expired or is not the caller's; start again with 0. @since 2 */
    STALE_SNAPSHOT = 9,
}
