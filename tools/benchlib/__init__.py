"""shmlot's benchmark, as a package (tools/bench.py is its command line).

    common      exceptions, watchdog, logging, process helpers
    stats       95 % intervals (paired log-ratio t-intervals) and target verdicts
    env         the run's environment: its own lot, temp dir, the C floor, peers' resources
    subjects    shmlot's primitives and their peers, by role (lock, ping-pong pair, condition)
    results     rows (one figure per round) and scenarios (tables)
    targets     a figure, a threshold, a verdict: PASS, FAIL or undecided
    runner      rounds: subjects interleaved, rotated, repeated while a target is undecided
    registry    the scenarios by name (@scenario / register), for --only
    scenarios/  one module per family; importing the package registers them
    report      the table, the JSON document, the plot
    cli         the options and the run

A new family is a module in scenarios/ that registers its scenarios and is imported by
scenarios/__init__.py; nothing else changes.
"""
