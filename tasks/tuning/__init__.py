"""Hyperparameter search for the train stage (`imgcls tune`, docs/tuning.md): the `tune:` params
(space.py), where a study is stored and how it is opened (study.py), one trial as a child MLflow run
trained by train's own code (objective.py), and the result as a params file and commands (best.py).
Not a stage: tasks/stages.py does not list it and nothing in the pipeline depends on it."""
