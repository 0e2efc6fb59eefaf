# Copyright (c) CaGNet-D2 contributors.
"""``cagnet://`` paths: files shipped inside the package (e.g. the built-in pretrained trunk),
usable wherever detectron2 takes a path (``MODEL.WEIGHTS cagnet://pretrained/...``), whatever
the working directory or how the package was installed."""
import os

from iopath.common.file_io import PathHandler

from detectron2.utils.file_io import PathManager

__all__ = ["PACKAGE_DATA_DIR", "CaGNetPathHandler", "resolve_package_path"]

PACKAGE_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def resolve_package_path(path: str) -> str:
    """``cagnet://pretrained/x.pkl`` -> ``<package>/data/pretrained/x.pkl``; other paths unchanged."""
    if not path.startswith(CaGNetPathHandler.PREFIX):
        return path
    return os.path.join(PACKAGE_DATA_DIR, path[len(CaGNetPathHandler.PREFIX):])


class CaGNetPathHandler(PathHandler):
    PREFIX = "cagnet://"

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        local = resolve_package_path(path)
        if not os.path.exists(local):
            raise FileNotFoundError(f"{path}: no such file in the cagnet package ({local})")
        return local

    def _open(self, path, mode="r", **kwargs):
        return PathManager.open(self._get_local_path(path), mode, **kwargs)

    def _isfile(self, path, **kwargs):
        return os.path.isfile(resolve_package_path(path))

    def _exists(self, path, **kwargs):
        return os.path.exists(resolve_package_path(path))


if CaGNetPathHandler.PREFIX not in PathManager._path_handlers:
    PathManager.register_handler(CaGNetPathHandler())
