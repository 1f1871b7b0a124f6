/*
 * dmabufd: the DMA-BUF allocator HAL. Stable (VINTF) AIDL, package vendor.dmabuf.
 */
package vendor.dmabuf;

@VintfStability
parcelable Buffer {
    ParcelFileDescriptor fd;
    /** The buffer's inode, as "ino:" in /proc/<pid>/fdinfo/<fd>. */
    long inode;
    /** Page-rounded size actually allocated. */
    long size;
    /** The heap that served the request (after alias resolution). */
    @utf8InCpp String heapName;
    @utf8InCpp String name;
}
