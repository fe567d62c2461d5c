"""Typed configs: dataclasses loaded from YAML/TOML/JSON files and ``--set a.b=value`` overrides.

Every key is checked against the dataclass: an unknown or mistyped key is a :class:`ConfigError`
naming the key and the accepted ones. Numeric keys declare their range where they are defined
(``steps: int = ranged(1000, ge=1)``) and a dataclass may declare checks across its keys
(``__config_checks__ = (Check("hidden", "a multiple of heads ({heads})", lambda c: ...),)``); both are checked
in one place, :func:`check_config`, whenever a config is loaded, naming the key, the range and the value.
Float keys must be finite (nan/inf are refused) whether or not they declare a range.
A dataclass with ``__config_shorthand__ = "field"`` also accepts a bare string for the whole entry, standing
for that one field (a sensor list ``[rgb_static, force_torque]``). ``dump_config`` writes the resolved config beside a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from robodual_core.errors import ConfigError

T = TypeVar("T")

RANGE = "robodual_range"  # dataclass field metadata key


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key: ``ge``/``gt`` below, ``le``/``lt`` above (None: unbounded).

    Applies to the value itself, or to each item of a list/tuple value; None (an optional key) passes."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        return not ((self.ge is not None and v < self.ge) or (self.gt is not None and v <= self.gt)
                    or (self.le is not None and v > self.le) or (self.lt is not None and v >= self.lt))

    def describe(self, integer: bool) -> str:
        what = "an integer" if integer else "a finite number"
        lo = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        hi = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if lo and hi:
            return f"{what} in {lo}, {hi}"
        if lo:
            return f"{what} {'>=' if self.ge is not None else '>'} {lo[1:]}"
        if hi:
            return f"{what} {'<=' if self.le is not None else '<'} {hi[:-1]}"
        return what


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def ranged(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a declared range: ``batch_size: int = ranged(64, ge=1)``.

    Without bounds it declares the key deliberately unbounded (any integer / any finite number)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={RANGE: Range(ge=ge, gt=gt, le=le, lt=lt)})


@dataclasses.dataclass(frozen=True)
class Check:
    """A rule across keys of one config dataclass: ``ok(cfg)`` must hold, else the error says that ``key``
    must be ``expected`` (a format string over the config's attributes, e.g. ``"a multiple of heads ({heads})"``)."""

    key: str
    expected: str
    ok: Callable[[Any], bool]


def memory_bytes() -> int:
    """Memory available to this process now (MemAvailable; the physical total where /proc is not readable)."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 1 << 62


def fits_in_memory(parameters: float, bytes_per_parameter: int = 4) -> bool:
    """Whether a model of about ``parameters`` float32 parameters can be built here: for a ``Check`` on width and
    depth keys, so that ``model.hidden=1048576`` is refused at the config, not by the allocator (or the OOM
    killer) while the model is built."""
    return parameters * bytes_per_parameter < memory_bytes()


def check_config(cfg: Any, prefix: str = "", recursive: bool = True) -> None:
    """Check the declared ranges, the finiteness of float keys and the ``__config_checks__`` of config
    dataclass ``cfg`` (and of the configs nested in it): the first violation is a one-line
    :class:`ConfigError` naming the key (``prefix`` + name), what it must be and the value found."""
    if not dataclasses.is_dataclass(cfg):
        return
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = prefix + f.name
        rng = f.metadata.get(RANGE)
        tp, _ = _strip_optional(hints.get(f.name, Any))
        integer = tp is int or typing.get_args(tp)[:1] == (int,)
        for i, v in _numbers(value):
            bad = (not math.isfinite(v)) if isinstance(v, float) else False
            if rng is not None and not rng.contains(v):
                bad = True
            if bad:
                expected = (rng or Range()).describe(integer or (tp is Any and isinstance(v, int)))
                where = key if i is None else f"{key}[{i}]"
                raise ConfigError(f"config key '{where}' must be {expected}, found {v!r}")
        if recursive and dataclasses.is_dataclass(value):
            check_config(value, key + ".")
        elif recursive and isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_config(item, f"{key}[{i}].")
    for check in getattr(type(cfg), "__config_checks__", ()):
        if not check.ok(cfg):
            values = {"prefix": prefix, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}}
            expected = check.expected.format(**values)
            raise ConfigError(f"config key '{prefix}{check.key}' must be {expected}, found "
                              f"{getattr(cfg, check.key)!r}")


def _numbers(value: Any) -> list[tuple[int | None, float]]:
    """The numbers a key holds: itself, or the items of a list/tuple (bools are not numbers here)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(None, value)]
    if isinstance(value, list | tuple):
        return [(i, v) for i, v in enumerate(value) if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


def numeric_fields(cls: type) -> list[tuple[str, dataclasses.Field]]:
    """Every int/float key of config dataclass ``cls`` and the dataclasses nested in it (dotted names)."""
    out: list[tuple[str, dataclasses.Field]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _strip_optional(hints[f.name])
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            out += [(f"{f.name}.{k}", sub) for k, sub in numeric_fields(tp)]
        elif origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
            out += [(f"{f.name}[].{k}", sub) for k, sub in numeric_fields(args[0])]
        elif tp in (int, float) or (origin in (list, tuple) and args and args[0] in (int, float)):
            out.append((f.name, f))
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON file into a dict (by extension)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {exc.start}); expected YAML, TOML or "
                          "JSON") from None
    try:
        if path.suffix in (".toml",):
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = safe_yaml(text, f"config file '{path}'")
    except ConfigError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())  # YAML's messages span lines; the CLI prints one
        kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix, "YAML")
        raise ConfigError(f"config file '{path}' is not valid {kind}: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level, found {type(data).__name__}")
    return data


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from a file or a ``--set`` string) to type ``tp`` or raise naming ``key``."""
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or tp is Any:
            return None
        raise ConfigError(f"config key '{key}' may not be null; expected {_type_name(tp)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            value = _parse_scalar(value)
        short = getattr(tp, "__config_shorthand__", None)  # a bare string stands for that one field
        if short and isinstance(value, str):
            value = {short: value}
        if not isinstance(value, dict):
            alt = f" or a {short} string" if short else ""
            raise ConfigError(f"config key '{key}' expects a mapping for {tp.__name__}{alt}, found {value!r}")
        return _build(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _parse_scalar(value)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' expects a list, found {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed-length tuple: betas (b1, b2)
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}' expects {len(args)} values "
                                  f"({', '.join(_type_name(a) for a in args)}), found {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, found {value!r}")
        args = typing.get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {list(choices)}, found {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key '{key}' expects true or false, found {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects {tp.__name__}, found {value!r}")
        try:
            out = tp(value) if tp is float or isinstance(value, int) else int(str(value), 0)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects {tp.__name__}, found {value!r}") from None
        return out
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"config key '{key}' expects a string, found {value!r}")
        return str(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _parse_scalar(text: str) -> Any:
    try:
        return safe_yaml(text, "--set value")
    except ConfigError:  # an alias bomb or a recursive alias
        raise
    except Exception:
        return text


# A YAML alias repeats a node without copying it, so a few lines of nested aliases stand for billions of nodes
# (the "billion laughs"): whatever walks the parsed config (merging, checking, dumping) then never finishes.
# Aliases are allowed while the document they expand to stays this small.
YAML_MAX_NODES = 100_000


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``, refusing (ConfigError naming ``where``) a document whose aliases expand to more
    than :data:`YAML_MAX_NODES` nodes; YAMLError passes through for the caller to report."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_document(self):  # type: ignore[no-untyped-def]
            node = super().compose_document()
            sizes: dict[int, int] = {}
            active: set[int] = set()

            def size(n: Any) -> int:
                got = sizes.get(id(n))
                if got is not None:
                    return got
                if id(n) in active:
                    raise ConfigError(f"{where}: a YAML alias refers to a node that holds it (a recursive "
                                      "structure); expected a config without recursive aliases")
                active.add(id(n))
                if isinstance(n, yaml.MappingNode):
                    total = 1 + sum(size(k) + size(v) for k, v in n.value)
                elif isinstance(n, yaml.SequenceNode):
                    total = 1 + sum(size(v) for v in n.value)
                else:
                    total = 1
                sizes[id(n)] = total
                active.discard(id(n))
                if total > YAML_MAX_NODES:
                    raise ConfigError(f"{where}: its YAML aliases expand to more than {YAML_MAX_NODES} nodes; "
                                      "expected a config without alias bombs (write the values out)")
                return total

            if node is not None:
                size(node)
            return node

    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass: no arbitrary objects


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; accepted keys{' under ' + prefix.rstrip('.') if prefix else ''}: "
            + ", ".join(sorted(fields))
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        cfg = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a __post_init__ that refuses a value
        raise ConfigError(f"config '{prefix.rstrip('.') or cls.__name__}': {' '.join(str(exc).split())}") from None
    check_config(cfg, prefix, recursive=False)  # nested configs were checked when they were built
    return cfg


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """``cls`` from plain data (types coerced, unknown keys refused, ranges checked); errors name
    ``prefix`` + the key."""
    return _build(cls, data, prefix)


def to_dict(cfg: Any) -> Any:
    """A config dataclass as plain JSON-able data."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_int_list(text: str, flag: str, minimum: int | None = None) -> list[int]:
    """A flag's comma-separated integers (``"0,1,2"``), each ``>= minimum`` when given; one line naming ``flag``
    otherwise (:class:`ConfigError`, a :class:`RobodualError`)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers like '0,1,2', found '{text}'") from None
    if not values:
        raise ConfigError(f"{flag}: expected at least one integer, found '{text}'")
    low = [v for v in values if minimum is not None and v < minimum]
    if low:
        raise ConfigError(f"{flag}: expected integers >= {minimum}, found {low[0]} in '{text}'")
    return values


def parse_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. trainer.lr=1e-4), found {item!r}")
    return key.strip(), value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """Build ``cls`` from defaults, then ``base``, then a file, then ``--set`` overrides (in that order)."""
    data: dict[str, Any] = to_dict(cls()) if base is None else _merge(to_dict(cls()), base)
    if path is not None:
        data = _merge(data, read_config_file(path))
    for item in overrides or []:
        key, value = parse_override(item)
        _check_path(cls, key)
        _set_path(data, key, value)
    return _build(cls, data)


def _check_path(cls: Any, dotted: str) -> None:
    node = cls
    walked = ""
    for part in dotted.split("."):
        tp, _ = _strip_optional(node)
        if not dataclasses.is_dataclass(tp):
            if typing.get_origin(tp) is dict:
                return
            raise ConfigError(f"config key '{walked}' is a {_type_name(tp)}, it has no sub-key '{part}'")
        fields = {f.name: f for f in dataclasses.fields(tp)}
        if part not in fields:
            where = f" under '{walked}'" if walked else ""
            raise ConfigError(f"unknown config key '{dotted}'; accepted keys{where}: {', '.join(sorted(fields))}")
        node = typing.get_type_hints(tp)[part]
        walked = f"{walked}.{part}" if walked else part


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON (or YAML by extension), atomically."""
    from robodual_core.io import atomic_write_text

    path = Path(path)
    data = to_dict(cfg)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    atomic_write_text(path, text)
