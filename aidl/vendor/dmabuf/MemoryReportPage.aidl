/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

import vendor.dmabuf.MemoryReport;
import vendor.dmabuf.ReportCursor;

/** A slice of one report snapshot (IDmaBufAllocator.getMemoryReportPage). */
@VintfStability
parcelable MemoryReportPage {
    /**
     * The snapshot's scalar totals on every page; heapTotals and ownerTotals
     * on the first page only; processes, then buffers, of this page's slice.
     * A process continued from the previous page comes first, with the same
     * pid and figures and the rest of its buffers: append them to it.
     */
    MemoryReport report;
    /** Processes and buffers in the whole snapshot. */
    int processCount;
    int bufferCount;
    /** Where the next page starts (snapshotId set). */
    ReportCursor next;
    /** True on the last page. */
    boolean done;
}
