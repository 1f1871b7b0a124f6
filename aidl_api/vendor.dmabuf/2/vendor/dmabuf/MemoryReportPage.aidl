/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
///////////////////////////////////////////////////////////////////////////////
// THIS FILE IS IMMUTABLE. DO NOT EDIT IN ANY CASE.                          //
///////////////////////////////////////////////////////////////////////////////

// This file is a snapshot of an AIDL file. Do not edit it manually. There are
// two cases:
// 1). this is a frozen version file - do not edit this in any case.
// 2). this is a 'current' file. If you make a backwards compatible change to
//     the interface (from the latest frozen version), the build system will
//     prompt you to update this file with `m <name>-update-api`.
//
// You must not make a backward incompatible change to any AIDL file built
// with the aidl_interface module type with versions property set. The module
// type is used to build AIDL files in a way that they can be used across
// independently updatable components of the system. If a device is shipped
// with such a backward incompatible change, it has a high risk of breaking
// later when a module using the interface is updated, e.g., Mainline modules.

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
