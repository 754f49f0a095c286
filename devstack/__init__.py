"""The local stack: real servers started as processes on loopback (docs/design.md section 8)."""
