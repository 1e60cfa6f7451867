"""The lexical rules of systemd unit files: words, quoting and C escapes, specifiers, ``$VAR``
expansion, time spans, booleans, signals, ``Environment=`` and ``EnvironmentFile=`` syntax.

These are the rules every setting is read with, kept apart from what the settings mean
(``fleetop.node.systemd``) so that each can be checked against systemd on its own. All pure: no I/O.
An unknown backslash escape is kept literally rather than rejecting the line.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetop.fleet.units import parse_unit_name

_WS = " \t\n\r"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_C_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "s": " ",
}  # fmt: skip
_TIME_UNITS = {
    "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
    "M": 2629800.0, "month": 2629800.0, "months": 2629800.0,
    "y": 31557600.0, "year": 31557600.0, "years": 31557600.0,
    "ms": 1e-3, "msec": 1e-3, "us": 1e-6, "usec": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9, "nsec": 1e-9,
}  # fmt: skip
_TIME_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-zµμ]*)")
_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})


@dataclass(frozen=True)
class SpecifierContext:
    """What specifiers expand to: the unit's name and the machine it is loaded on."""

    unit: str
    machine_id: str = ""
    hostname: str = ""


class SettingError(ValueError):
    """A value in a unit file that cannot be used; the unit does not load."""


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingError(f"not a boolean: {value!r}")


def parse_timespan(value: str) -> float | None:
    """A systemd time span in seconds (``90``, ``5s``, ``1min 30s``, ``250ms``); None for ``infinity``."""
    text = value.strip()
    if text == "infinity":
        return None
    total, pos = 0.0, 0
    if not text:
        raise SettingError("empty time span")
    while pos < len(text):
        match = _TIME_PART.match(text, pos)
        if match is None or match.group(2) not in _TIME_UNITS:
            raise SettingError(f"invalid time span: {value!r}")
        total += float(match.group(1)) * _TIME_UNITS[match.group(2)]
        pos = match.end()
        while pos < len(text) and text[pos] in _WS:
            pos += 1
    return total


def parse_timeout(value: str) -> float | None:
    """A Timeout*Sec value: like a time span, but 0 also means no timeout."""
    seconds = parse_timespan(value)
    return None if seconds == 0 else seconds


def parse_signal(value: str) -> int:
    """``SIGTERM``, ``TERM`` or ``15``."""
    text = value.strip()
    if text.isdigit() and 0 < int(text) < signal.NSIG:
        return int(text)
    name = text.upper() if text.upper().startswith("SIG") else "SIG" + text.upper()
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise SettingError(f"unknown signal: {value!r}") from None


def _unescape_at(text: str, pos: int) -> tuple[str, int]:
    """A C escape starting at the backslash ``text[pos]``: (decoded text, position after it).
    An unknown escape is kept as written."""
    if pos + 1 >= len(text):
        raise SettingError("trailing backslash")
    char = text[pos + 1]
    if char in _C_ESCAPES:
        return _C_ESCAPES[char], pos + 2
    digits = {"x": 2, "u": 4, "U": 8}.get(char)
    if digits is not None:
        hex_digits = text[pos + 2 : pos + 2 + digits]
        if len(hex_digits) == digits and all(c in "0123456789abcdefABCDEF" for c in hex_digits):
            return chr(int(hex_digits, 16)), pos + 2 + digits
        raise SettingError(f"invalid \\{char} escape")
    octal = text[pos + 1 : pos + 4]
    if len(octal) == 3 and all(c in "01234567" for c in octal):
        return chr(int(octal, 8)), pos + 4
    return "\\" + char, pos + 2


def split_words(text: str, *, relax: bool = False) -> list[str]:
    """Split a command line the way systemd does: whitespace separates words, single and double quotes
    group (also inside a word: ``a"b c"`` is ``ab c``), C escapes are decoded in and out of quotes.
    ``relax`` accepts an unbalanced quote (used when splitting a variable's value)."""
    words: list[str] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in _WS:
            pos += 1
        if pos >= end:
            return words
        parts: list[str] = []
        quote = ""
        while pos < end and (quote or text[pos] not in _WS):
            char = text[pos]
            if char == "\\":
                decoded, pos = _unescape_at(text, pos)
                parts.append(decoded)
            elif not quote and char in "'\"":
                quote, pos = char, pos + 1
            elif char == quote:
                quote, pos = "", pos + 1
            else:
                parts.append(char)
                pos += 1
        if quote and not relax:
            raise SettingError(f"unbalanced quotes in {text!r}")
        words.append("".join(parts))


def unescape_name(text: str) -> str:
    """systemd's unit name unescaping (for %P %I %f %J): ``-`` is ``/`` and ``\\xNN`` a byte."""
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text.startswith("\\x", pos) and len(text) >= pos + 4:
            try:
                out.append(chr(int(text[pos + 2 : pos + 4], 16)))
                pos += 4
                continue
            except ValueError:
                pass
        out.append("/" if text[pos] == "-" else text[pos])
        pos += 1
    return "".join(out)


def specifier_table(ctx: SpecifierContext) -> dict[str, str]:
    name = parse_unit_name(ctx.unit)
    base = ctx.unit.rpartition(".")[0]
    instance = name.instance or ""
    last = name.prefix.rpartition("-")[2]
    return {
        "n": ctx.unit, "N": base, "p": name.prefix, "P": unescape_name(name.prefix),
        "i": instance, "I": unescape_name(instance),
        "f": "/" + unescape_name(instance or name.prefix),
        "j": last, "J": unescape_name(last), "m": ctx.machine_id, "H": ctx.hostname,
        "T": "/tmp", "V": "/var/tmp", "%": "%",
    }  # fmt: skip


def expand_specifiers(text: str, table: Mapping[str, str]) -> str:
    """Replace ``%x`` specifiers; an unknown one is an error (systemd ignores the whole line)."""
    out: list[str] = []
    pos = 0
    while (found := text.find("%", pos)) >= 0:
        out.append(text[pos:found])
        key = text[found + 1 : found + 2]
        if key not in table:
            raise SettingError(f"unknown specifier %{key} in {text!r}" if key else f"trailing % in {text!r}")
        out.append(table[key])
        pos = found + 2
    out.append(text[pos:])
    return "".join(out)


_BRACED = re.compile(r"\$\$|\$\{([^}:]+)(?::([-+])([^}]*))?\}")


def expand_env_word(word: str, env: Mapping[str, str]) -> str:
    """``${VAR}`` (and ``${VAR:-default}``, ``${VAR:+alt}``) inside a word; ``$$`` is ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        value = env.get(match.group(1), "")
        if match.group(2) == "-":
            return value or match.group(3)
        if match.group(2) == "+":
            return match.group(3) if value else ""
        return value

    return _BRACED.sub(replace, word)


def expand_env_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """systemd's rule: a word that is exactly ``$VAR`` becomes the variable split into words (none if
    unset or empty); ``${VAR}`` is substituted inside a word as one piece."""
    out: list[str] = []
    for word in argv:
        if word.startswith("$") and _ENV_NAME.fullmatch(word[1:]):
            out.extend(split_words(env.get(word[1:], ""), relax=True))
        else:
            out.append(expand_env_word(word, env))
    return out


def parse_environment(value: str, table: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``Environment="A=b c" D=e`` into pairs (specifiers expanded in each word after splitting)."""
    pairs: list[tuple[str, str]] = []
    for raw in split_words(value):
        word = expand_specifiers(raw, table) if table is not None else raw
        name, sep, val = word.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise SettingError(f"invalid environment assignment: {word!r}")
        pairs.append((name, val))
    return pairs


def parse_environment_file(text: str) -> list[tuple[str, str]]:
    """An ``EnvironmentFile=``: ``KEY=value`` lines; ``#``/``;`` comments; single and double quotes
    (double quotes may span lines and honour backslash escapes); a trailing backslash joins lines;
    an optional ``export``. Lines that are not assignments are skipped, as systemd does."""
    pairs: list[tuple[str, str]] = []
    lines = iter(text.replace("\r\n", "\n").split("\n"))
    for raw in lines:
        line = raw.strip()
        while line.endswith("\\") and not line.endswith("\\\\"):
            line = line[:-1] + next(lines, "").strip()
        if not line or line[0] in "#;":
            continue
        line = line.removeprefix("export ").lstrip()
        name, sep, rest = line.partition("=")
        name = name.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            continue
        value = rest.strip()
        while value.count('"') - value.count('\\"') == 1 and value.startswith('"'):
            try:
                value += "\n" + next(lines)
            except StopIteration:
                break
        pairs.append((name, _env_value(value)))
    return pairs


def _env_value(value: str) -> str:
    out: list[str] = []
    pos, quote = 0, ""
    while pos < len(value):
        char = value[pos]
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                out.append(char)
        elif char == "\\" and pos + 1 < len(value) and (quote != '"' or value[pos + 1] in '"\\`$\n'):
            pos += 1
            if value[pos] != "\n":
                out.append(value[pos])
        elif char in "'\"" and not quote:
            quote = char
        elif char == '"' and quote == '"':
            quote = ""
        else:
            out.append(char)
        pos += 1
    return "".join(out)
