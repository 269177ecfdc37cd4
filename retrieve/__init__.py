"""The retrieval stage: exact metrics under each protocol, FAISS indexes, re-ranking, reports and submissions."""
