"""Data errors and the counters of everything skipped, split or truncated (logged at the end of a run)."""

import logging
from collections import Counter

from ..errors import UsageError

logger = logging.getLogger(__name__)


class DataError(UsageError):
    """Bad input data: the message is one line naming the file, line, column or flag."""


class DataStats(Counter):
    """Counts of skipped records, split documents, truncated examples ...; `log()` reports them."""

    def log(self, prefix: str = "data") -> None:
        if self:
            logger.info("%s: %s", prefix, ", ".join(f"{k}={v}" for k, v in sorted(self.items())))
        else:
            logger.info("%s: nothing skipped, split or truncated", prefix)
