"""The recurrent text classifier (embedding -> encoder -> masked pooling -> head) and its builder."""

from rnnlab.models.classifier import RNNClassifier, bigram_ids, build_model, count_parameters, drop_words, masked_pool

__all__ = ["RNNClassifier", "bigram_ids", "build_model", "count_parameters", "drop_words", "masked_pool"]
