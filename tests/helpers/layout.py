"""Where things are in a lot's segment, for the tests that read or write its bytes on purpose.

Every offset and size comes from the C header through cffi (``ffi.offsetof`` on the structs
cffi_build.py declares), every constant from ``lib.SL_*`` and the bucket of a key from the core's
own ``sl_bucket_of``: none is written here again, so none can drift from the C.
"""
import struct

from shmlot._core import ffi, lib

_FORMATS = {4: "<I", 8: "<Q"}


def field(struct_name, name):
    """(byte offset, struct format) of field ``name`` of the C struct ``struct_name`` (format
    None for a field that is itself a struct)."""
    for fname, cfield in ffi.typeof(struct_name).fields:
        if fname == name:
            return cfield.offset, _FORMATS.get(ffi.sizeof(cfield.type))
    raise KeyError(f"{struct_name} has no field {name!r}")


def header_field(name):
    """(offset, format) of ``sl_header.name`` in the segment."""
    return field("sl_header", name)


def read(buf, offset, fmt):
    return struct.unpack_from(fmt, buf, offset)[0]


def write(buf, offset, fmt, value):
    struct.pack_into(fmt, buf, offset, value)


def header_value(lot, name):
    """The value of header field ``name`` of the mapped ``lot``."""
    return read(lot._buffer, *header_field(name))


def bucket_of(lot, key):
    """The index of the bucket whose queue holds the threads parked on ``key`` in ``lot``."""
    return lib.sl_bucket_of(lot._h(), key)


def bucket_field(lot, bucket, name):
    """(offset, format) in ``lot``'s segment of field ``name`` of bucket record ``bucket``."""
    off, fmt = field("sl_bucket", name)
    return (header_value(lot, "buckets_off") + bucket * header_value(lot, "bucket_stride")
            + off, fmt)


def slot_offset(lot, index):
    """Where slot record ``index`` of ``lot`` starts in its segment."""
    return header_value(lot, "slots_off") + index * header_value(lot, "slot_stride")


def slot_field(lot, index, name):
    """(offset, format) in ``lot``'s segment of field ``name`` of slot ``index``."""
    off, fmt = field("sl_slot", name)
    return slot_offset(lot, index) + off, fmt


def lock_word(pid, tid, start):
    """A lock word naming holder (pid, tid, start time) as held: the word a Lock or an internal
    lock holds while taken."""
    return (lib.SL_LOCKED_BIT | (pid & lib.SL_ID_MASK) << lib.SL_PID_SHIFT
            | (tid & lib.SL_ID_MASK) << lib.SL_TID_SHIFT
            | (start & lib.SL_START_MASK) << lib.SL_START_SHIFT)
