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

import vendor.dmabuf.BufferRef;

/** DMA-BUF memory of one process, with dmabuf_rss / dmabuf_pss / hwm semantics. */
@VintfStability
parcelable ProcessMemory {
    int pid;
    int uid;
    @utf8InCpp String name;
    /** Sum of the full sizes of the distinct buffers the process references. */
    long rssBytes;
    /** Sum over its buffers of size / number of referencing processes. */
    long pssBytes;
    /** Highest rssBytes observed (at allocation, report and periodic scan) since reset. */
    long hwmBytes;
    BufferRef[] buffers;
    /** False when the process's fds/maps could not be read; then error says why. */
    boolean readable;
    @utf8InCpp String error;
}
