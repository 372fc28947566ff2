"""Labelling unlabelled images (`imgcls review group`, docs/review.md): pure logic, no Prefect.

- embed:       images -> feature vectors (the model's penultimate layer, else HOG + PCA), bad files as rows
- grouping:    k-means with k chosen by a silhouette sweep, and a proposed label per group
- uncertainty: the images whose label would teach the classifier most (smallest top-2 margin)
- reports:     the file names under reports/review/unlabelled/ (read by tasks.common.review_queue)

Nothing heavy is imported here: the review queue imports `reports` without pulling in scikit-learn."""
