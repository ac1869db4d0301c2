"""One checking kit for every TOML file a person writes: the config, profiles, scenarios.

A file is read once (`read_toml`: a byte-order mark is accepted; bad bytes, broken
TOML, nesting hundreds of levels deep or a file that cannot be opened are each one
problem, never a traceback). What it holds is checked against a *declaration*: a
`Table` of `Key`s, each key a shape (a `Value` check, a nested `Table`, an `ArrayOf`
tables, a `MapOf` names to shapes, or `Either` of two) with its default written once
beside it, and `Rule`s for keys that only make sense together. Every problem is
collected, none stops the check, and each reads `file: key.path: reason` in one dialect
("required key is missing", "must be 1..247, got 300", "unknown key (did you mean ...)").
One mistake gives one problem: a rule is not applied to a key that already failed.
The same declarations give the JSON Schema published for editors (`json_schema`).

A new section of a file (a protocol mapping, a shared state table) is a new declaration
built from these parts; references between sections are checked by the module that
declares them, after the shapes passed.

It never repairs a value and never knows what a key means: the modules that declare
the tables build their own typed values from what passed (`Table.with_defaults`).
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.errors import ConfigError, ConfigProblem

# --- collecting problems -----------------------------------------------------------------


class Problems:
    """Every problem found in one file, in the order found."""

    def __init__(self, file: str | Path) -> None:
        self.file = str(file)
        self.items: list[ConfigProblem] = []

    def add(self, key: str, reason: str) -> None:
        self.items.append(ConfigProblem(self.file, key, reason))

    def extend(self, problems: Iterable[ConfigProblem]) -> None:
        self.items.extend(problems)

    def __len__(self) -> int:
        return len(self.items)

    def under(self, where: str) -> bool:
        """Whether a problem was found at `where` or inside it."""
        return any(
            p.key == where or p.key.startswith((f"{where}.", f"{where}[")) for p in self.items
        )

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def join(where: str, key: str) -> str:
    """The key path of `key` inside the table at `where` (`lines[0]` + `port`)."""
    if not key:
        return where
    return f"{where}.{key}" if where else key


def shown(value: Any) -> str:
    """A value as a reason quotes it: TOML spelling, strings in double quotes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def closest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' when one of `choices` is close to `word`, else ''."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def known(names: Iterable[str], none: str = "none") -> str:
    """A sorted list of names for a reason: `fap, gas-1` or `none`."""
    return ", ".join(sorted(names)) or none


# --- reading a file ----------------------------------------------------------------------


def read_toml(path: Path, out: Problems) -> dict[str, Any] | None:
    """The parsed document, or None with exactly one problem saying why the file is unusable."""
    try:
        data = path.read_bytes()
        # Windows editors often prepend a byte-order mark, which TOML does not allow.
        return tomllib.loads(data.decode("utf-8").removeprefix("\ufeff"))
    except OSError as exc:
        out.add("", _unreadable(exc))
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        out.add("", f"not UTF-8 text (byte 0x{bad:02x} at offset {exc.start}); save it as UTF-8")
    except tomllib.TOMLDecodeError as exc:
        out.add("", f"not valid TOML: {exc}")
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        out.add("", "not usable: arrays or tables nested hundreds of levels deep")
    return None


def check_file(
    path: Path, table: Table, out: Problems | None = None
) -> tuple[dict[str, Any], Problems]:
    """Read `path` and check it against its declaration: the values that passed and every
    problem so far (more may be added by the caller's own checks). A file that is not
    usable at all raises ConfigError at once, with its one problem."""
    out = Problems(path) if out is None else out
    doc = read_toml(path, out)
    if doc is None:
        raise ConfigError(out.items)
    return table.clean(doc, "", out), out


def _unreadable(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a TOML file"
    if isinstance(exc, PermissionError):
        return "permission denied (run as root or as a member of the alarmgw group)"
    return f"cannot read: {exc.strerror or exc}"


# --- shapes ------------------------------------------------------------------------------

BAD: Any = object()  # what `clean` returns for a value that failed (its problem is added)


class Shape(Protocol):
    """Something a key can hold: it checks a raw value and describes itself."""

    def clean(self, raw: Any, where: str, out: Problems) -> Any:
        """The value if it passed (nested tables: only their valid keys), else BAD."""
        ...

    def json(self) -> dict[str, Any]:
        """This shape as JSON Schema (draft-07)."""
        ...

    def missing(self, where: str) -> str:
        """The reason when a required key of this shape is absent."""
        ...

    def accepts(self, raw: Any) -> bool:
        """Whether `raw` is of the TOML kind this shape holds (for `Either`)."""
        ...


REQUIRED = "required key is missing"


@dataclass(frozen=True)
class Value:
    """A scalar (or a small array of scalars) checked by one function."""

    test: Callable[[Any], str | None]  # the reason a value is wrong, or None
    schema: Mapping[str, Any]
    kind: tuple[type, ...] = (object,)  # the Python types it holds, for Either

    def __call__(self, raw: Any) -> str | None:
        return self.test(raw)

    def clean(self, raw: Any, where: str, out: Problems) -> Any:
        reason = self.test(raw)
        if reason:
            out.add(where, reason)
            return BAD
        return raw

    def json(self) -> dict[str, Any]:
        return dict(self.schema)

    def missing(self, where: str) -> str:
        return REQUIRED

    def accepts(self, raw: Any) -> bool:
        return isinstance(raw, self.kind) and not (isinstance(raw, bool) and bool not in self.kind)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is finite, and not a boolean."""
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(lo: int, hi: int) -> Value:
    def test(value: Any) -> str | None:
        if not _is_int(value):
            return f"must be an integer, got {shown(value)}"
        if not lo <= value <= hi:
            return f"must be {lo}..{hi}, got {value}"
        return None

    return Value(test, {"type": "integer", "minimum": lo, "maximum": hi}, (int,))


def number(
    *, gt: float | None = None, ge: float | None = None, le: float | None = None,
    nonzero: bool = False,
) -> Value:  # fmt: skip
    """A finite number (nan and inf are refused: `confirm_s = inf` would never alarm)."""

    bounds = {"exclusiveMinimum": gt, "minimum": ge, "maximum": le}

    def test(value: Any) -> str | None:
        if not (_is_int(value) or isinstance(value, float)):
            return f"must be a number, got {shown(value)}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        return _out_of_bounds(value, gt, ge, le) or (
            "must not be 0" if nonzero and value == 0 else None
        )

    schema: dict[str, Any] = {"type": "number"}
    schema.update({word: bound for word, bound in bounds.items() if bound is not None})
    if nonzero:
        schema["not"] = {"const": 0}
    return Value(test, schema, (int, float))


def _out_of_bounds(
    value: float, gt: float | None, ge: float | None, le: float | None
) -> str | None:
    if gt is not None and not value > gt:
        return f"must be greater than {gt:g}, got {value}"
    if ge is not None and not value >= ge:
        return f"must be at least {ge:g}, got {value}"
    if le is not None and not value <= le:
        return f"must be at most {le:g}, got {value}"
    return None


def one_of(*choices: Any) -> Value:
    def test(value: Any) -> str | None:
        # bool == 1 in Python; a boolean is never a valid choice here
        if isinstance(value, bool) or value not in choices:
            listed = ", ".join(shown(c) for c in choices)
            return f"must be one of {listed}, got {shown(value)}"
        return None

    return Value(test, {"enum": list(choices)}, tuple({type(c) for c in choices}))


def matching(pattern: re.Pattern[str], what: str) -> Value:
    """A string the pattern matches in full; `what` says in words what that is."""

    def test(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string ({what}), got {shown(value)}"
        if not pattern.fullmatch(value):
            return f"must be {what}, got {shown(value)}"
        return None

    return Value(test, {"type": "string", "pattern": _anchored(pattern.pattern)}, (str,))


def _anchored(pattern: str) -> str:
    """JSON Schema patterns search; ours match in full."""
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})$"


def text(max_len: int = 200, *, nonempty: bool = False) -> Value:
    def test(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string, got {shown(value)}"
        if nonempty and not value.strip():
            return "must not be empty"
        if len(value) > max_len:
            return f"must be at most {max_len} characters, got {len(value)}"
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            return "must not contain control characters"
        return None

    schema: dict[str, Any] = {"type": "string", "maxLength": max_len}
    if nonempty:
        schema["pattern"] = r"\S"
    return Value(test, schema, (str,))


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {shown(value)}"


boolean = Value(_boolean, {"type": "boolean"}, (bool,))


def _path_text(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty path string, got {shown(value)}"
    if "\x00" in value:
        return "must not contain NUL"
    return None


path_text = Value(_path_text, {"type": "string", "minLength": 1}, (str,))


def _path_list(value: Any) -> str | None:
    if not isinstance(value, list) or any(_path_text(v) for v in value):
        return f"must be a list of directory path strings, got {shown(value)}"
    return None


path_list = Value(_path_list, {"type": "array", "items": path_text.json()}, (list,))


def _pair(value: Any) -> str | None:
    if not (isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)):
        return f"must be a list of two finite numbers [low, high], got {shown(value)}"
    if value[0] == value[1]:
        return "the two ends must differ"
    return None


pair = Value(
    _pair,
    {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
    (list,),
)

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
IDENT = matching(ID_RE, "an id of 1-64 characters A-Z a-z 0-9 _ - (it goes into MQTT topics)")


# --- structure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """How one key of a table is checked; `default` is what the builder uses when absent
    (None: no default, or one that depends on other keys, said in `doc`)."""

    shape: Shape
    required: bool = False
    default: Any = None
    doc: str = ""


class Values(dict[str, Any]):
    """A table's values that passed, as its rules see them: `in` and `[]` for what was
    written, `value(name)` for what will be used (what was written, else the default)."""

    def __init__(self, clean: Mapping[str, Any], keys: Mapping[str, Key]) -> None:
        super().__init__(clean)
        self._keys = keys

    def value(self, name: str) -> Any:
        return self[name] if name in self else self._keys[name].default


@dataclass(frozen=True)
class Rule:
    """Keys of one table together: the table breaks the rule when `broken(values)`, and
    the problem is reported on `key` ("" = the table itself). It is not applied when
    `key` or any of `reads` already had a problem: one mistake, one problem."""

    key: str
    broken: Callable[[Values], bool]
    reason: str | Callable[[Values], str]
    reads: tuple[str, ...] = ()

    def check(self, clean: Values, where: str, bad: set[str], out: Problems) -> None:
        if self.key in bad or bad.intersection(self.reads) or not self.broken(clean):
            return
        reason = self.reason if isinstance(self.reason, str) else self.reason(clean)
        out.add(join(where, self.key), reason)


class Table(Mapping[str, Key]):
    """A TOML table with known keys: unknown keys are problems (a typo must not silently
    disable a setting), required ones must be there, each value is checked by its key."""

    def __init__(
        self, keys: Mapping[str, Key], *, rules: Iterable[Rule] = (), doc: str = ""
    ) -> None:
        self.keys_ = dict(keys)
        self.rules = tuple(rules)
        self.doc = doc

    def __getitem__(self, name: str) -> Key:
        return self.keys_[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)

    def extended(
        self, keys: Mapping[str, Key], *, rules: Iterable[Rule] = (), doc: str | None = None
    ) -> Table:
        """This table with more keys and rules: a new section is a declaration."""
        return Table(
            {**self.keys_, **keys},
            rules=(*self.rules, *rules),
            doc=self.doc if doc is None else doc,
        )

    def clean(self, raw: Any, where: str, out: Problems) -> Any:
        if not isinstance(raw, dict):
            out.add(where, f"must be a table, got {shown(raw)}")
            return BAD
        clean: dict[str, Any] = {}
        bad: set[str] = set()
        for name, value in raw.items():
            key = self.keys_.get(name)
            if key is None:
                out.add(join(where, name), f"unknown key{closest(name, self.keys_)}")
                continue
            checked = key.shape.clean(value, join(where, name), out)
            if checked is BAD:
                bad.add(name)
            else:
                clean[name] = checked
        for name, key in self.keys_.items():
            if key.required and name not in raw:
                out.add(join(where, name), key.shape.missing(join(where, name)))
                bad.add(name)
        values = Values(clean, self.keys_)
        for rule in self.rules:
            rule.check(values, where, bad, out)
        return clean

    def with_defaults(self, clean: Mapping[str, Any]) -> dict[str, Any]:
        """Every key: its checked value, or its default."""
        merged = {name: key.default for name, key in self.keys_.items()}
        merged.update(clean)
        return merged

    def json(self) -> dict[str, Any]:
        properties = {}
        for name, key in self.keys_.items():
            node = key.shape.json()
            if key.doc:
                node["description"] = key.doc
            if key.default is not None and key.default != {}:
                node["default"] = key.default
            properties[name] = node
        schema: dict[str, Any] = {"type": "object"}
        if self.doc:
            schema["description"] = self.doc
        schema["properties"] = properties
        required = [name for name, key in self.keys_.items() if key.required]
        if required:
            schema["required"] = required
        schema["additionalProperties"] = False
        return schema

    def missing(self, where: str) -> str:
        return f"required table [{where}] is missing"

    def accepts(self, raw: Any) -> bool:
        return isinstance(raw, dict)


@dataclass(frozen=True)
class ArrayOf:
    """An array of tables (`[[lines]]`); the result keeps positions, so that later
    checks can name `lines[2]` (an element that is not a table becomes {})."""

    item: Table
    min_items: int = 0

    def clean(self, raw: Any, where: str, out: Problems) -> Any:
        if not isinstance(raw, list):
            out.add(where, f"must be an array of tables ([[{where}]]), got {shown(raw)}")
            return BAD
        if len(raw) < self.min_items:
            out.add(where, self.missing(where))
            return BAD
        items = [self.item.clean(element, f"{where}[{i}]", out) for i, element in enumerate(raw)]
        return [{} if element is BAD else element for element in items]

    def json(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.item.json()}
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema

    def missing(self, where: str) -> str:
        if self.min_items:
            return f"at least one [[{where}]] table is required"
        return REQUIRED

    def accepts(self, raw: Any) -> bool:
        return isinstance(raw, list)


@dataclass(frozen=True)
class MapOf:
    """A table whose keys are names chosen by the writer (point ids, state codes), each
    holding the same shape; `names` checks a key itself (None: any name)."""

    value: Shape
    names: Value | None = None
    min_items: int = 0
    rules: tuple[Rule, ...] = ()
    doc: str = ""
    empty: str = "must not be empty"

    def clean(self, raw: Any, where: str, out: Problems) -> Any:
        if not isinstance(raw, dict):
            out.add(where, f"must be a table, got {shown(raw)}")
            return BAD
        if len(raw) < self.min_items:
            out.add(where, self.empty)
            return BAD
        clean: dict[str, Any] = {}
        for name, value in raw.items():
            reason = self.names(name) if self.names else None
            if reason:
                out.add(join(where, name), reason)
                continue
            checked = self.value.clean(value, join(where, name), out)
            if checked is not BAD:
                clean[name] = checked
        for rule in self.rules:
            rule.check(Values(clean, {}), where, set(), out)
        return clean

    def json(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object"}
        if self.doc:
            schema["description"] = self.doc
        if self.names is not None:
            schema["propertyNames"] = self.names.json()
        if self.min_items:
            schema["minProperties"] = self.min_items
        schema["additionalProperties"] = self.value.json()
        return schema

    def missing(self, where: str) -> str:
        return REQUIRED

    def accepts(self, raw: Any) -> bool:
        return isinstance(raw, dict)


@dataclass(frozen=True)
class Either:
    """One of several shapes, told apart by the TOML kind of the value (a number or a
    table, a name or a table...): the first shape that `accepts` it checks it."""

    shapes: tuple[Shape, ...]
    what: str  # how a reason names the choice: "a register number or a table"

    def clean(self, raw: Any, where: str, out: Problems) -> Any:
        for shape in self.shapes:
            if shape.accepts(raw):
                return shape.clean(raw, where, out)
        out.add(where, f"must be {self.what}, got {shown(raw)}")
        return BAD

    def json(self) -> dict[str, Any]:
        return {"oneOf": [shape.json() for shape in self.shapes]}

    def missing(self, where: str) -> str:
        return REQUIRED

    def accepts(self, raw: Any) -> bool:
        return any(shape.accepts(raw) for shape in self.shapes)


def json_schema(table: Table, *, id: str, title: str) -> dict[str, Any]:
    """A whole file's declaration as a JSON Schema document: draft-07, the newest that the
    TOML editor tools (Taplo, Even Better TOML) read; it holds nothing later drafts read
    differently."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": id,
        "title": title,
        **table.json(),
    }
