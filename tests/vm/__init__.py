"""QEMU guest test harness for kdumpd."""
