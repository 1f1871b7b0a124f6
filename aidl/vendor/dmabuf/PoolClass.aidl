/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

/** One size class of a heap's reserve pool of pre-allocated fresh buffers. */
@VintfStability
parcelable PoolClass {
    /** Page-rounded buffer size this class serves. */
    long size;
    /** Buffers the pool is filled to. */
    int targetCount;
    /** Buffers ready to hand out now. */
    int availableCount;
}
