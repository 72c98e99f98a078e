"""The demo: the edge story on one machine (docs/demo.md)."""
