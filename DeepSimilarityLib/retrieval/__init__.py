"""Content-based retrieval: Siamese embeddings, order-sensitive deep hashing, the case database.

Case database modules: ``encoder`` (the Encoder contract), ``encoders`` (loading an
encoder from a model file; the thumbnail baseline), ``hamming_index`` (faiss
indices and the numpy reference), ``case_store`` (what every backend shares),
``case_database`` (SQLite), ``milvus_backend`` (Milvus), ``databases`` (backend by
URI: ``open_database``, ``create_database``), ``images`` (files and folders to
encoder batches), ``portable`` (export/import).
"""
