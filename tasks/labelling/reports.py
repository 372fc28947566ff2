"""Where `imgcls review group` writes (under paths.reports/review/) and what its tables hold. Kept apart
from the science so that tasks.common.review_queue can read the tables without importing scikit-learn."""

from __future__ import annotations

UNLABELLED_DIR = "unlabelled"  # under reports/review/
GROUPS_CSV = "groups.csv"
GROUPS_HTML = "groups.html"
NEXT_CSV = "next_to_label.csv"
# groups.csv: one row per file found; `error` is set (and group empty) for a file that does not decode
GROUP_COLUMNS = ["path", "sha256", "group", "proposed_label", "confidence", "error"]
# next_to_label.csv: the N picked, most ambiguous first
NEXT_COLUMNS = ["rank", "path", "sha256", "margin", "predicted", "runner_up"]
