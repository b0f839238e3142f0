"""The input pipeline: sources (documents), tokenizers (SentencePiece, Hugging Face), the held-out split, packing
into rows, sentence pairs, prepared ArrayRecord shards (reader and writer), and pipeline.build_data, which turns
DataSettings into resumable grain batches sliced per process."""
