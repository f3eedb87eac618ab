"""Targets of multiprocessing children, at module level so that spawn children import them."""
import contextlib
import os
import threading

import shmlot

from helpers.segments import attach_segment


def open_primitive(kind, obj):
    """``obj`` itself, or, when it is a name, the named object of ``kind`` opened in this process
    (a Semaphore takes value 1 if this call creates it)."""
    if not isinstance(obj, str):
        return obj
    cls = getattr(shmlot, kind)
    if kind in ("Semaphore", "BoundedSemaphore"):
        return cls(1, name=obj)
    return cls(name=obj)


def critical(kind, obj):
    """A context manager holding ``obj`` exclusively (RLock: twice, nested)."""
    if kind == "RWLock":
        return obj.write()
    if kind == "RLock":
        stack = contextlib.ExitStack()
        stack.enter_context(obj)
        stack.enter_context(obj)
        return stack
    return obj


def locked_increments(kind, obj, seg_name, iters, nthreads=1, offset=0):
    """In ``nthreads`` threads, ``iters`` times each: hold ``obj`` and increment the int64 at
    ``offset`` of segment ``seg_name`` *non-atomically* (load, yield now and then, store), so
    that any two holders at once lose an increment."""
    obj = open_primitive(kind, obj)
    seg = attach_segment(seg_name)
    errors = []

    def run():
        try:
            for i in range(iters):
                with critical(kind, obj):
                    v = seg.load(offset)
                    if i % 16 == 0:
                        os.sched_yield()
                    seg.store(offset, v + 1)
        except BaseException as exc:  # noqa: B902 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seg.close()
    if errors:
        raise errors[0]
