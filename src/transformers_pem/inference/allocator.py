"""The C library's allocator tuned for PyTorch on CPU ([`tune_glibc_malloc`])."""

import ctypes
import platform

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# mallopt takes an int, so 2 GiB is the largest trim threshold it can set.
_NEVER_TRIM = 2**31 - 1

_tuned = False


def tune_glibc_malloc() -> bool:
    """Keep the memory PyTorch frees on CPU in the process, for its next tensors: glibc's `mallopt(M_MMAP_MAX, 0)`
    (large blocks come from the heap, not from fresh memory maps) and `mallopt(M_TRIM_THRESHOLD, 2**31 - 1)` (freed
    heap memory is not handed back to the system), the effect of the environment variables `MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=2147483647`.

    PyTorch allocates every feature map anew. By default glibc maps blocks of 32 MiB and more fresh from the system
    and returns freed memory, so every forward pass writes to new pages and page-faults on each of them (the README's
    Speed section has the measured effect). The setting is process-wide and the process keeps its peak memory
    (reused, not returned), so call it at the start of an inference or training process; the training, evaluation
    and benchmark scripts do. Returns whether it was applied: False, with nothing changed, where the C library is not
    glibc."""
    global _tuned
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    _tuned = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return _tuned


def glibc_malloc_tuned() -> bool:
    """Whether `tune_glibc_malloc()` has been applied in this process."""
    return _tuned


def release_free_memory() -> bool:
    """Hand the heap memory freed so far back to the system (glibc's `malloc_trim(0)`), e.g. after a request much
    larger than the usual ones in a process tuned by `tune_glibc_malloc`, which otherwise keeps its peak. Returns
    whether it ran (glibc only)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return True
