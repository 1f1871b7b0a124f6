/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

@VintfStability
@Backing(type="int")
enum HeapKind {
    /** A kernel DMA-BUF heap under /dev/dma_heap. */
    DMA_HEAP = 0,
    /** /dev/udmabuf over sealed memfds: a real dma-buf. */
    UDMABUF = 1,
    /** Sealed memfds, not dma-bufs: the embedded fallback where no kernel heap exists. */
    MEMFD = 2,
}
