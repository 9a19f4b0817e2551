"""Whether the wall clock can be trusted yet. A Raspberry Pi has no real-time clock: until NTP has set the time
it boots into whatever date was saved at the last shutdown (or 1970), so schedules by hour and the SD-wear
budget's "day" cannot rely on it. The kernel says so: adjtimex(2) read-only (modes = 0, no privilege needed)
returns TIME_ERROR, or sets STA_UNSYNC in status, while no time daemon has synchronised the clock. Where the call
is not available the clock counts as synchronised only if its year is not before Hearth's own (a clock in
1970 or in the year of the last saved shutdown is not the time)."""

import ctypes
import ctypes.util
import time

BUILD_YEAR = 2026       # a date before this year is a clock that was never set
TIME_ERROR = 5          # adjtimex's return value while the clock is not synchronised
STA_UNSYNC = 0x0040


class _Timex(ctypes.Structure):
    # struct timex (include/uapi/linux/timex.h) on 64-bit Linux: 11 longs/ints then padding; only the first
    # fields are read, and the structure is given its full size (208 bytes) so the kernel writes inside it
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("_rest", ctypes.c_byte * 160)]


def _adjtimex():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.adjtimex
    except (OSError, AttributeError):
        return None


_ADJTIMEX = _adjtimex()


def kernel_says_synchronised() -> bool | None:
    """The kernel's word (None where adjtimex cannot be called, e.g. a sandbox that refuses it)."""
    if _ADJTIMEX is None:
        return None
    tx = _Timex()   # modes = 0: read only
    state = _ADJTIMEX(ctypes.byref(tx))
    if state < 0:
        return None
    return state != TIME_ERROR and not tx.status & STA_UNSYNC


def clock_synchronised(wall=time.time, kernel=kernel_says_synchronised) -> bool:
    """Whether schedules and the daily budget may go by the wall clock: the kernel says it is synchronised, and
    its date is not before Hearth's own year."""
    if time.gmtime(wall()).tm_year < BUILD_YEAR:
        return False
    said = kernel()
    return True if said is None else said
