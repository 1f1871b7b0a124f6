/*
 * android.hardware.memtrack, version 1: see IMemtrack.aidl.
 */
package android.hardware.memtrack;

@VintfStability
parcelable MemtrackRecord {
    /** Counted by smaps (mapped memory the kernel already shows). */
    const int FLAG_SMAPS_ACCOUNTED = 1 << 1;
    /** Not visible to smaps (e.g. VM_PFNMAP mappings, unmapped buffers). */
    const int FLAG_SMAPS_UNACCOUNTED = 1 << 2;
    /** Shared memory, at its full size. */
    const int FLAG_SHARED = 1 << 3;
    /** Shared memory, proportionally to the processes sharing it. */
    const int FLAG_SHARED_PSS = 1 << 4;
    /** Memory only this process uses. */
    const int FLAG_PRIVATE = 1 << 5;
    /** Memory from system RAM. */
    const int FLAG_SYSTEM = 1 << 6;
    /** Dedicated memory (not system RAM). */
    const int FLAG_DEDICATED = 1 << 7;
    /** Memory the CPU may access. */
    const int FLAG_NONSECURE = 1 << 8;
    /** Memory the CPU may not access. */
    const int FLAG_SECURE = 1 << 9;

    int flags;
    long sizeInBytes;
}
