/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

import vendor.dmabuf.MemoryReport;

/** A slice of one report snapshot (IDmaBufAllocator.getMemoryReportPage). */
@VintfStability
parcelable MemoryReportPage {
    /** Names the snapshot; pass it back to read the next page. */
    long snapshotId;
    /**
     * The snapshot's scalar totals on every page; heapTotals and ownerTotals
     * on the first page only (offsets 0, 0); processes and buffers hold this
     * page's slice, starting at the requested offsets.
     */
    MemoryReport report;
    /** Processes and buffers in the whole snapshot. */
    int processCount;
    int bufferCount;
    /** Offsets of the next page; both equal the counts once done. */
    int nextProcessOffset;
    int nextBufferOffset;
    boolean done;
}
