"""Byte sizes in the kernel's command-line syntax (memparse) and for humans.

The parser follows lib/cmdline.c:memparse() exactly, because the sizes it reads
come from (or go onto) the kernel command line: the number is read with base 0
(``0x`` hex, a leading ``0`` octal, otherwise decimal) and may carry one suffix
letter K, M, G, T, P or E in either case. memparse has no ``B``/``iB`` forms and
no fractions; we reject those with a message instead of silently misreading them.
"""

from __future__ import annotations

__all__ = [
    "SUFFIXES",
    "SizeError",
    "format_size",
    "human_size",
    "parse_size",
    "scan_size",
]

# memparse's suffixes, each a further factor of 1024.
SUFFIXES: dict[str, int] = {
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "T": 1 << 40,
    "P": 1 << 50,
    "E": 1 << 60,
}

# The kernel keeps sizes in an unsigned long long.
_MAX_SIZE = (1 << 64) - 1
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCT_DIGITS = frozenset("01234567")
_DEC_DIGITS = frozenset("0123456789")
# Characters that end a size inside a crashkernel= value; used only to name the
# offending token in error messages.
_DELIMITERS = frozenset(",@:- ")
_SUFFIX_HINT = "use K, M, G, T, P or E"


class SizeError(ValueError):
    """A size the kernel would not read (or would read differently)."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid size {text!r}: {reason}")
        self.text = text
        self.reason = reason


def _token(text: str, pos: int) -> str:
    """The size-looking token starting at pos, for error messages."""
    end = pos + 1 if pos < len(text) and text[pos] in "-+" else pos
    while end < len(text) and text[end] not in _DELIMITERS:
        end += 1
    return text[pos:end]


def scan_size(text: str, pos: int = 0) -> tuple[int, int]:
    """Read one memparse size at text[pos:]; return (bytes, index after it).

    Like memparse, stops at the first character that is not part of the number
    or its suffix and leaves that character to the caller. Raises SizeError
    where memparse would find no number, or where the text is a common mistake
    the kernel would misread (``256MB``, ``1.5G``, ``12Q``).
    """
    token = _token(text, pos)
    if pos >= len(text) or text[pos] in ",@:":
        raise SizeError(token, "a number is missing")
    first = text[pos]
    if first == "-":
        raise SizeError(token, "sizes cannot be negative")
    if first == "+":
        raise SizeError(token, "the kernel does not accept a sign")
    if first not in _DEC_DIGITS:
        if first == "." and pos + 1 < len(text) and text[pos + 1] in _DEC_DIGITS:
            raise SizeError(token, "fractions are not allowed (write 1536M, not 1.5G)")
        raise SizeError(token, f"expected a number, found {first!r}")

    # Base selection as in lib/kstrtox.c:_parse_integer_fixup_radix().
    hex_prefix = text[pos + 1 : pos + 2] in ("x", "X")
    if first == "0" and hex_prefix and text[pos + 2 : pos + 3] in _HEX_DIGITS:
        base, digits, start = 16, _HEX_DIGITS, pos + 2
    elif first == "0":
        base, digits, start = 8, _OCT_DIGITS, pos
    else:
        base, digits, start = 10, _DEC_DIGITS, pos
    end = start
    while end < len(text) and text[end] in digits:
        end += 1
    if base == 8 and end < len(text) and text[end] in "89":
        # memparse would stop here and the caller would choke on the digit.
        raise SizeError(
            token,
            f"a leading 0 makes the kernel read octal, and {text[end]!r} is not an octal digit",
        )
    if base == 8 and text[end : end + 1] in ("x", "X"):
        raise SizeError(token, "'0x' must be followed by hex digits")
    value = int(text[start:end], base)

    if end < len(text) and text[end] == "." and text[end + 1 : end + 2].isdigit():
        raise SizeError(token, "fractions are not allowed (write 1536M, not 1.5G)")
    if end < len(text) and text[end].isalpha():
        letter = text[end]
        factor = SUFFIXES.get(letter.upper())
        if factor is None:
            if letter in "bB":
                raise SizeError(
                    token, f"unknown suffix {letter!r} ({_SUFFIX_HINT}; a bare number is bytes)"
                )
            raise SizeError(token, f"unknown suffix {letter!r} ({_SUFFIX_HINT})")
        end += 1
        rest = text[end : end + 2]
        if rest[:1] in ("b", "B") or rest.lower() == "ib":
            unit = "iB" if rest.lower() == "ib" else rest[:1]
            raise SizeError(
                token,
                f"the kernel takes a bare one-letter suffix ({_SUFFIX_HINT}), "
                f"not {letter}{unit}: write {text[pos:end]!r}",
            )
        value *= factor
    if value > _MAX_SIZE:
        raise SizeError(token, "too large (the kernel's sizes are 64-bit)")
    return value, end


def parse_size(text: str) -> int:
    """Parse a whole string as one kernel size (``256M``, ``0x1000``, ``1g``, ``4096``)."""
    if text == "":
        raise SizeError(text, "empty")
    try:
        value, end = scan_size(text)
    except SizeError as err:
        raise SizeError(text, err.reason) from None
    if end != len(text):
        raise SizeError(text, f"unexpected {text[end:]!r} after {text[:end]!r}")
    return value


def format_size(n: int) -> str:
    """The shortest exact memparse form of n bytes: 256M, 1G, 1536M, 4097K, 123."""
    if n < 0:
        raise ValueError(f"negative size {n}")
    if n == 0:
        return "0"
    # The largest unit that divides n exactly gives the fewest digits.
    for letter, factor in reversed(SUFFIXES.items()):
        if n % factor == 0:
            return f"{n // factor}{letter}"
    return str(n)


def human_size(n: int) -> str:
    """n bytes for messages: ``256 MiB``, ``1.5 GiB``, ``123 bytes``."""
    if n < 1024:
        return "1 byte" if n == 1 else f"{n} bytes"
    letter = "K"
    for candidate, factor in SUFFIXES.items():
        if n >= factor:
            letter = candidate
    value = n / SUFFIXES[letter]
    # Two decimals at most; drop trailing zeros so exact sizes read "256 MiB".
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} {letter}iB"
