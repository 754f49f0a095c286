"""The local stack: real servers started as processes on loopback (DESIGN.md section 8)."""
