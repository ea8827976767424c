"""Run small dense linear algebra single-threaded.

L-BFGS-B calls BLAS/LAPACK on tiny matrices (k parameters, k <= 20). With OpenBLAS
in multi-threaded mode every such call pays a thread wake-up; on a 2-core machine
we measured scipy's L-BFGS-B about 30x slower than single-threaded for a 5-parameter
fit. :func:`single_blas_thread` sets every loaded OpenBLAS to one thread (through
its C API, like threadpoolctl does) and restores the previous count afterwards. On
platforms without ``/proc/self/maps`` or without OpenBLAS it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

_SETTERS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


def _openblas_handles() -> list[tuple[object, object]]:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    handles = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SETTERS:
            setter = getattr(lib, set_name, None)
            getter = getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                handles.append((setter, getter))
                break
    return handles


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """Context manager: OpenBLAS uses one thread inside, the old count is restored after."""
    handles = _openblas_handles()
    previous = []
    for setter, getter in handles:
        try:
            previous.append(int(getter()))
            setter(1)
        except Exception:  # pragma: no cover - exotic builds
            previous.append(None)
    try:
        yield
    finally:
        for (setter, _), n in zip(handles, previous, strict=True):
            if n is not None:
                setter(n)
