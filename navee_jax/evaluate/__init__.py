"""Held-out evaluation: retrieval mAP and N-way K-shot episodes on embeddings."""
