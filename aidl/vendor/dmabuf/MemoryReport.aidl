/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

import vendor.dmabuf.BufferInfo;
import vendor.dmabuf.HeapTotal;
import vendor.dmabuf.OwnerTotal;
import vendor.dmabuf.ProcessMemory;

/** The whole system's DMA-BUF memory as the service sees it. */
@VintfStability
parcelable MemoryReport {
    /** Milliseconds since the Unix epoch when the report was built. */
    long timestampMs;
    ProcessMemory[] processes;
    BufferInfo[] buffers;
    HeapTotal[] heapTotals;
    OwnerTotal[] ownerTotals;
    int totalCount;
    long totalBytes;
    /** Buffers this service allocated that no readable process references but are still alive (best effort). */
    long unreferencedBytes;
}
