/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

import vendor.dmabuf.HeapKind;
import vendor.dmabuf.PoolClass;

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
    /**
     * Bytes the service holds in this heap's reserve pool (buffers no app
     * owns yet); not part of allocatedBytes.
     * @since 2
     */
    long pooledBytes;
    /** The pool's size classes (empty: no pool). @since 2 */
    PoolClass[] poolClasses;
}
