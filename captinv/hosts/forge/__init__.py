"""WebUI Forge (Forge 2): diffusion engines with per-encoder text engines and their own
embedding databases, models built under inference mode, a memory manager that owns devices."""
