"""Content-based retrieval: Siamese embeddings, order-sensitive deep hashing, the case database."""
