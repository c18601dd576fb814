"""Dataset adapters: read a dataset's label file into VideoRecords (see adapters.load_dataset)."""

from .adapters import DATASETS, load_dataset
from .records import DatasetIndex, VideoRecord, safe_key

__all__ = ["DATASETS", "DatasetIndex", "VideoRecord", "load_dataset", "safe_key"]
