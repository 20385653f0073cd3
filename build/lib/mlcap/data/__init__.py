"""Data: the COMP5329 reader, the demo generator, caption preprocessing, word vectors, the feature cache."""
