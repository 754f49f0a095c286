"""The FHE engine: one interface, backends behind it, a plaintext reference."""
