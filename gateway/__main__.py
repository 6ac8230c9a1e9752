"""`python -m gateway` is the `tillit` command."""

from gateway.cli import main

main()
