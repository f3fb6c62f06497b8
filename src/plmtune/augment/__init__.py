"""Data augmentation: WordNet access and EDA operations."""
