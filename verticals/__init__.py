"""Vertical packages. Importing this package registers every vertical in ``core.vertical.VERTICALS``."""
import importlib

#: One entry per vertical package; a vertical whose optional dependencies are missing is skipped.
VERTICAL_PACKAGES = ["digits", "sine", "fraud", "maintenance", "medical_imaging", "robotics"]


def load_all() -> None:
    for name in VERTICAL_PACKAGES:
        try:
            importlib.import_module(f"verticals.{name}")
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith(f"verticals.{name}"):
                continue  # package not written yet
            raise
