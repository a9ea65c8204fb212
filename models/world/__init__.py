"""The procedurally generated nuScenes-format world (see ``generate.py`` for the on-disk layout)."""
