# Buffer acquisition shared by the kernels (included, not imported: each extension stays one module).
from cpython.buffer cimport PyObject_GetBuffer, PyBUF_SIMPLE


cdef int get_contiguous(object obj, Py_buffer *view, str what, Py_ssize_t index=-1) except -1:
    """Acquire obj's bytes as one C-contiguous span; TypeError naming what (and index, if >= 0) if it can't."""
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except BufferError:
        # Formatted only on failure: the happy path runs once per block.
        name = f"{what}[{index}]" if index >= 0 else what
        raise TypeError(f"{name} must be C-contiguous; copy it with bytes() first") from None
    except TypeError:
        name = f"{what}[{index}]" if index >= 0 else what
        raise TypeError(f"{name} must be a bytes-like object (bytes, bytearray, memoryview), "
                        f"not {type(obj).__name__}") from None
    return 0
