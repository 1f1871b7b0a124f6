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

import vendor.dmabuf.AllocationRequest;
import vendor.dmabuf.Buffer;
import vendor.dmabuf.DumpChunk;
import vendor.dmabuf.HeapInfo;
import vendor.dmabuf.MemoryReport;
import vendor.dmabuf.MemoryReportPage;
import vendor.dmabuf.ProcessMemory;
import vendor.dmabuf.ReportCursor;

/**
 * The allocator service. It alone opens the DMA-BUF heap devices; apps get
 * named dma-buf fds from it and the service records who allocated each one.
 * Refusals are service-specific errors carrying an ErrorCode; permission
 * refusals are EX_SECURITY.
 */
@VintfStability
interface IDmaBufAllocator {
    /** Prefer "<heap>-uncached" where such a heap exists (no CPU access wanted). */
    const int FLAG_NO_CPU_ACCESS = 1;

    /** The most buffers one allocateBatch call makes. */
    const int MAX_BATCH_COUNT = 64;

    /** The heaps this service serves, with their limits and current usage. */
    HeapInfo[] getHeaps();

    /** Allocates one buffer; the returned fd is the caller's only reference. */
    Buffer allocate(in AllocationRequest request);

    /**
     * DMA-BUF memory of one process (rss, pss, hwm, its buffers). Any caller
     * may ask about itself; other pids need a privileged caller.
     */
    ProcessMemory getProcessMemory(int pid);

    /** Every process, every buffer, and totals. Privileged callers only. */
    MemoryReport getMemoryReport();

    /** Resets the high-water mark of pid (0 = every process). Privileged. */
    void resetHighWaterMark(int pid);

    /**
     * The bytes dump(fd, args) would write (text, or protobuf with --proto),
     * for transports where the dump transaction cannot carry an fd
     * (RPC binder). Privileged, like dump.
     */
    byte[] renderDump(in @utf8InCpp String[] args);

    /**
     * Allocates count buffers (1..MAX_BATCH_COUNT) of one request, all or
     * nothing: quota for the whole batch is reserved up front, and if any
     * buffer cannot be made, every buffer already made is released and the
     * error names the failing index and why. Every buffer carries the
     * request's name and is recorded and owned like one from allocate().
     * @since 2
     */
    Buffer[] allocateBatch(in AllocationRequest request, int count);

    /**
     * One page of the memory report, for systems whose whole report does not
     * fit in one binder transaction. A zero cursor takes a new snapshot; pass
     * each page's next cursor to read the rest of the same snapshot.
     * Snapshots expire (ErrorCode.STALE_SNAPSHOT). Privileged.
     * @since 2
     */
    MemoryReportPage getMemoryReportPage(in ReportCursor from);

    /**
     * A chunk of the bytes renderDump(args) would return, for dumps larger
     * than one binder transaction. snapshotId 0 renders a new snapshot;
     * pass the returned snapshotId and offset + data.length to continue.
     * Privileged.
     * @since 2
     */
    DumpChunk renderDumpChunk(in @utf8InCpp String[] args, long snapshotId, long offset);
}
