/*
 * android.hardware.memtrack, version 1 (frozen upstream; there is no version 2),
 * written for dmabufd's Linux build from the interface's published facts so
 * the wire contract matches: package, names, method order, constants and
 * parcelable field order. On Android the platform's own
 * android.hardware.memtrack module is the definition (see Android.bp).
 */
package android.hardware.memtrack;

import android.hardware.memtrack.DeviceInfo;
import android.hardware.memtrack.MemtrackRecord;
import android.hardware.memtrack.MemtrackType;

@VintfStability
interface IMemtrack {
    /**
     * The memory of one type that process `pid` uses, as records whose flags
     * say how each amount is accounted. pid 0 with GL: the system-wide
     * GPU-private total; pid 0 with any other type reports 0. A negative pid
     * is EX_ILLEGAL_ARGUMENT; an unsupported type EX_UNSUPPORTED_OPERATION.
     */
    MemtrackRecord[] getMemory(in int pid, in MemtrackType type);

    /** The GPU devices of the system (id and sysfs name). */
    DeviceInfo[] getGpuDeviceInfo();
}
