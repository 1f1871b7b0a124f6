/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

import vendor.dmabuf.HeapKind;

@VintfStability
parcelable HeapInfo {
    @utf8InCpp String name;
    HeapKind kind;
    long maxAllocationSize;
    /** Bytes of live buffers this service allocated from the heap. */
    long allocatedBytes;
    int bufferCount;
    /** Aliases that resolve to this heap. */
    @utf8InCpp String[] aliases;
}
