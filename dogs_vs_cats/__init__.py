"""The shared code of both studies: no module here imports stages/ or tools/."""
