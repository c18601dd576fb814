"""Dataset adapters: read a dataset's label file into VideoRecords (see adapters.load_dataset)."""

from .adapters import DATASETS, LabelTable, load_dataset, read_labels
from .records import Dataset, VideoRecord, safe_key

__all__ = ["DATASETS", "Dataset", "LabelTable", "VideoRecord", "load_dataset", "read_labels", "safe_key"]
