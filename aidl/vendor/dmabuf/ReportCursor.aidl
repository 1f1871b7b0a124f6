/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

/**
 * Where a page of a report snapshot starts (getMemoryReportPage). All zero
 * takes a new snapshot; every page returns the cursor of the next one.
 */
@VintfStability
parcelable ReportCursor {
    /** The snapshot; 0 takes a new one. */
    long snapshotId;
    /** Index into the snapshot's processes. */
    int process;
    /** Index into that process's buffers: a process with more buffers than one page holds continues on the next page. */
    int processBuffer;
    /** Index into the snapshot's buffers (read after every process). */
    int buffer;
}
