"""Running a model over data and scoring it: predict (datasets, image files), per-task-type scores, metrics
(accuracy, mIoU), dense prediction and mask outputs. Below train: the Trainer validates with these; nothing here
imports a method class, the Trainer or an experiment (evaluate_run.py, beside experiment.py, does)."""
