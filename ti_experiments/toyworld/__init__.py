"""A small world that the project's own models learned, so textual inversion can be shown offline."""
