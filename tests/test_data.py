"""lipsim_metric.train.data is kept for compatibility: every old name is re-exported from its concern's module.

The behaviour tests moved with the code: tests/test_photos.py, test_shards.py, test_human_2afc.py, test_triplets.py
and test_valsets.py.
"""

from __future__ import annotations

import importlib

from lipsim_metric.train import data

HOMES = {
    "photos": ["PathLike", "list_images", "PhotoCropDataset"],
    "shards": ["PackResult", "pack_images", "ShardDataset"],
    "human_2afc": ["Triplet", "TripletFileDataset", "NightDataset", "BAPPS2AFCDataset", "TripletCSVDataset"],
    "triplets": ["DistanceFn", "TripletSpec", "make_distortion_triplets", "render_triplet", "DistortionTripletDataset",
                 "TeacherVotes", "label_triplets"],
    "valsets": ["build_val_triplets", "TripletSetDataset", "load_triplet_set"],
}


def test_data_reexports_the_same_objects() -> None:
    moved = [name for names in HOMES.values() for name in names]
    assert sorted(data.__all__) == sorted(set(moved) - {"DistanceFn"})  # the old __all__, unchanged
    for module_name, names in HOMES.items():
        module = importlib.import_module(f"lipsim_metric.train.{module_name}")
        for name in names:
            assert getattr(data, name) is getattr(module, name), f"{name} differs from train.{module_name}.{name}"
