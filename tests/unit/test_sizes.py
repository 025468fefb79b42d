"""kdumpd.sizes: memparse-compatible sizes and their printed forms."""

from __future__ import annotations

import pytest

from kdumpd.sizes import SizeError, format_size, human_size, parse_size, scan_size

K, M, G, T = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("123", 123),
        ("4096", 4096),
        ("4k", 4 * K),
        ("4K", 4 * K),
        ("256M", 256 * M),
        ("256m", 256 * M),
        ("1G", G),
        ("1g", G),
        ("1536M", 1536 * M),
        ("2T", 2 * T),
        ("1P", 1 << 50),
        ("1e", 1 << 60),
        ("15E", 15 << 60),
        ("0x1000", 4096),
        ("0X1000", 4096),
        ("0x10M", 16 * M),
        ("0x80000000", 2 * G),
        ("0M", 0),
        # memparse reads a leading 0 as octal: 010M is 8M to the kernel.
        ("010M", 8 * M),
        ("0100", 64),
        # Hex digits are read greedily, so the E in 0x10E is a digit, not exa.
        ("0x10E", 0x10E),
    ],
)
def test_parse_size_accepts_what_memparse_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid size '': empty"),
        ("12Q", "invalid size '12Q': unknown suffix 'Q' (use K, M, G, T, P or E)"),
        ("-5M", "invalid size '-5M': sizes cannot be negative"),
        ("+5M", "invalid size '+5M': the kernel does not accept a sign"),
        (
            "256MB",
            "invalid size '256MB': the kernel takes a bare one-letter suffix "
            "(use K, M, G, T, P or E), not MB: write '256M'",
        ),
        (
            "256MiB",
            "invalid size '256MiB': the kernel takes a bare one-letter suffix "
            "(use K, M, G, T, P or E), not MiB: write '256M'",
        ),
        (
            "4kb",
            "invalid size '4kb': the kernel takes a bare one-letter suffix "
            "(use K, M, G, T, P or E), not kb: write '4k'",
        ),
        (
            "512B",
            "invalid size '512B': unknown suffix 'B' (use K, M, G, T, P or E; "
            "a bare number is bytes)",
        ),
        ("1.5G", "invalid size '1.5G': fractions are not allowed (write 1536M, not 1.5G)"),
        ("M", "invalid size 'M': expected a number, found 'M'"),
        (" 256M", "invalid size ' 256M': expected a number, found ' '"),
        ("256M@", "invalid size '256M@': unexpected '@' after '256M'"),
        ("256M ", "invalid size '256M ': unexpected ' ' after '256M'"),
        ("12Mx", "invalid size '12Mx': unexpected 'x' after '12M'"),
        ("0x", "invalid size '0x': '0x' must be followed by hex digits"),
        (
            "08M",
            "invalid size '08M': a leading 0 makes the kernel read octal, "
            "and '8' is not an octal digit",
        ),
        ("16E", "invalid size '16E': too large (the kernel's sizes are 64-bit)"),
    ],
)
def test_parse_size_rejects_with_a_message_naming_the_value(text: str, message: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    assert info.value.text == text


def test_size_error_keeps_the_reason_apart() -> None:
    with pytest.raises(SizeError) as info:
        parse_size("12Q")
    assert info.value.reason == "unknown suffix 'Q' (use K, M, G, T, P or E)"


def test_scan_size_stops_where_memparse_stops() -> None:
    assert scan_size("256M@16M") == (256 * M, 4)
    assert scan_size("256M@16M", 5) == (16 * M, 8)
    assert scan_size("2G-4G:320M", 3) == (4 * G, 5)
    assert scan_size("512M,high") == (512 * M, 4)
    assert scan_size("0x10M,low") == (16 * M, 5)


def test_scan_size_names_the_token_not_the_whole_value() -> None:
    with pytest.raises(SizeError) as info:
        scan_size("2G-64G:256Q,64G-:512M", 7)
    assert info.value.text == "256Q"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (1, "1"),
        (123, "123"),
        (1023, "1023"),
        (4 * K, "4K"),
        (4097 * K, "4097K"),
        (256 * M, "256M"),
        (G, "1G"),
        (1536 * M, "1536M"),
        (64 * G, "64G"),
        (T, "1T"),
        (3 << 60, "3E"),
        (G + 1, str(G + 1)),
    ],
)
def test_format_size_is_the_shortest_exact_form(n: int, text: str) -> None:
    assert format_size(n) == text
    assert parse_size(text) == n


def test_format_size_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative size -1"):
        format_size(-1)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (123, "123 bytes"),
        (1023, "1023 bytes"),
        (K, "1 KiB"),
        (1536, "1.5 KiB"),
        (256 * M, "256 MiB"),
        (G, "1 GiB"),
        (1536 * M, "1.5 GiB"),
        (1280 * M, "1.25 GiB"),
        (4097 * K, "4 MiB"),
        (64 * G, "64 GiB"),
        (2 * T, "2 TiB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text
