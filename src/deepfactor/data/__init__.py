"""deepfactor data layer: readers, the ratings container, named datasets, splits."""
