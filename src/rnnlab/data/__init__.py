"""rnnlab.data: IMDB and your own labelled texts -> tokens -> ids -> padded, length-aware batches.

    from rnnlab.data import load_imdb, encode_dataset, make_loader
    data = encode_dataset(load_imdb())            # 25,000 / 25,000 reviews, 20,001 ids
    for ids, lengths, labels in make_loader(data.train, 64, shuffle=True, bucket=True):
        ...                                       # ids (N, L_batch), lengths (N,), labels (N,)

See docs/ARCHITECTURE.md (section rnnlab.data) for the contract.
"""

from rnnlab.data._cache import default_cache_dir
from rnnlab.data.datasets import FileTextDataset, TextDataset, TextSplit, iter_texts, load_text_dataset
from rnnlab.data.encoded import EncodedData, EncodedSplit, collate, encode_texts, ids_dtype
from rnnlab.data.encoding import encode_dataset, encode_files
from rnnlab.data.imdb import IMDB_SHA256, IMDB_URL, download_imdb, load_imdb
from rnnlab.data.loader import BatchLoader, make_loader
from rnnlab.data.sources import load_dataset
from rnnlab.data.tokenizer import Tokenizer
from rnnlab.data.vocab import Vocabulary
from rnnlab.errors import DataError

__all__ = [
    "BatchLoader",
    "DataError",
    "EncodedData",
    "EncodedSplit",
    "FileTextDataset",
    "IMDB_SHA256",
    "IMDB_URL",
    "TextDataset",
    "TextSplit",
    "Tokenizer",
    "Vocabulary",
    "collate",
    "default_cache_dir",
    "download_imdb",
    "encode_dataset",
    "encode_files",
    "encode_texts",
    "ids_dtype",
    "iter_texts",
    "load_dataset",
    "load_imdb",
    "load_text_dataset",
    "make_loader",
]
