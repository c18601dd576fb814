"""Dataset adapters: read a dataset's label file into VideoRecords (see adapters.load_dataset)."""

from .adapters import DATASETS, load_dataset
from .records import Dataset, VideoRecord, safe_key

__all__ = ["DATASETS", "Dataset", "VideoRecord", "load_dataset", "safe_key"]
