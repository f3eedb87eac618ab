"""The scenario families. Importing this package registers them, in the order of the report."""
from . import single, pingpong, contended, notify, park, memory, instructions, scale, external  # noqa: F401
