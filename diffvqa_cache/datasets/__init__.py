"""Dataset adapters: read a dataset's label file into VideoRecords (see adapters.load_dataset)."""

from diffvqa_cache.datasets.adapters import DATASETS, LabelTable, load_dataset, read_labels
from diffvqa_cache.datasets.records import Dataset, VideoRecord, safe_key

__all__ = ["DATASETS", "Dataset", "LabelTable", "VideoRecord", "load_dataset", "read_labels", "safe_key"]
