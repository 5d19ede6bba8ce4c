"""The study layer (`--mode=compare`): its experiments and their runs (`experiments`), the report
from the metrics on disk (`report`), the three claims judged (`claims`), report.md
(`markdown`), the figures (`plots`).

May import: every layer up to `tlflax.train`; never `tlflax.use` (they are siblings).
"""
