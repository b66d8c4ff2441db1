"""Importance matrices: per weight matrix, the sum of each input column's squared activations
over a text - what llama.cpp's `llama-imatrix` computes and `llama-quantize --imatrix` uses to
weigh the quantization error of each column.

* `file` - the two file formats (GGUF and the legacy .dat): read, write (knows nothing of models);
* `stats` - accumulating sums and counts from activations and from merged files;
* `collect` - running a model over a text with an observer on its projections (`run_imatrix`).

The quantize side (`llmcli.quantize`) needs only `file`; `collect` is imported on use.
"""

from .file import ImatrixEntry, ImatrixFile, read_imatrix, write_dat, write_gguf
from .stats import ImportanceStats

__all__ = ["ImatrixEntry", "ImatrixFile", "ImportanceStats", "read_imatrix", "write_dat", "write_gguf"]
