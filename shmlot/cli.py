"""``shmlot-stat``: look into a live lot without blocking it.

    shmlot-stat [LOT]                 header, counters, one row per parked thread
    shmlot-stat [LOT] --objects       the objects of the registry: kind, state, owner, waiters
    shmlot-stat [LOT] --deadlocks     wait-for cycles (exit status 3 when there is one)
    shmlot-stat [LOT] --all           all of the above
    shmlot-stat [LOT] --reap          free the slots and holds of dead processes, say what
    shmlot-stat --list                every lot on this machine
    shmlot-stat --unlink NAME         remove a lot
    shmlot-stat ... --watch [SECONDS] refresh in place until Ctrl-C
    shmlot-stat ... --json            one JSON document (schema: docs/stat.md)

LOT defaults to the default lot ($SHMLOT_LOT, else shmlot-<uid>). The tool only ever attaches:
it never creates a lot. Exit status: 0 success, 1 lot missing / corrupt / not permitted (one-line
message on stderr), 2 usage error, 3 a deadlock was found (with --deadlocks).

Also runs as ``python -m shmlot.stat`` (shmlot/stat.py runs ``main``).
"""
import argparse
import json
import os
import pwd
import shutil
import stat as _stat
import sys
import time

from . import kinds
from .deadlock import check, held_by
from .errors import LotCorruptError, LotNotFoundError
from .kinds import BARRIER_HOLD, PERMIT_HOLD, READ_HOLD, RESOURCE_HOLD, token_text
from .lot import NAME_MAX, ParkingLot, default_lot_name
from .snapshot import is_lot_file, snapshot

__all__ = ["main", "fmt_duration", "fmt_size", "render", "list_lots", "reap_lot", "SCHEMA",
           "EXIT_OK", "EXIT_LOT", "EXIT_USAGE", "EXIT_DEADLOCK"]

SCHEMA = 1
EXIT_OK, EXIT_LOT, EXIT_USAGE, EXIT_DEADLOCK = 0, 1, 2, 3
WIDTH = 100       # when the output is not a terminal and COLUMNS is not set
MIN_WIDTH = 80    # narrower terminals get 80-column lines
KEY_WIDTH = 100   # below this, the parked threads' KEY column is left out
SHM_DIR = "/dev/shm"
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen

PROG = "shmlot-stat"


# ---- human-friendly numbers ------------------------------------------------------------------

def fmt_duration(seconds):
    """"350ms", "1.2s", "42s", "3m04s", "2h05m", "3d04h"."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def fmt_size(n):
    """"512 B", "4.0 KiB", "2.1 MiB", "1.5 GiB"."""
    n = float(n)
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


def _esc(text):
    """``text`` with every non-printable character (escape sequences, newlines, bidi controls)
    written as a Python escape: names come from other users' processes and must not drive the
    terminal, nor forge a row."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _clip(text, width):
    text = _esc(text)
    if len(text) <= width:
        return text
    return text[:max(0, width - 2)] + ".." if width >= 3 else text[:width]


def _table(columns, rows):
    """Aligned columns: ``columns`` is [(title, width, "<" or ">")]; cells are clipped."""
    def line(cells):
        parts = []
        for (_, width, align), cell in zip(columns, cells):
            cell = _clip("" if cell is None else cell, width)
            parts.append(f"{cell:{align}{width}}")
        return " ".join(parts).rstrip()
    return [line([c[0] for c in columns])] + [line(r) for r in rows]


def _width():
    """The terminal's width (COLUMNS first, as shutil says), else WIDTH; at least MIN_WIDTH."""
    return max(MIN_WIDTH, shutil.get_terminal_size((WIDTH, 40)).columns)


def _wrap_items(prefix, items, width=None):
    """``prefix`` then "name value" items, wrapped at ``width`` with a hanging indent."""
    width = width or _width()
    lines, cur = [], prefix
    indent = " " * len(prefix)
    for item in items:
        if cur.strip() and len(cur) + 2 + len(item) > width:
            lines.append(cur.rstrip())
            cur = indent
        cur += item + "  "
    lines.append(cur.rstrip())
    return lines


def _key(key):
    return f"0x{key:016x}"


# ---- sections ---------------------------------------------------------------------------------

COUNTER_LABELS = [
    ("parks", "parks"), ("unparks", "unparks"), ("timeouts", "timeouts"),
    ("requeues", "requeues"), ("fair_handoffs", "fair handoffs"),
    ("owner_deaths", "owner deaths recovered"), ("reaped", "reaped"),
    ("full_waits", "lot-full waits"), ("invalid_parks", "invalid parks"),
    ("bucket_repairs", "bucket repairs"), ("woken_ahead", "woken ahead"),
]


def _header_lines(snap):
    h = snap.header
    gone = "  (unlinked)" if h["unlinked"] else ""
    lines = [
        f"lot {h['name']!r}  {h['waiter']}  {fmt_size(h['size'])}  {h['buckets']} buckets  "
        f"slots {h['slots_used']} used / {h['slots_free']} free  "
        f"objects {h['objects_used']}/{h['objects']}{gone}",
        f"created {fmt_duration(snap.taken_at - h['created'])} ago by pid {h['creator_pid']}  "
        f"(lot id {h['lot_id']:016x}, layout v{h['version']})",
    ]
    return [_clip(x, _width()) for x in lines]


def _counter_lines(snap):
    items = [f"{label} {snap.counters.get(name, 0)}" for name, label in COUNTER_LABELS]
    return _wrap_items("counters: ", items)


def _object_cell(p):
    if p.object is None:
        return "-"
    # a role is named for the kinds that have several (RWLock read/write, Condition lock/wait)
    role = p.role if len(kinds.by_code(p.object.kind_code).roles) > 1 else None
    label = p.object.label
    return f"{label} ({role})" if role else label


PARKED_FIXED = [("PID", 7, ">"), ("TID", 7, ">"), ("PROCESS", 12, "<"), ("ALIVE", 5, "<"),
                ("KEY", 18, "<")]
PARKED_TAIL = [("TOKEN", 9, "<")]   # then HELD BY (flexible), then PARKED
PARKED_TIME = ("PARKED", 7, ">")


def _held_by_cell(holders):
    if not holders:
        return "-"
    h = holders[0]
    text = f"pid {h['pid']} tid {h['tid']}" + ("" if h["alive"] else " DEAD")
    if len(holders) > 1:
        text += f" +{len(holders) - 1}"
    return text


def _flex(fixed, flexible, width):
    """Widths for the ``flexible`` columns [(title, wanted, minimum)] so that the row fits in
    ``width`` next to the ``fixed`` ones: each gets at least its minimum, then the room left
    goes to them in order, up to what they want."""
    room = width - sum(w + 1 for _, w, _ in fixed) - len(flexible)
    widths = [m for _, _, m in flexible]
    room -= sum(widths)
    for i, (_, wanted, m) in enumerate(flexible):
        extra = max(0, min(room, wanted - m))
        widths[i] += extra
        room -= extra
    return widths


def _parked_lines(snap):
    n = len(snap.parked)
    lines = [f"PARKED THREADS: {n}" if n else "PARKED THREADS: none"]
    if n:
        rows = []
        for p in snap.parked:
            rows.append(([p.pid, p.tid, p.process or "?", "yes" if p.alive else "DEAD",
                          _key(p.key)], _object_cell(p),
                         token_text(p.kind, p.role, p.park_token),
                         _held_by_cell(held_by(snap, p)), fmt_duration(p.parked_seconds)))
        width = _width()
        fixed = PARKED_FIXED if width >= KEY_WIDTH else PARKED_FIXED[:-1]
        obj_w, held_w = _flex(fixed + PARKED_TAIL + [PARKED_TIME],
                              [("OBJECT", max(len(_esc(r[1])) for r in rows), 14),
                               ("HELD BY", max(len(r[3]) for r in rows), 7)], width)
        cols = fixed + [("OBJECT", obj_w, "<")] + PARKED_TAIL + \
            [("HELD BY", held_w, "<"), PARKED_TIME]
        lines += _table(cols, [r[0][:len(fixed)] + [r[1], r[2], r[3], r[4]] for r in rows])
    if snap.in_transit:
        dead = sum(1 for p in snap.in_transit if not p.alive)
        extra = f", {dead} of dead processes (--reap frees them)" if dead else ""
        lines.append(f"slots between park and wake-up: {len(snap.in_transit)}{extra}")
    dead = sum(1 for p in snap.parked if not p.alive)
    if dead:
        lines.append(f"{dead} parked slot{'s' if dead != 1 else ''} of dead processes: "
                     "--reap frees them")
    return lines


OBJECT_FIXED = [("KIND", 16, "<"), ("OWNER", 7, ">"), ("WAITERS", 7, ">"), ("REFS", 5, ">")]


def _object_state_cell(o):
    state = o.state
    if o.owner is not None and o.owner_alive is False:
        state += " DEAD"
    dead = sum(1 for h in o.holds if not h.alive)
    if dead:
        state += f" ({dead} dead)"
    return state


def _objects_lines(snap):
    objs = snap.objects
    lines = [f"OBJECTS: {len(objs)} of {snap.header['objects']}" if objs else "OBJECTS: none"]
    if objs:
        rows = [[o.name if o.name is not None else f"#{o.index} (anon)", o.kind,
                 _object_state_cell(o), o.owner_pid if o.owner_pid is not None else "-",
                 o.waiters, o.refs] for o in objs]
        name_w, state_w = _flex(OBJECT_FIXED,
                                [("NAME", max(len(_esc(r[0])) for r in rows), 12),
                                 ("STATE", max(len(r[2]) for r in rows), 24)], _width())
        cols = [("NAME", name_w, "<"), OBJECT_FIXED[0], ("STATE", state_w, "<")] + \
            OBJECT_FIXED[1:]
        lines += _table(cols, rows)
    res = [h for h in snap.holds if h.mode == RESOURCE_HOLD]
    if res:
        lines.append(f"RESOURCES (deadlock.acquire_resource): {len(res)}")
        rows = []
        for h in res:
            found = snap.object_at(h.key)
            rows.append([h.pid, h.tid, "yes" if h.alive else "DEAD", _key(h.key),
                         found[0].label if found else "-", h.count])
        lines += _table([("PID", 7, ">"), ("TID", 7, ">"), ("ALIVE", 5, "<"), ("KEY", 18, "<"),
                         ("OBJECT", 22, "<"), ("COUNT", 6, ">")], rows)
    return lines


def _who(r):
    proc = f" ({_esc(r['process'])})" if r.get("process") else ""
    return f"pid {r['pid']} tid {r['tid']}{proc}"


def _what(label, key):
    return label if label else f"key {_key(key)}"


def _deadlock_lines(cycles):
    if not cycles:
        return ["DEADLOCKS: none"]
    lines = [f"DEADLOCKS: {len(cycles)} cycle{'s' if len(cycles) != 1 else ''} "
             "(each thread waits for the next, the last for the first)"]
    for i, cyc in enumerate(cycles, 1):
        lines.append(f"cycle {i}: {len(cyc)} thread{'s' if len(cyc) != 1 else ''}")
        for r in cyc:
            nxt = r["waits_for"][0]
            kind = kinds.by_name(r["kind"])
            access = kind is not None and kind.role(r["role"]).access
            role = f" ({r['role']})" if access else ""
            lines.append(_clip(f"  {_who(r)} waits {fmt_duration(r['parked_seconds'])} for "
                               f"{_what(r['label'], r['key'])}{role}, held by pid {nxt['pid']} "
                               f"tid {nxt['tid']}", _width()))
            held = [_what(n, k) for k, n in zip(r["held"], r["held_names"])]
            lines += _wrap_items("      holds: ", [h + "," for h in held[:-1]] + held[-1:]
                                 if held else ["nothing recorded"])
    return lines


def render(snap, sections, cycles=None):
    """Text of the view: ``sections`` is a set of "counters", "parked", "objects",
    "deadlocks"."""
    lines = _header_lines(snap)
    if "counters" in sections:
        lines += _counter_lines(snap)
    for name, fn in (("parked", _parked_lines), ("objects", _objects_lines)):
        if name in sections:
            lines.append("")
            lines += fn(snap)
    if "deadlocks" in sections:
        lines.append("")
        lines += _deadlock_lines(cycles or [])
    return "\n".join(map(_esc, lines))


# ---- --list -------------------------------------------------------------------------------------

def list_lots():
    """Every lot in /dev/shm this user can attach: a list of dicts (name, size, buckets, slots,
    slots_used, objects_used, waiter, uid, user, mode, created)."""
    out = []
    try:
        names = sorted(os.listdir(SHM_DIR))
    except OSError:
        return out
    for name in names:
        path = os.path.join(SHM_DIR, name)
        if name.startswith("sem.") or len(name.encode()) > NAME_MAX:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not is_lot_file(path):
            continue
        try:
            lot = ParkingLot.attach(name)
            info = lot.info()
        except Exception:  # not a lot after all, corrupt, or not ours: not listed
            continue
        try:
            user = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            user = str(st.st_uid)
        out.append({
            "name": name, "size": info["size"], "buckets": info["buckets"],
            "slots": info["slots"], "slots_used": info["slots"] - info["slots_free"],
            "objects": info["objects"], "objects_used": info["objects_used"],
            "waiter": info["waiter"], "uid": st.st_uid, "user": user,
            "mode": f"{_stat.S_IMODE(st.st_mode):04o}", "created": info["created_ns"] / 1e9,
            "creator_pid": info["creator_pid"],
        })
        lot.close()
    return out


def _list_lines(lots):
    if not lots:
        return ["no lots"]
    now = time.time()
    rest = [("WAITER", 9, "<"), ("SIZE", 9, ">"), ("PARKED", 6, ">"), ("SLOTS", 6, ">"),
            ("OBJECTS", 7, ">"), ("USER", 8, "<"), ("MODE", 4, "<"), ("AGE", 6, ">")]
    room = _width() - sum(w + 1 for _, w, _ in rest)
    name_w = min(room, max(4, max(len(_esc(x["name"])) for x in lots)))
    cols = [("NAME", name_w, "<")] + rest
    lines = _table(cols, [])
    for x in lots:
        cells = [x["waiter"], fmt_size(x["size"]), x["slots_used"], x["slots"],
                 x["objects_used"], x["user"], x["mode"], fmt_duration(now - x["created"])]
        if len(_esc(x["name"])) > name_w:  # never clip a name: --unlink and LOT take it
            lines.append(_esc(x["name"]))
            lines += _table(cols, [[""] + cells])[1:]
        else:
            lines += _table(cols, [[x["name"]] + cells])[1:]
    return lines


# ---- --reap -------------------------------------------------------------------------------------

# what reap_lot's report calls the units a dead holder's hold of each mode gives back
_REAP_UNITS = {READ_HOLD: "shares", PERMIT_HOLD: "permits"}


def reap_lot(lot):
    """Free what dead processes left in ``lot``: their slots (parked or between states) and their
    uncounted holds (lot.reap()), their read shares of registry RWLocks and their permits of
    registry BoundedSemaphores (kinds.reclaim_dead: as a waiter would). Lock words of dead
    owners are *not* cleared (the next acquirer must get OwnerDiedError) and dead Barrier
    parties are left for the barrier's waiters (who break it): both are only reported. Returns a
    dict (see docs/stat.md)."""
    before = snapshot(lot)
    dead_slots = [p for p in before.parked + before.in_transit if not p.alive]
    dead_holds = [h for h in before.holds if not h.alive and not h.counted]
    slots, holds = lot.reap()
    after = snapshot(lot, processes=False)
    still = {(p.slot, p.pid, p.parked_ns) for p in after.parked + after.in_transit}
    freed_slots = [p for p in dead_slots if (p.slot, p.pid, p.parked_ns) not in still]
    left_holds = {(h.key, h.pid, h.tid, h.mode) for h in after.holds}
    freed_holds = [h for h in dead_holds if (h.key, h.pid, h.tid, h.mode) not in left_holds]

    given_back = {READ_HOLD: [], PERMIT_HOLD: []}
    for o in after.objects:
        dead = [h for h in o.holds if h.mode in given_back and not h.alive]
        n = kinds.reclaim_dead(lot, o) if dead else 0
        if n:
            mode = dead[0].mode
            given_back[mode].append({"object": o.name, "index": o.index, "label": o.label,
                                     _REAP_UNITS[mode]: n,
                                     "pids": sorted({h.pid for h in dead})})

    final = snapshot(lot, processes=False)
    dead_owners = [{"object": o.name, "index": o.index, "label": o.label, "kind": o.kind,
                    "pid": o.owner_pid, "tid": o.owner_tid}
                   for o in final.objects if o.owner is not None and o.owner_alive is False]
    dead_parties = [{"pid": h.pid, "tid": h.tid, "key": h.key,
                     "label": final.object_at(h.key)[0].label if final.object_at(h.key) else None}
                    for h in final.holds if not h.alive and h.mode == BARRIER_HOLD]
    return {
        "lot": lot.name, "slots_freed": slots, "holds_freed": holds,
        "slots": [p.to_dict() for p in freed_slots],
        "holds": [h.to_dict() for h in freed_holds],
        "read_shares_reclaimed": given_back[READ_HOLD],
        "permits_given_back": given_back[PERMIT_HOLD],
        "dead_lock_owners": dead_owners,
        "dead_barrier_parties": dead_parties,
        "resource_holds_freed": sum(1 for h in freed_holds if h.mode == RESOURCE_HOLD),
    }


def _label_of(p):
    if p.get("kind") is None:
        return None
    return f"{p['kind']} {p['object']!r}" if p["object"] is not None else \
        f"{p['kind']} #{p['object_index']}"


def _reap_lines(r):
    lines = [f"reaped lot {r['lot']!r}: {r['slots_freed']} slot{'s' if r['slots_freed'] != 1 else ''}"
             f" and {r['holds_freed']} hold{'s' if r['holds_freed'] != 1 else ''} of dead "
             "processes freed"]
    for p in r["slots"]:
        obj = _label_of(p)
        on = f"{obj} [{p['key_hex']}]" if obj else p["key_hex"]
        lines.append(_clip(f"  slot {p['slot']:<5} pid {p['pid']} tid {p['tid']} "
                           f"{p['state']} on {on} for {fmt_duration(p['parked_seconds'])}",
                           _width()))
    for h in r["holds"]:
        lines.append(_clip(f"  hold  {h['what']} of {h['key_hex']} by pid {h['pid']} "
                           f"tid {h['tid']} (x{h['count']})", _width()))
    for s in r["read_shares_reclaimed"]:
        pids = ",".join(map(str, s["pids"]))
        lines.append(_clip(f"  {s['label']}: {s['shares']} read share"
                           f"{'s' if s['shares'] != 1 else ''} of dead pid {pids} reclaimed",
                           _width()))
    for s in r["permits_given_back"]:
        pids = ",".join(map(str, s["pids"]))
        lines.append(_clip(f"  {s['label']}: {s['permits']} permit"
                           f"{'s' if s['permits'] != 1 else ''} of dead pid {pids} given back",
                           _width()))
    if r["dead_lock_owners"]:
        lines.append("left held (the next acquirer gets OwnerDiedError and repairs the state):")
        for o in r["dead_lock_owners"]:
            lines.append(_clip(f"  {o['label']} held by dead pid {o['pid']} tid {o['tid']}",
                               _width()))
    if r["dead_barrier_parties"]:
        lines.append("left for the barrier's waiters (they break the barrier):")
        for b in r["dead_barrier_parties"]:
            lines.append(_clip(f"  {b['label'] or _key(b['key'])}: dead party pid {b['pid']} "
                               f"tid {b['tid']}", _width()))
    return lines


# ---- the command ------------------------------------------------------------------------------

def _positive_seconds(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not v > 0 or v != v or v > 86400:
        raise argparse.ArgumentTypeError(f"refresh interval must be in (0, 86400]: {text!r}")
    return v


def _parser():
    p = argparse.ArgumentParser(
        prog=PROG, description="Inspect a live shmlot lot: parked threads, objects, deadlocks. "
        "Never creates a lot and never blocks one.",
        epilog="Exit status: 0 ok, 1 lot missing/corrupt/not permitted, 2 usage, "
        "3 deadlock found (--deadlocks). JSON schema: docs/stat.md.")
    p.add_argument("lot", nargs="?", metavar="LOT",
                   help=f"lot name (default: $SHMLOT_LOT, else shmlot-<uid>: {default_lot_name()})")
    p.add_argument("-o", "--objects", action="store_true",
                   help="show the named and anonymous objects: kind, state, owner, waiters")
    p.add_argument("-d", "--deadlocks", action="store_true",
                   help="show wait-for cycles; exit status 3 when there is one")
    p.add_argument("-a", "--all", action="store_true",
                   help="counters, parked threads, objects and deadlocks")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--reap", action="store_true",
                     help="free the slots and holds of dead processes and say what was freed")
    act.add_argument("-l", "--list", action="store_true", help="list every lot on this machine")
    act.add_argument("--unlink", metavar="NAME", help="remove lot NAME")
    p.add_argument("-w", "--watch", nargs="?", const=1.0, type=_positive_seconds,
                   metavar="SECONDS", help="refresh every SECONDS (default 1) until Ctrl-C")
    p.add_argument("-j", "--json", action="store_true",
                   help="one JSON document instead of text (with --watch: one per line)")
    return p


def _check_lot_name(parser, name):
    """A usage error (one line, exit status 2) for what cannot name a lot: empty, '.', '..', a
    '/' or NUL, too long, or the name of a directory of /dev/shm."""
    raw = name.encode("utf-8", "replace")
    if not raw or "/" in name or "\0" in name or len(raw) > NAME_MAX or name in (".", ".."):
        parser.error(f"invalid lot name {name!r}: 1 to {NAME_MAX} bytes, no '/', not '.' or '..'")
    if os.path.isdir(os.path.join(SHM_DIR, name)):
        parser.error(f"invalid lot name {name!r}: {SHM_DIR}/{_esc(name)} is a directory")


def _fail(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)
    return EXIT_LOT


def _attach(name):
    return ParkingLot.attach(name)


def unlink_segment(name):
    """Remove the shared-memory segment ``name`` whatever it holds (OSError if that fails): on
    Linux, shm_unlink removes the file of that name in /dev/shm."""
    os.unlink(os.path.join(SHM_DIR, name))


def _lot_error(name, exc):
    if isinstance(exc, LotNotFoundError):
        return f"no lot named {name!r} (shmlot-stat --list shows the lots there are)"
    if isinstance(exc, LotCorruptError):
        detail = str(exc).split(": ", 1)[-1] if str(exc) else "failed its checks"
        return f"lot {name!r} is corrupt or not a lot: {detail}"
    if isinstance(exc, PermissionError):
        return f"not permitted to open lot {name!r} (it belongs to another user or its mode " \
               "forbids it)"
    return f"cannot read lot {name!r}: {exc}"


_LOT_ERRORS = (LotNotFoundError, LotCorruptError, PermissionError, OSError)


def _sections(args):
    if args.all:
        return {"counters", "parked", "objects", "deadlocks"}
    chosen = set()
    if args.objects:
        chosen.add("objects")
    if args.deadlocks:
        chosen.add("deadlocks")
    return chosen or {"counters", "parked"}


def _view_once(lot, args, sections):
    """(text or JSON document, exit status) of one look."""
    snap = snapshot(lot)
    cycles = check(lot, snap=snap) if ("deadlocks" in sections or args.json) else []
    status = EXIT_DEADLOCK if cycles and "deadlocks" in sections else EXIT_OK
    if args.json:
        doc = {"schema": SCHEMA}
        doc.update(snap.to_dict())
        for entry, p in zip(doc["parked"], snap.parked):
            entry["held_by"] = held_by(snap, p)
        doc["deadlocks"] = cycles
        return doc, status
    return render(snap, sections, cycles), status


def _emit_json(doc, stream, indent=2):
    stream.write(json.dumps(doc, indent=indent, sort_keys=False) + "\n")


def _watch(lot, args, sections):
    out = sys.stdout
    interval = args.watch
    try:
        while True:
            body, _status = _view_once(lot, args, sections)
            if args.json:
                body["time"] = time.time()
                _emit_json(body, out, indent=None)
            else:
                cols = shutil.get_terminal_size((WIDTH, 40)).columns
                stamp = time.strftime("%H:%M:%S")
                foot = f"{stamp}  every {interval:g}s  Ctrl-C to quit"
                text = "\n".join(line[:cols] for line in body.split("\n"))
                out.write(CLEAR + text + "\n\n" + foot + "\n")
            out.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        if not args.json:
            out.write("\n")
            out.flush()
        return EXIT_OK


def _run(args, parser):
    if args.list:
        if args.lot:
            parser.error("--list takes no LOT")
        if args.watch:
            parser.error("--watch does not apply to --list")
        lots = list_lots()
        if args.json:
            _emit_json({"schema": SCHEMA, "lots": lots}, sys.stdout)
        else:
            print("\n".join(map(_esc, _list_lines(lots))))
        return EXIT_OK

    if args.unlink is not None:
        if args.lot:
            parser.error("--unlink takes its NAME, not LOT")
        if args.watch:
            parser.error("--watch does not apply to --unlink")
        name = args.unlink
        _check_lot_name(parser, name)
        not_a_lot = None
        try:
            lot = _attach(name)
        except LotCorruptError as exc:
            # a segment that does not attach (never finished, damaged, or not a lot): it cannot
            # be used as a lot, and --unlink is how to get rid of it
            not_a_lot = _lot_error(name, exc).split(": ", 1)[-1]
            try:
                unlink_segment(name)
            except OSError as err:
                return _fail(f"cannot remove segment {name!r}: {err.strerror}")
        except _LOT_ERRORS as exc:
            return _fail(_lot_error(name, exc))
        else:
            lot.unlink()
            lot.close()
        if args.json:
            _emit_json({"schema": SCHEMA, "unlinked": name, "not_a_lot": not_a_lot}, sys.stdout)
        elif not_a_lot:
            print(f"removed segment {name!r}, which was not a usable lot ({not_a_lot})")
        else:
            print(f"unlinked lot {name!r}")
        return EXIT_OK

    name = default_lot_name() if args.lot is None else args.lot
    _check_lot_name(parser, name)
    if args.reap and args.watch:
        parser.error("--watch does not apply to --reap")
    try:
        lot = _attach(name)
    except _LOT_ERRORS as exc:
        return _fail(_lot_error(name, exc))

    try:
        if args.reap:
            r = reap_lot(lot)
            if args.json:
                _emit_json({"schema": SCHEMA, "reap": r}, sys.stdout)
            else:
                print("\n".join(map(_esc, _reap_lines(r))))
            return EXIT_OK
        sections = _sections(args)
        if args.watch:
            return _watch(lot, args, sections)
        body, status = _view_once(lot, args, sections)
        if args.json:
            _emit_json(body, sys.stdout)
        else:
            print(body)
        return status
    except _LOT_ERRORS as exc:
        return _fail(_lot_error(name, exc))


def main(argv=None):
    """Entry point of ``shmlot-stat``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except KeyboardInterrupt:
        return EXIT_OK if args.watch else 130
    except BrokenPipeError:  # e.g. piped into head
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
