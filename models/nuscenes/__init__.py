"""nuScenes GT cache: validation, map GT, the cache builder and its dataset.

Import the submodules directly (``models.nuscenes.cache``, ``.dataset``, ``.validate``); this package file
stays import-light so that ``from models.nuscenes.dataset import GTCacheDataset`` does not load the devkit.
"""
