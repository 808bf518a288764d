"""OpenAI Batch API files: `prepare` writes the request files, `collect` reads the results."""

from service.batch.openai_files.request_files import BATCH_DISCOUNT, Prepared, batch_dir, prepare
from service.batch.openai_files.result_files import collect, read_answers

__all__ = ["BATCH_DISCOUNT", "Prepared", "batch_dir", "collect", "prepare", "read_answers"]
