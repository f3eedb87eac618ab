"""The registry of scenarios: each family module registers its scenarios here with @scenario,
and the command line picks them by name (--only). A registered scenario expands, for a given
configuration, into one or more measurements (contended: one per process count), each a
(label, function) pair whose function takes (cfg, env) and returns a results.Scenario, or a
list of them (an external module may bring several)."""


class Spec:
    def __init__(self, name, help, expand, default=True, quick=True):
        self.name, self.help, self.expand = name, help, expand
        self.default, self.quick = default, quick   # in the default run; in the --quick one


_SPECS = {}
_ALIASES = {}


def scenario(name, help, aliases=(), default=True, quick=True):
    """Register a single measurement: the decorated function takes (cfg, env)."""
    def deco(fn):
        register(name, help, lambda cfg: [(name, fn)], aliases, default, quick)
        return fn
    return deco


def register(name, help, expand, aliases=(), default=True, quick=True):
    """Register `expand(cfg) -> [(label, fn(cfg, env))]` under `name`."""
    if name in _SPECS:
        raise ValueError(f"scenario {name!r} registered twice")
    _SPECS[name] = Spec(name, help, expand, default, quick)
    for a in aliases:
        _ALIASES[a] = name


def names():
    return list(_SPECS)


def default_names(quick=False):
    return [n for n, s in _SPECS.items() if s.default and (s.quick or not quick)]


def resolve(name):
    return _ALIASES.get(name, name)


def get(name):
    return _SPECS[resolve(name)]


def help_text():
    def note(s):
        if not s.default:
            return "  [only with --only]"
        return "" if s.quick else "  [not in --quick]"
    return "\n".join(f"  {s.name:<12} {s.help}{note(s)}" for s in _SPECS.values())
