/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

@VintfStability
parcelable AllocationRequest {
    /** A heap name from getHeaps(), or an alias from the service's config. */
    @utf8InCpp String heapName;
    /** Bytes; rounded up to whole pages. Must be > 0 and <= the heap's maximum. */
    long size;
    /** At most 31 bytes, no control characters. Empty: named after the heap. */
    @utf8InCpp String name;
    /** IDmaBufAllocator.FLAG_* bits. */
    int flags;
}
